"""Images without labels, for prediction: one image, a folder of images, or a list file.

Sizes are kept (no resizing); a batch is padded to its largest image and records every image's
own size. A file that cannot be decoded does not stop the run: it is left out of its batch and
reported, by path, in the batch's ``skipped`` list.

Names (the output file names) are the paths below the folder without their extension. Two
images that would get the same name (``x.jpg`` and ``x.png``) are both kept: the first in
sorted order is ``x``, the next keeps its extension (``x.png``), so no output overwrites another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .collate import pad_images
from .files import IMAGE_EXTENSIONS, read_rgb_image
from .listing import name_under, read_path_list

#: File name endings read as lists of image paths (one per line; relative to the list's folder).
LIST_EXTENSIONS = (".txt", ".lst", ".list")


def distinct_names(items: Sequence[tuple[str, Path]]) -> tuple[list[tuple[str, Path]], list[tuple[Path, str]]]:
    """``(name, path)`` pairs with every name made distinct, and ``(path, new name)`` of each
    one renamed. A repeated name keeps its file's extension (``x`` -> ``x.png``), then gets a
    counter (``x.png.1``), never a name some other file has."""
    taken = {name for name, _ in items}
    used: set[str] = set()
    out, renamed = [], []
    for name, path in items:
        if name in used:
            candidate, count = name + path.suffix, 0
            while candidate in used or candidate in taken:
                count += 1
                candidate = f"{name}{path.suffix}.{count}"
            renamed.append((path, candidate))
            name = candidate
        used.add(name)
        out.append((name, path))
    return out, renamed


def _read_list(list_file: Path, option: str) -> list[tuple[str, Path]]:
    try:
        entries = read_path_list(list_file)
    except UnicodeDecodeError:
        raise ValueError(f"{option} {list_file} is not a text list file of image paths") from None
    if not entries:
        raise ValueError(f"{option} list {list_file} names no images")
    seen: dict[Path, int] = {}
    for lineno, _, path in entries:
        if path in seen:
            raise ValueError(f"{list_file}:{lineno}: {path} is listed twice (first on line {seen[path]})")
        seen[path] = lineno
    return [(name, path) for _, name, path in entries]


def find_predict_images(
    path: Union[str, Path], renamed: Optional[list] = None, option: str = "predict_path"
) -> list[tuple[str, Path]]:
    """``(name, path)`` of every image to predict under ``path``, names distinct (see the
    module notes; ``renamed``, when given, receives ``(path, name)`` of each image whose name
    was made distinct).

    ``path`` is an image file (name: its stem), a folder (every file with an image extension
    under it, recursively, sorted; name: the path below the folder without extension), or a
    list file (``.txt``/``.lst``: one image path per line, relative to the list's folder; blank
    lines and ``#`` comments skipped; a listed file that is missing is reported and skipped
    when read, like an unreadable one). Names become the output file names. Errors name
    ``path`` as the value of ``option`` (the command's own name for it).
    """
    items, changed = distinct_names(_find_images(path, option))
    if renamed is not None:
        renamed.extend(changed)
    return items


def _find_images(path: Union[str, Path], option: str) -> list[tuple[str, Path]]:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{option} {path} does not exist (expected an image, a folder or a list file)")
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise ValueError(f"{option} {path} holds no images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        return [(name_under(p, path), p) for p in found]
    if path.suffix.lower() in LIST_EXTENSIONS:
        return _read_list(path, option)
    return [(path.stem, path)]


class PredictImages(Dataset):
    """Images to predict, read at their own size.

    Items: ``{"image": float32 [3, H, W] RGB 0-255, "name", "path"}``, or, for a file that
    cannot be decoded, ``{"name", "path", "error": message}``.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        #: ``(path, name)`` of every image whose name was made distinct from another's
        self.renamed: list[tuple[Path, str]] = []
        self.items = find_predict_images(path, self.renamed)

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
    """Batch prediction samples: ``{"image": [B, 3, H, W] (padded bottom/right with
    PAD_VALUE), "name", "path", "size": [(h, w)], "skipped": [(path, reason)]}``;
    unreadable samples are only listed in ``skipped`` (the batch may then hold no image)."""
    good = [s for s in samples if "error" not in s]
    skipped = [(s["path"], s["error"]) for s in samples if "error" in s]
    sizes = [tuple(s["image"].shape[-2:]) for s in good]
    return {
        "image": pad_images([s["image"] for s in good]),
        "name": [s["name"] for s in good],
        "path": [s["path"] for s in good],
        "size": sizes,
        "skipped": skipped,
    }
