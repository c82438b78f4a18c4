"""Dataset names -> the classes that read them. Adding a dataset: a module with a
:class:`SegmentationSource` subclass, plus one entry here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

from .cityscapes import CityscapesSource
from .cocostuff import CocoStuff10kSource, CocoStuff164kSource
from .folder import FolderSource
from .source import SegmentationSource
from .synthetic import SyntheticSource
from .voc import VOCSource


@dataclass(frozen=True)
class DatasetEntry:
    """How to open one dataset kind.

    Attributes:
        source: called as ``source(root, **options)``.
        options: DataModule argument name -> keyword of ``source`` it is passed as (the
            dataset-specific arguments; the others' are ignored for this dataset).
    """

    source: Callable[..., SegmentationSource]
    options: Mapping[str, str] = field(default_factory=dict)


DATASETS: dict[str, DatasetEntry] = {
    "voc": DatasetEntry(VOCSource),
    "cityscapes": DatasetEntry(CityscapesSource),
    "cocostuff164k": DatasetEntry(CocoStuff164kSource),
    "cocostuff10k": DatasetEntry(CocoStuff10kSource),
    "folder": DatasetEntry(FolderSource),
    "synthetic": DatasetEntry(
        SyntheticSource,
        options={
            "synthetic_num_train": "num_train",
            "synthetic_num_val": "num_val",
            "synthetic_image_size": "image_size",
            "synthetic_seed": "seed",
        },
    ),
}


def open_source(name: str, root: Union[str, Path], arguments: Mapping[str, Any]) -> SegmentationSource:
    """Open dataset ``name`` at ``root``, passing it the entries of ``arguments`` it takes."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    entry = DATASETS[name]
    kwargs = {keyword: arguments[arg] for arg, keyword in entry.options.items() if arg in arguments}
    return entry.source(root, **kwargs)
