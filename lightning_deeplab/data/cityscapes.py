"""Cityscapes (fine annotations, 19 evaluation classes), read from the official layout.

    <root>/
        leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
                                       <city>_<seq>_<frame>_gtFine_labelTrainIds.png  (optional)

``*_gtFine_labelIds.png`` hold the raw label ids 0-33, mapped here to the 19 train ids (every
other id -> 255) with the table of the official ``labels.py``. When the ``*_labelTrainIds.png``
made by the official ``createTrainIdLabelImgs.py`` are present they are used as they are
(values 0-18 and 255). The ``test`` split's labels are not public (the released test PNGs are
placeholders): its samples carry masks of 255 only, so it serves prediction, never evaluation.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..constants import IGNORE_INDEX
from .colours import build_palette
from .files import LabelledImage, LabelledImageDataset, read_rgb_image
from .listing import raise_if_missing, require_samples, require_split_dir
from .remap import LabelRemap
from .source import JointTransform, SegmentationSource

#: The 19 evaluation classes, indexed by train id.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # a table, kept dense  # fmt: skip

#: The official colours of the 19 classes (RGB), indexed by train id.
CITYSCAPES_COLOURS: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # a table, kept dense  # fmt: skip

#: Train-id colours; 255 (ignored) is black, the colour of "unlabeled" in the official table.
CITYSCAPES_PALETTE: np.ndarray = build_palette(CITYSCAPES_COLOURS, ignore_colour=(0, 0, 0))

#: Raw label id (0-33) -> train id, from the official table; ids not evaluated map to 255.
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    **{label_id: IGNORE_INDEX for label_id in range(34)},
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # a table, kept dense  # fmt: skip

IMAGE_DIR, LABEL_DIR = "leftImg8bit", "gtFine"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX = "_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"
#: The split whose labels are withheld by the benchmark.
UNLABELLED_SPLIT = "test"

# The license plate's id is -1, which an 8-bit PNG can only hold as 255: accepted, ignored.
_ID_REMAP = LabelRemap({**CITYSCAPES_ID_TO_TRAIN_ID, IGNORE_INDEX: IGNORE_INDEX}, "Cityscapes label ids 0-33")


def resolve_cityscapes_root(root: Union[str, Path]) -> Path:
    """The folder holding ``leftImg8bit/`` (``root`` itself or ``root/cityscapes``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Cityscapes data root {root} does not exist (or is not a folder)")
    for candidate in (root, root / "cityscapes"):
        if (candidate / IMAGE_DIR).is_dir():
            return candidate
    raise FileNotFoundError(f"no Cityscapes tree under {root}: expected {root / IMAGE_DIR}/ and {root / LABEL_DIR}/")


def find_cityscapes_samples(root: Path, split: str, labelled: bool = True) -> list[LabelledImage]:
    """The images of ``split`` (sorted by city, then name) with their labels: the train-id PNG
    when present, else the label-id PNG. Missing labels are reported by name; an empty split
    raises ValueError."""
    image_dir = require_split_dir(root / IMAGE_DIR, split, "Cityscapes image")
    images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    require_samples(images, f"no *{IMAGE_SUFFIX} images in the city folders of {image_dir}")
    if labelled:
        require_split_dir(root / LABEL_DIR, split, "Cityscapes label")
    samples, missing = [], []
    for image in images:
        stem = image.name[: -len(IMAGE_SUFFIX)]
        label_dir = root / LABEL_DIR / split / image.parent.name
        label = label_dir / f"{stem}{TRAIN_IDS_SUFFIX}"
        if not label.is_file():
            label = label_dir / f"{stem}{LABEL_IDS_SUFFIX}"
            if labelled and not label.is_file():
                missing.append(
                    f"label of image {image}: neither {label.name} nor {stem}{TRAIN_IDS_SUFFIX} exists in {label_dir}"
                )
        samples.append(LabelledImage(stem, image, label))
    raise_if_missing(missing, samples)
    return samples


class CityscapesSegmentation(LabelledImageDataset):
    """One split of a Cityscapes tree, labelled with the 19 train ids (255 elsewhere).

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/`` (or its parent when the
            folder is called ``cityscapes``).
        split: ``train``, ``val`` or ``test`` (test: masks of 255 only, see the module notes).
        transform: joint image/mask transform (albumentations convention), or None.
    """

    def __init__(self, root: Union[str, Path], split: str, transform: Optional[JointTransform] = None) -> None:
        self.root = resolve_cityscapes_root(root)
        self.split = split
        self.labelled = split != UNLABELLED_SPLIT
        if not self.labelled:
            warnings.warn(
                "Cityscapes 'test' labels are not public: its samples carry masks of 255 only; "
                "use the split for prediction, not for evaluation (or predict its images with "
                f"--data.predict_path {self.root / IMAGE_DIR / split})",
                UserWarning,
                stacklevel=2,
            )
        samples = find_cityscapes_samples(self.root, split, self.labelled)
        super().__init__(samples, len(CITYSCAPES_CLASSES), transform)

    def convert_label(self, label: np.ndarray, sample: LabelledImage) -> np.ndarray:
        """Raw label ids -> train ids; train-id files are returned as they are."""
        if sample.label.name.endswith(TRAIN_IDS_SUFFIX):
            return label
        return _ID_REMAP(label, sample.label)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image and its train-id label (all 255 for the unlabelled test split)."""
        if self.labelled:
            return super().read(index)
        image = read_rgb_image(self.samples[index].image)
        return image, np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)


class CityscapesSource(SegmentationSource):
    """Cityscapes (19 classes) under ``root``."""

    class_names = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def prepare(self) -> None:
        resolve_cityscapes_root(self.root)

    def dataset(self, split: str, transform: Optional[JointTransform] = None) -> CityscapesSegmentation:
        return CityscapesSegmentation(self.root, split, transform)


__all__ = (
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_COLOURS",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "CITYSCAPES_PALETTE",
    "CityscapesSegmentation",
    "CityscapesSource",
    "find_cityscapes_samples",
    "resolve_cityscapes_root",
)
