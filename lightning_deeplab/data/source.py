"""What every dataset kind provides to the DataModule: class names, a palette, and its splits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
from torch.utils.data import Dataset

from ..constants import IGNORE_INDEX

#: A joint image/mask transform with the albumentations call convention:
#: ``transform(image=float32 HxWx3, mask=uint8 HxW) -> {"image": ..., "mask": ...}``.
JointTransform = Callable[..., Mapping[str, np.ndarray]]


class SegmentationSource(ABC):
    """One dataset on disk, given to the DataModule as its ``source`` (in YAML a ``class_path`` /
    ``init_args`` section). Constructing it must be cheap (no generation, no scan of the files):
    the DataModule builds one in every process, and reads the class names before any data is
    touched. A dataset with fixed classes sets ``class_names`` and ``palette`` as class attributes.
    A subclass with options of its own besides ``root`` adds them to :attr:`init_args`.
    """

    ignore_index: int = IGNORE_INDEX
    #: True for a dataset that ``prepare`` writes (generates): it cannot be checked before then.
    generates_data: bool = False

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root).expanduser()

    @property
    def init_args(self) -> dict[str, Any]:
        """The constructor's arguments, as plain values."""
        return {"root": str(self.root)}

    def config(self) -> dict[str, Any]:
        """``class_path`` / ``init_args`` that rebuild this source (what LightningCLI saves for a
        source it built from the YAML), as plain values: a checkpoint then holds no pickled class."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.init_args}

    @property
    @abstractmethod
    def class_names(self) -> tuple[str, ...]:
        """Names of the classes, indexed by label value."""

    @property
    @abstractmethod
    def palette(self) -> np.ndarray:
        """``[256, 3]`` uint8 RGB colours, indexed by label value (255 included)."""

    @property
    def num_classes(self) -> int:
        """Number of classes (label values ``0 .. num_classes - 1``; ``ignore_index`` aside)."""
        return len(self.class_names)

    def prepare(self) -> None:
        """Create or convert the data on disk if the dataset needs it (runs once per node)."""

    @abstractmethod
    def dataset(self, split: str, transform: Optional[JointTransform] = None) -> Dataset:
        """The samples of ``split``: dicts with ``image`` float32 [3, H, W] RGB 0-255,
        ``mask`` int64 [H, W] and ``name`` (the image id)."""
