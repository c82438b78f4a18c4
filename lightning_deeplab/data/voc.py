"""PASCAL VOC 2012 segmentation (with the SBD "train_aug" labels), read from the official layout.

VOCdevkit/VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png      palette PNGs: pixel values are class indices, 255 on borders
    SegmentationClassAug/<id>.png   grayscale class indices (SBD-derived), used by train_aug
    ImageSets/Segmentation/<split>.txt
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


from .files import LabelledImage, LabelledImageDataset
from .listing import missing_files, raise_if_missing, read_list_lines, require_list_file, require_samples
from .palette import VOC_PALETTE
from .source import JointTransform, SegmentationSource

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # a table, kept dense  # fmt: skip

SPLIT_DIR = Path("ImageSets") / "Segmentation"
IMAGE_DIR = "JPEGImages"
#: The SBD-augmented split reads the grayscale Aug labels; every other split the official PNGs.
AUG_SPLIT, AUG_LABEL_DIR, LABEL_DIR = "train_aug", "SegmentationClassAug", "SegmentationClass"


def resolve_voc_root(root: Union[str, Path]) -> Path:
    """Find the ``VOC2012`` folder from ``root``: the folder holding ``VOCdevkit/``,
    ``VOCdevkit`` itself, or ``VOCdevkit/VOC2012`` itself."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"VOC data root {root} does not exist (or is not a folder)")
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / SPLIT_DIR).is_dir() or (candidate / IMAGE_DIR).is_dir():
            return candidate
    raise FileNotFoundError(
        f"no VOC 2012 tree under {root}: expected {root / 'VOCdevkit' / 'VOC2012'} (or {root} "
        f"itself) to hold {IMAGE_DIR}/ and {SPLIT_DIR}/"
    )


def read_split_list(split_file: Path, voc_root: Path, label_dir: str) -> list[LabelledImage]:
    """Parse a split list: one id per line, or "/JPEGImages/<id>.jpg /<LabelDir>/<id>.png" pairs
    (paths relative to ``voc_root``). Every listed file must exist; the first missing ones are
    reported with their line numbers."""
    require_list_file(split_file)
    samples, checks = [], []
    for lineno, fields in read_list_lines(split_file):
        if len(fields) == 1:
            name = fields[0]
            image = voc_root / IMAGE_DIR / f"{name}.jpg"
            label = voc_root / label_dir / f"{name}.png"
        elif len(fields) == 2:
            image, label = (voc_root / f.lstrip("/") for f in fields)
            name = image.stem
        else:
            raise ValueError(
                f"{split_file}:{lineno}: expected an image id or an 'image label' path pair, got {' '.join(fields)!r}"
            )
        where = f"{split_file}:{lineno}"
        checks += [(f"{where}: image", image), (f"{where}: label", label)]
        samples.append(LabelledImage(name, image, label, where))
    raise_if_missing(missing_files(checks), samples)
    require_samples(samples, f"split list {split_file} lists no samples")
    return samples


class VOCSegmentation(LabelledImageDataset):
    """One split of a VOC-layout tree.

    Args:
        root: the folder holding ``VOCdevkit/``, or ``VOCdevkit/VOC2012`` itself.
        split: names ``ImageSets/Segmentation/<split>.txt``.
        num_classes: label values must lie in ``[0, num_classes)`` or be 255.
        transform: joint image/mask transform (albumentations convention), or None.
        label_dir: folder of the labels; by default ``SegmentationClassAug`` for ``train_aug``
            and ``SegmentationClass`` otherwise. Pair-format lines name their labels themselves.
    """

    def __init__(
        self,
        root: Union[str, Path],
        split: str,
        num_classes: int = len(VOC_CLASSES),
        transform: Optional[JointTransform] = None,
        label_dir: Optional[str] = None,
    ) -> None:
        self.voc_root = resolve_voc_root(root)
        self.split = split
        self.split_file = self.voc_root / SPLIT_DIR / f"{split}.txt"
        if label_dir is None:
            label_dir = AUG_LABEL_DIR if split == AUG_SPLIT else LABEL_DIR
        samples = read_split_list(self.split_file, self.voc_root, label_dir)
        super().__init__(samples, num_classes, transform)


class VOCSource(SegmentationSource):
    """PASCAL VOC 2012 (21 classes) under ``root``."""

    class_names = VOC_CLASSES
    palette = VOC_PALETTE

    def prepare(self) -> None:
        resolve_voc_root(self.root)  # fail early, before any worker starts, on a wrong root

    def dataset(self, split: str, transform: Optional[JointTransform] = None) -> VOCSegmentation:
        return VOCSegmentation(self.root, split, self.num_classes, transform)


__all__ = (
    "VOC_CLASSES",
    "VOCSegmentation",
    "VOCSource",
    "read_split_list",
    "resolve_voc_root",
)
