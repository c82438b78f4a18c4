"""Label maps as pictures: palette PNGs (VOC's format: pixel value = class index) and overlays."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

import torch

from .data.files import full_palette, write_index_png
from .fileio import atomic_output


def image_to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A float RGB 0-255 image (any shape) as uint8, rounded to the nearest value: the one
    conversion of a batch's image for the dense CRF's colour kernel and for pictures."""
    return image.round().clamp(0, 255).to(torch.uint8)


def colorize(mask: np.ndarray, palette) -> np.ndarray:
    """HxW class indices -> HxWx3 uint8 colours (values beyond the palette: black)."""
    return full_palette(palette)[np.asarray(mask, dtype=np.int64).clip(0, 255)]


def blend(image: np.ndarray, mask: np.ndarray, palette, alpha: float = 0.5, keep=()) -> np.ndarray:
    """The image with the coloured label map laid over it; pixels of the classes in ``keep``
    (e.g. the background) stay as in the image."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(mask, palette).astype(np.float32)
    mixed = mixed.round().clip(0, 255).astype(np.uint8)
    untouched = np.isin(mask, list(keep))
    mixed[untouched] = image[untouched]
    return mixed


def save_label_png(mask: np.ndarray, palette, path: str) -> None:
    """Write a palette ("P" mode) PNG whose pixel values are the class indices.

    The file appears complete or not at all: it is written beside its target and renamed.
    """
    write_index_png(path, mask, palette)


def save_atomically(img: Image.Image, path: str, **options) -> None:
    """Save a PIL image in the format its extension names (``options``: that format's, e.g. a
    JPEG's ``subsampling``), appearing complete or not at all."""
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG")
    with atomic_output(path, "wb") as handle:
        img.save(handle, format=fmt, **options)
