"""Images without labels, for prediction: one image, a folder of images, or a list file.

Sizes are kept (no resizing); a batch is padded to its largest image and records every image's
own size. A file that cannot be decoded does not stop the run: it is left out of its batch and
reported, by path, in the batch's ``skipped`` list.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import PAD_MEAN_RGB
from .files import read_rgb_image

#: File name endings read as images in a folder (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: File name endings read as lists of image paths (one per line; relative to the list's folder).
LIST_EXTENSIONS = (".txt", ".lst", ".list")


def _name_under(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` without its extension (POSIX separators), or its stem."""
    try:
        return path.relative_to(root).with_suffix("").as_posix()
    except ValueError:
        return path.stem


def _read_list(list_file: Path) -> list[tuple[str, Path]]:
    entries = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        path = Path(os.path.normpath(path if path.is_absolute() else list_file.parent / path))
        entries.append((_name_under(path, list_file.parent), path, lineno))
    if not entries:
        raise ValueError(f"predict list {list_file} names no images")
    seen: dict[str, int] = {}
    for name, path, lineno in entries:
        if name in seen:
            raise ValueError(
                f"{list_file}:{lineno}: {path} would be written as {name!r}, like line {seen[name]}: "
                "give the images distinct names or paths"
            )
        seen[name] = lineno
    return [(name, path) for name, path, _ in entries]


def find_predict_images(path: Union[str, Path]) -> list[tuple[str, Path]]:
    """``(name, path)`` of every image to predict under ``path``.

    ``path`` is an image file (name: its stem), a folder (every file with an image extension
    under it, recursively, sorted; name: the path below the folder without extension), or a
    list file (``.txt``/``.lst``: one image path per line, relative to the list's folder; blank
    lines and ``#`` comments skipped; a listed file that is missing is reported and skipped
    when read, like an unreadable one). Names become the output file names.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"predict_path {path} does not exist (expected an image, a folder or a list file)")
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise ValueError(f"predict_path {path} holds no images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        return [(_name_under(p, path), p) for p in found]
    if path.suffix.lower() in LIST_EXTENSIONS:
        return _read_list(path)
    return [(path.stem, path)]


class PredictImages(Dataset):
    """Images to predict, read at their own size.

    Items: ``{"image": float32 [3, H, W] RGB 0-255, "name", "path"}``, or, for a file that
    cannot be decoded, ``{"name", "path", "error": message}``.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self.items = find_predict_images(path)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        name, path = self.items[index]
        try:
            image = read_rgb_image(path)
        except (ValueError, OSError) as err:
            return {"name": name, "path": str(path), "error": str(err)}
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1).contiguous()
        return {"image": tensor, "name": name, "path": str(path)}


def predict_collate(samples: Sequence[dict]) -> dict:
    """Batch prediction samples: ``{"image": [B, 3, H, W] (padded bottom/right with the mean
    colour), "name", "path", "size": [(h, w)], "skipped": [(path, reason)]}``; unreadable
    samples are only listed in ``skipped`` (the batch may then hold no image at all)."""
    good = [s for s in samples if "error" not in s]
    skipped = [(s["path"], s["error"]) for s in samples if "error" in s]
    sizes = [tuple(s["image"].shape[-2:]) for s in good]
    height = max((h for h, _ in sizes), default=0)
    width = max((w for _, w in sizes), default=0)
    images = torch.empty((len(good), 3, height, width), dtype=torch.float32)
    images[:] = torch.tensor(PAD_MEAN_RGB, dtype=torch.float32).view(3, 1, 1)
    for i, sample in enumerate(good):
        h, w = sizes[i]
        images[i, :, :h, :w] = sample["image"]
    return {
        "image": images,
        "name": [s["name"] for s in good],
        "path": [s["path"] for s in good],
        "size": sizes,
        "skipped": skipped,
    }
