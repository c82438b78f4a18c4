"""Your own data (``dataset: folder``): images, index masks and a class list in plain folders.

    <root>/
        classes.txt                  one class per line, in label-value order (line 1 = value 0):
                                         background
                                         road 128 64 128        optional colour: R G B at the end
                                     blank lines and lines starting with "#" are skipped
        images/<split>/<name>.jpg    (or any of files.IMAGE_EXTENSIONS: .png .bmp .tif ...)
        masks/<split>/<name>.png     index PNGs, palette ("P") or grayscale ("L"): pixel value =
                                     class index (0 .. number of classes - 1), 255 = ignore

A split is either a folder name (``train`` -> ``images/train`` + ``masks/train``, each image
paired with the mask of the same name) or a list file (``--data.train_split lists/train.txt``,
absolute or relative to ``root``) with one ``<image path> <mask path>`` pair per line, relative
to ``root`` or absolute. Colour (RGB) masks are refused: convert them to index PNGs first.
Classes without a colour get the VOC colour map's entry; 255 is drawn cream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..constants import IGNORE_INDEX
from .colours import build_palette
from .files import IMAGE_EXTENSIONS, LabelledImage, LabelledImageDataset
from .listing import missing_files, raise_if_missing, read_list_lines, require_dir, require_samples, require_split_dir
from .source import JointTransform, SegmentationSource

CLASS_LIST = "classes.txt"
IMAGE_DIR, MASK_DIR = "images", "masks"


def read_class_list(path: Union[str, Path]) -> tuple[tuple[str, ...], np.ndarray]:
    """Parse a class list file into (class names, ``[256, 3]`` palette); see the module notes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} does not exist: write one class name per line")
    names: list[str] = []
    colours: list[Optional[tuple[int, ...]]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        colour = None
        if len(fields) >= 4 and all(f.lstrip("-").isdigit() for f in fields[-3:]):
            colour = tuple(int(f) for f in fields[-3:])
            if not all(0 <= c <= 255 for c in colour):
                raise ValueError(f"{path}:{lineno}: colour {colour} must be three ints in [0, 255]")
            fields = fields[:-3]
        name = " ".join(fields)
        if name in names:
            raise ValueError(f"{path}:{lineno}: class {name!r} is listed twice (first as class {names.index(name)})")
        names.append(name)
        colours.append(colour)
    if not names:
        raise ValueError(f"class list {path} names no classes")
    if len(names) > IGNORE_INDEX:
        raise ValueError(
            f"class list {path} names {len(names)} classes; at most {IGNORE_INDEX} "
            f"fit 8-bit masks beside the ignore value {IGNORE_INDEX}"
        )
    return tuple(names), build_palette(colours)


def _is_list_file(root: Path, split: str) -> bool:
    return split.endswith(".txt") or (root / split).is_file()


def _samples_from_folders(root: Path, split: str) -> list[LabelledImage]:
    image_dir = require_split_dir(root / IMAGE_DIR, split, "image")
    mask_dir = require_split_dir(root / MASK_DIR, split, "mask")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    require_samples(images, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    seen: dict[str, Path] = {}
    samples = []
    for image in images:
        if image.stem in seen:
            raise ValueError(
                f"images {seen[image.stem]} and {image} share the name {image.stem!r}: "
                "which one the mask belongs to is ambiguous"
            )
        seen[image.stem] = image
        samples.append(LabelledImage(image.stem, image, mask_dir / f"{image.stem}.png"))
    raise_if_missing(missing_files((f"mask of image {s.image}:", s.label) for s in samples), samples)
    return samples


def _samples_from_list(root: Path, list_file: Path) -> list[LabelledImage]:
    samples, checks = [], []
    for lineno, fields in read_list_lines(list_file):
        if len(fields) != 2:
            raise ValueError(f"{list_file}:{lineno}: expected '<image path> <mask path>', got {' '.join(fields)!r}")
        image, mask = (root / f for f in fields)  # an absolute path replaces root
        where = f"{list_file}:{lineno}"
        checks += [(f"{where}: image", image), (f"{where}: mask", mask)]
        samples.append(LabelledImage(image.stem, image, mask, where))
    raise_if_missing(missing_files(checks), samples)
    require_samples(samples, f"list file {list_file} lists no samples")
    return samples


class FolderSegmentation(LabelledImageDataset):
    """One split of a folder dataset (layout in the module notes).

    Args:
        root: the dataset folder.
        split: a folder name under ``images/`` and ``masks/``, or a list file (``.txt``).
        num_classes: mask values must lie in ``[0, num_classes)`` or be 255.
        transform: joint image/mask transform (albumentations convention), or None.
    """

    def __init__(
        self,
        root: Union[str, Path],
        split: str,
        num_classes: int,
        transform: Optional[JointTransform] = None,
    ) -> None:
        self.root = require_dir(Path(root).expanduser(), "folder dataset root")
        self.split = split
        if _is_list_file(self.root, split):
            samples = _samples_from_list(self.root, self.root / split)
        else:
            samples = _samples_from_folders(self.root, split)
        super().__init__(samples, num_classes, transform)


class FolderSource(SegmentationSource):
    """A folder dataset under ``root``; its classes come from ``root/classes.txt`` (read on first
    use, so constructing the source touches no file)."""

    def __init__(self, root: Union[str, Path]) -> None:
        super().__init__(root)
        self._classes: Optional[tuple[tuple[str, ...], np.ndarray]] = None

    def _class_list(self) -> tuple[tuple[str, ...], np.ndarray]:
        if self._classes is None:
            self._classes = read_class_list(self.root / CLASS_LIST)
        return self._classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_list()[0]

    @property
    def palette(self) -> np.ndarray:
        return self._class_list()[1]

    def prepare(self) -> None:
        require_dir(self.root, "folder dataset root")
        self._class_list()

    def dataset(self, split: str, transform: Optional[JointTransform] = None) -> FolderSegmentation:
        return FolderSegmentation(self.root, split, self.num_classes, transform)


__all__ = ("CLASS_LIST", "FolderSegmentation", "FolderSource", "read_class_list")
