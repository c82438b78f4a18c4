"""Label maps as pictures: palette PNGs (VOC's format: pixel value = class index) and overlays."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .fileio import atomic_output


def _palette_array(palette) -> np.ndarray:
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if pal.shape[0] < 256:  # classes beyond the palette (and 255) fall back to black
        pal = np.concatenate([pal, np.zeros((256 - pal.shape[0], 3), np.uint8)])
    return pal[:256]


def colorize(mask: np.ndarray, palette) -> np.ndarray:
    """HxW class indices -> HxWx3 uint8 colours."""
    return _palette_array(palette)[np.asarray(mask, dtype=np.int64).clip(0, 255)]


def blend(image: np.ndarray, mask: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    """The image with the coloured label map laid over it."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(mask, palette).astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


def save_label_png(mask: np.ndarray, palette, path: str) -> None:
    """Write a palette ("P" mode) PNG whose pixel values are the class indices.

    The file appears complete or not at all: it is written beside its target and renamed.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise ValueError(f"a label PNG needs an HxW map of values in 0..255, got shape {mask.shape}")
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(_palette_array(palette).reshape(-1).tolist())
    save_atomically(img, path)


def save_atomically(img: Image.Image, path: str) -> None:
    """Save a PIL image in the format its extension names, appearing complete or not at all."""
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG")
    with atomic_output(path, "wb") as handle:
        img.save(handle, format=fmt)
