"""Writers of small PASCAL VOC trees in the exact official layout (shared by the data tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from lightning_deeplab.data.palette import VOC_PALETTE  # noqa: E402


def write_palette_png(path: Path, label: np.ndarray) -> None:
    """An official-style label: "P" mode, VOC palette, pixel values = class indices."""
    image = Image.fromarray(label.astype(np.uint8))
    image.putpalette(VOC_PALETTE.reshape(-1).tolist())
    assert image.mode == "P"
    image.save(path)


def write_gray_png(path: Path, label: np.ndarray) -> None:
    """An SBD-style "Aug" label: grayscale indices."""
    Image.fromarray(label.astype(np.uint8)).save(path)


def flat_image(height: int, width: int, colour=(200, 40, 40)) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (height, width, 3)).copy()


def block_label(height: int, width: int, cls: int = 15) -> np.ndarray:
    """Background with a ``cls`` block and a 255 rim around it."""
    label = np.zeros((height, width), np.uint8)
    label[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    label[height // 4 + 1 : 3 * height // 4 - 1, width // 4 + 1 : 3 * width // 4 - 1] = cls
    return label


def write_voc_tree(
    root: Path, sizes: dict[str, tuple[int, int]], splits: dict[str, object], aug_labels: Optional[dict] = None
) -> Path:
    """Write ``root/VOCdevkit/VOC2012``: a flat JPEG image per id, its palette label (a class-15
    block with a 255 rim) and its grayscale Aug label, and the split lists (id lists or raw
    text). Returns ``root``."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for name, (h, w) in sizes.items():
        Image.fromarray(flat_image(h, w)).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
        write_palette_png(voc / "SegmentationClass" / f"{name}.png", block_label(h, w))
        aug = (aug_labels or {}).get(name, block_label(h, w))
        write_gray_png(voc / "SegmentationClassAug" / f"{name}.png", aug)
    for split, content in splits.items():
        text = content if isinstance(content, str) else "".join(f"{n}\n" for n in content)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(text)
    return root
