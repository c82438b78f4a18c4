"""COCO-Stuff: 80 thing and 91 stuff classes (171 used of the 182 COCO-Stuff ids).

COCO-Stuff 164k (``dataset: cocostuff164k``)::

    <root>/
        images/{train2017,val2017}/<id>.jpg
        annotations/{train2017,val2017}/<id>.png   grayscale: COCO-Stuff id - 1 (0-181), 255 unlabeled

COCO-Stuff 10k v1.1 (``dataset: cocostuff10k``; reading it needs scipy)::

    <root>/
        images/<name>.jpg
        annotations/<name>.mat                     field ``S``: COCO-Stuff id (1-182), 0 unlabeled
        imageLists/{train,test,all}.txt            one <name> per line

The 182 ids include 11 thing ids that COCO never annotated (e.g. 12 "street sign"); the 171
used ids map to class indices 0-170 in id order, the unused ids and "unlabeled" to 255.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..constants import IGNORE_INDEX
from .files import LabelledImage, LabelledImageDataset, check_label, load_mat, read_rgb_image
from .listing import (
    missing_files,
    raise_if_missing,
    read_list_lines,
    require_dir,
    require_list_file,
    require_samples,
    require_split_dir,
)
from .palette import VOC_PALETTE
from .remap import LabelRemap, as_integer_labels
from .source import JointTransform, SegmentationSource

#: Names of the 182 COCO-Stuff ids, id 1 first: 91 thing ids (1-91), then 91 stuff ids (92-182).
COCO_STUFF_ID_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "hat", "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror",
    "dining table", "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "blender",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud",
    "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # a table, kept dense  # fmt: skip

#: Thing ids defined by COCO but never annotated: no pixel carries them.
COCO_STUFF_UNUSED_IDS: frozenset[int] = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91})


#: COCO-Stuff id (1-182) -> class index (0-170), or 255 for the unused ids.
def _id_to_class() -> dict[int, int]:
    used = [i for i in range(1, len(COCO_STUFF_ID_NAMES) + 1) if i not in COCO_STUFF_UNUSED_IDS]
    return {**{i: IGNORE_INDEX for i in COCO_STUFF_UNUSED_IDS}, **{i: index for index, i in enumerate(used)}}


COCO_STUFF_ID_TO_CLASS: dict[int, int] = dict(sorted(_id_to_class().items()))

#: The 171 classes, indexed by class index.
COCO_STUFF_CLASSES: tuple[str, ...] = tuple(
    COCO_STUFF_ID_NAMES[i - 1] for i, index in COCO_STUFF_ID_TO_CLASS.items() if index != IGNORE_INDEX
)

#: COCO-Stuff has no official colours: the VOC colour map (distinct colours, 255 cream).
COCO_STUFF_PALETTE: np.ndarray = VOC_PALETTE

# 164k PNGs store id - 1 (0-181) and 255 for unlabeled; 10k .mat files store the id, 0 unlabeled.
_PNG_REMAP = LabelRemap(
    {**{i - 1: c for i, c in COCO_STUFF_ID_TO_CLASS.items()}, IGNORE_INDEX: IGNORE_INDEX},
    "COCO-Stuff 164k label values (id - 1: 0-181, or 255 for unlabeled)",
)
_MAT_REMAP = LabelRemap(
    {**COCO_STUFF_ID_TO_CLASS, 0: IGNORE_INDEX},
    "COCO-Stuff 10k label ids (1-182, or 0 for unlabeled)",
)

#: Short split names accepted for the 164k folders.
SPLIT_ALIASES_164K = {"train": "train2017", "val": "val2017"}


def _require_root(root: Union[str, Path], name: str) -> Path:
    root = Path(root).expanduser()
    require_dir(root, f"{name} data root")
    for sub in ("images", "annotations"):
        require_dir(root / sub, f"{name} folder")
    return root


class CocoStuff164k(LabelledImageDataset):
    """One split of COCO-Stuff 164k (``train2017`` or ``val2017``; ``train``/``val`` also
    accepted), labelled with the 171 class indices.

    Args:
        root: the folder holding ``images/`` and ``annotations/``.
        split: names the sub-folder of both.
        transform: joint image/mask transform (albumentations convention), or None.
    """

    def __init__(self, root: Union[str, Path], split: str, transform: Optional[JointTransform] = None) -> None:
        self.root = _require_root(root, "COCO-Stuff 164k")
        self.split = SPLIT_ALIASES_164K.get(split, split)
        image_dir = require_split_dir(self.root / "images", self.split, "COCO-Stuff image")
        label_dir = require_split_dir(self.root / "annotations", self.split, "COCO-Stuff annotation")
        images = sorted(image_dir.glob("*.jpg"))
        require_samples(images, f"no .jpg images in {image_dir}")
        # one listing of the folder instead of a file check per image (118k images in train2017)
        labels = {p.name for p in label_dir.iterdir()}
        samples, missing = [], []
        for image in images:
            label = label_dir / f"{image.stem}.png"
            if label.name not in labels:
                missing.append(f"annotation of image {image}: {label} does not exist")
            samples.append(LabelledImage(image.stem, image, label))
        raise_if_missing(missing, samples)
        super().__init__(samples, len(COCO_STUFF_CLASSES), transform)

    def convert_label(self, label: np.ndarray, sample: LabelledImage) -> np.ndarray:
        """Stored values (id - 1) -> class indices."""
        return _PNG_REMAP(label, sample.label)


def read_mat_label(path: Path, field: str = "S") -> np.ndarray:
    """The integer label array stored as ``field`` in the MATLAB file ``path``."""
    content = load_mat(path, "annotation")
    if field not in content:
        fields = sorted(k for k in content if not k.startswith("__"))
        raise ValueError(f"annotation {path} has no field {field!r}; fields: {fields}")
    label = np.asarray(content[field])
    if label.ndim != 2:
        raise ValueError(f"annotation {path}: field {field!r} has shape {label.shape}; expected HxW")
    return as_integer_labels(label, path)


class CocoStuff10k(LabelledImageDataset):
    """One split of COCO-Stuff 10k v1.1 (``train``, ``test`` or ``all``), labelled with the
    171 class indices.

    Args:
        root: the folder holding ``images/``, ``annotations/`` and ``imageLists/``.
        split: names ``imageLists/<split>.txt``.
        transform: joint image/mask transform (albumentations convention), or None.
    """

    def __init__(self, root: Union[str, Path], split: str, transform: Optional[JointTransform] = None) -> None:
        self.root = _require_root(root, "COCO-Stuff 10k")
        self.split = split
        self.split_file = self.root / "imageLists" / f"{split}.txt"
        require_list_file(self.split_file)
        samples, checks = [], []
        for lineno, fields in read_list_lines(self.split_file):
            if len(fields) != 1:
                raise ValueError(f"{self.split_file}:{lineno}: expected one image name, got {' '.join(fields)!r}")
            name = Path(fields[0]).stem  # tolerate names written with their .jpg extension
            sample = LabelledImage(
                name,
                self.root / "images" / f"{name}.jpg",
                self.root / "annotations" / f"{name}.mat",
                f"{self.split_file}:{lineno}",
            )
            checks += [
                (f"{self.split_file}:{lineno}: image", sample.image),
                (f"{self.split_file}:{lineno}: annotation", sample.label),
            ]
            samples.append(sample)
        raise_if_missing(missing_files(checks), samples)
        require_samples(samples, f"split list {self.split_file} lists no images")
        super().__init__(samples, len(COCO_STUFF_CLASSES), transform)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image and its class-index label (from the ``S`` field of the .mat file)."""
        sample = self.samples[index]
        image = read_rgb_image(sample.image)
        label = _MAT_REMAP(read_mat_label(sample.label), sample.label)
        check_label(label, image.shape, self.num_classes, sample.label)
        return image, label


class _CocoStuffSource(SegmentationSource):
    reader: type

    class_names = COCO_STUFF_CLASSES
    palette = COCO_STUFF_PALETTE

    def prepare(self) -> None:
        _require_root(self.root, "COCO-Stuff")

    def dataset(self, split: str, transform: Optional[JointTransform] = None) -> LabelledImageDataset:
        return self.reader(self.root, split, transform)


class CocoStuff164kSource(_CocoStuffSource):
    """COCO-Stuff 164k (171 classes) under ``root``."""

    reader = CocoStuff164k


class CocoStuff10kSource(_CocoStuffSource):
    """COCO-Stuff 10k v1.1 (171 classes) under ``root``."""

    reader = CocoStuff10k


__all__ = (
    "COCO_STUFF_CLASSES",
    "COCO_STUFF_ID_NAMES",
    "COCO_STUFF_ID_TO_CLASS",
    "COCO_STUFF_PALETTE",
    "COCO_STUFF_UNUSED_IDS",
    "CocoStuff10k",
    "CocoStuff10kSource",
    "CocoStuff164k",
    "CocoStuff164kSource",
    "read_mat_label",
)
