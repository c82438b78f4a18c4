"""Reading image/label file pairs into samples: shared by every dataset that stores files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..constants import IGNORE_INDEX
from ..fileio import atomic_output
from .source import JointTransform

#: PIL modes whose pixel values are class indices ("P": palette PNG, read as indices, never as colours).
INDEX_LABEL_MODES = ("P", "L")

#: File name endings read as images (case-insensitive), wherever a folder is searched for images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: PIL modes of 16-bit (or 32-bit integer) single-channel images, scaled to 8 bits when read.
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class LabelledImage:
    """One sample on disk: its id, the paths of its image and label, and where it is listed
    (e.g. ``"train.txt:3"``; empty when found by a folder scan) so problems can name the line."""

    name: str
    image: Path
    label: Path
    where: str = ""


def _wide_gray_to_uint8(image: Image.Image, path: Path) -> np.ndarray:
    # PIL's convert("RGB") clips 16-bit values at 255; scale the full 16-bit range instead
    values = np.asarray(image, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(
            f"cannot read image {path}: {image.mode} values outside 0-65535; save it as an 8-bit or 16-bit image"
        )
    gray = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def read_rgb_image(path: Path) -> np.ndarray:
    """Decode ``path`` into a uint8 HxWx3 RGB array; unreadable or truncated files raise ValueError.

    16-bit grayscale images are scaled to 8 bits (not clipped); float images are refused.
    """
    try:
        with Image.open(path) as image:
            if image.mode in WIDE_GRAY_MODES:
                return _wide_gray_to_uint8(image, path)
            if image.mode == "F":
                raise ValueError(
                    f"cannot read image {path}: float (mode 'F') images are not supported; "
                    "save it as an 8-bit or 16-bit image"
                )
            return np.asarray(image.convert("RGB"))
    except OSError as err:  # PIL reports unknown formats and truncated data as OSError
        raise ValueError(f"cannot read image {path}: {err}") from err


def read_index_label(path: Path) -> np.ndarray:
    """Decode a label PNG into a uint8 HxW array of class indices.

    Palette ("P") PNGs give their indices, not their colours; colour (RGB) labels are refused
    because mapping colours back to classes is ambiguous.
    """
    try:
        with Image.open(path) as label:
            if label.mode not in INDEX_LABEL_MODES:
                raise ValueError(
                    f"label {path} has PIL mode {label.mode!r}; expected a palette ('P') or "
                    "grayscale ('L') PNG whose pixel values are class indices"
                )
            return np.array(label, dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"cannot read label {path}: {err}") from err


def check_label(label: np.ndarray, image_shape: Sequence[int], num_classes: int, path: Path) -> None:
    """Raise ValueError (naming ``path``) when the label's size differs from the image's or it
    holds values other than ``0 .. num_classes - 1`` and the ignore index."""
    if tuple(label.shape[:2]) != tuple(image_shape[:2]):
        raise ValueError(
            f"label {path} is {label.shape[0]}x{label.shape[1]} (HxW) but its image is "
            f"{image_shape[0]}x{image_shape[1]}"
        )
    bad = (label >= num_classes) & (label != IGNORE_INDEX)
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise ValueError(
            f"label {path} holds values {{{shown}}} outside the classes [0, {num_classes}) "
            f"and the ignore index {IGNORE_INDEX}"
        )


def full_palette(palette: Any) -> np.ndarray:
    """``palette`` (``[N, 3]`` RGB, N <= 256) as ``[256, 3]`` uint8; entries beyond it are black."""
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if pal.shape[0] > 256:
        raise ValueError(f"a palette holds at most 256 colours, got {pal.shape[0]}")
    return np.concatenate([pal, np.zeros((256 - pal.shape[0], 3), np.uint8)])


def write_index_png(path: Path, label: np.ndarray, palette: Optional[np.ndarray] = None) -> None:
    """Write an HxW map of class indices (0-255) as a palette PNG (``palette``: [N, 3] uint8
    RGB), or as a grayscale PNG when ``palette`` is None. The file appears complete or not at
    all (written beside its target and renamed); parent folders are created."""
    label = np.asarray(label)
    if label.ndim != 2 or label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError(f"a label PNG of {path} needs an HxW map of values in 0..255, got shape {label.shape}")
    image = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))  # mode "L"
    if palette is not None:
        # on an "L" image putpalette switches the mode to "P" and keeps the values as indices
        image.putpalette(full_palette(palette).reshape(-1).tolist())
    with atomic_output(path) as handle:
        image.save(handle, format="PNG")


def load_mat(path: Path, what: str, **options: Any) -> dict:
    """The variables of the MATLAB file ``path`` (``what`` names it in errors, e.g.
    "annotation"); ``options`` go to ``scipy.io.loadmat``."""
    try:
        from scipy.io import loadmat
    except ImportError as err:  # scipy is an optional dependency
        raise ImportError(f"reading the .mat {what} {path} needs scipy: pip install scipy") from err
    try:
        return loadmat(str(path), **options)
    except Exception as err:  # scipy raises assorted types (ValueError, MatReadError, OSError)
        raise ValueError(f"cannot read {what} {path}: {err}") from err


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """HxWx3 image and HxW mask -> float32 [3, H, W] and int64 [H, W] tensors."""
    image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    mask_t = torch.from_numpy(np.ascontiguousarray(mask)).long()
    return image_t.contiguous(), mask_t


class LabelledImageDataset(Dataset):
    """Samples read from image/label file pairs, checked, optionally transformed.

    Items are dicts: ``image`` float32 [3, H, W] RGB 0-255 (not normalised), ``mask`` int64
    [H, W] with ``IGNORE_INDEX`` for ignored pixels, ``name`` the sample id.
    Subclasses whose label files hold other ids (e.g. raw ids to map to train ids) override
    :meth:`convert_label`.
    """

    def __init__(
        self,
        samples: Sequence[LabelledImage],
        num_classes: int,
        transform: Optional[JointTransform] = None,
    ) -> None:
        if num_classes < 1 or num_classes > IGNORE_INDEX:
            raise ValueError(f"num_classes must lie in [1, {IGNORE_INDEX}], got {num_classes}")
        self.samples = list(samples)
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def convert_label(self, label: np.ndarray, sample: LabelledImage) -> np.ndarray:
        """Map the stored label values to class indices (identity here)."""
        return label

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked, untransformed uint8 image (HxWx3) and label (HxW) of sample ``index``."""
        sample = self.samples[index]
        image = read_rgb_image(sample.image)
        label = self.convert_label(read_index_label(sample.label), sample)
        check_label(label, image.shape, self.num_classes, sample.label)
        return image, label

    def __getitem__(self, index: int) -> dict:
        image, label = self.read(index)
        # float before the transform so resizing is not quantised and padding gets the exact mean
        image = image.astype(np.float32)
        if self.transform is not None:
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        image_t, mask_t = to_tensors(image, label)
        return {"image": image_t, "mask": mask_t, "name": self.samples[index].name}
