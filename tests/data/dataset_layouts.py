"""Writers of small Cityscapes, COCO-Stuff, folder-dataset and SBD trees in their exact real
layouts (shared by the dataset tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image


def write_rgb(path: Path, height: int, width: int, seed: int = 0, suffix_format: Optional[str] = None) -> np.ndarray:
    """A random RGB image (PNG is lossless: the reader must return exactly these values)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(path, format=suffix_format)
    return image


def write_gray(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8)).save(path)


# -- Cityscapes ---------------------------------------------------------------------------------


def cityscapes_stem(city: str, index: int) -> str:
    return f"{city}_{index:06d}_000019"


def write_cityscapes(
    root: Path, split: str, labels: dict[str, dict[str, np.ndarray]], train_ids: Optional[dict[str, np.ndarray]] = None
) -> Path:
    """``labels``: city -> {stem: raw label-id map}; writes ``leftImg8bit`` images of the same
    size and ``gtFine`` ``*_labelIds.png`` (and ``*_labelTrainIds.png`` for the stems in
    ``train_ids``). Returns ``root``."""
    for city, per_stem in labels.items():
        for seed, (stem, label) in enumerate(per_stem.items()):
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", *label.shape, seed=seed)
            write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
            if train_ids and stem in train_ids:
                write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", train_ids[stem])
    return root


# -- COCO-Stuff ---------------------------------------------------------------------------------


def write_cocostuff164k(root: Path, split: str, labels: dict[str, np.ndarray]) -> Path:
    """``labels``: image id -> stored PNG values (COCO-Stuff id - 1, 255 unlabeled)."""
    for seed, (name, label) in enumerate(labels.items()):
        write_rgb(root / "images" / split / f"{name}.jpg", *label.shape, seed=seed, suffix_format="JPEG")
        write_gray(root / "annotations" / split / f"{name}.png", label)
    return root


def write_mat_label(path: Path, label: np.ndarray, **extra) -> None:
    """A COCO-Stuff 10k v1.1 annotation: ``S`` (uint16 ids, 0 unlabeled) and its other fields."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {
        "S": label if label.dtype.kind == "f" else label.astype(np.uint16),
        "names": np.array(["person", "bicycle"], dtype=object),
        "captions": np.array(["a caption"], dtype=object),
    }
    fields.update(extra)
    scipy.io.savemat(str(path), fields)


def write_cocostuff10k(root: Path, labels: dict[str, np.ndarray], lists: dict[str, object]) -> Path:
    """``labels``: image name -> ``S`` map; ``lists``: split -> names (or raw text)."""
    for seed, (name, label) in enumerate(labels.items()):
        write_rgb(root / "images" / f"{name}.jpg", *label.shape, seed=seed, suffix_format="JPEG")
        write_mat_label(root / "annotations" / f"{name}.mat", label)
    (root / "imageLists").mkdir(parents=True, exist_ok=True)
    for split, content in lists.items():
        text = content if isinstance(content, str) else "".join(f"{n}\n" for n in content)
        (root / "imageLists" / f"{split}.txt").write_text(text)
    return root


# -- SBD ----------------------------------------------------------------------------------------


def write_sbd_cls(path: Path, segmentation: np.ndarray, num_classes: int = 20) -> None:
    """An SBD ``cls/<id>.mat`` file: struct ``GTcls`` with ``Segmentation`` (class indices),
    ``Boundaries`` (one sparse boundary map per class, in a cell array) and
    ``CategoriesPresent`` (the classes in the image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((num_classes, 1), dtype=object)
    for cls in range(num_classes):
        mask = segmentation == cls + 1
        edge = mask & ~np.pad(mask, 1, mode="edge")[2:, 1:-1]
        boundaries[cls, 0] = scipy.sparse.csc_matrix(edge.astype(np.uint8))
    present = np.array([c for c in np.unique(segmentation) if c > 0], dtype=np.uint8).reshape(-1, 1)
    gt = {"Segmentation": segmentation.astype(np.uint8), "Boundaries": boundaries, "CategoriesPresent": present}
    scipy.io.savemat(str(path), {"GTcls": gt})


def write_sbd_release(root: Path, labels: dict[str, np.ndarray], splits: dict[str, list[str]]) -> Path:
    """``root/benchmark_RELEASE/dataset`` with ``cls/``, ``img/`` and the split lists; returns
    ``root/benchmark_RELEASE``."""
    dataset = root / "benchmark_RELEASE" / "dataset"
    for seed, (name, label) in enumerate(labels.items()):
        write_sbd_cls(dataset / "cls" / f"{name}.mat", label)
        write_rgb(dataset / "img" / f"{name}.jpg", *label.shape, seed=100 + seed, suffix_format="JPEG")
    for split, names in splits.items():
        (dataset / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root / "benchmark_RELEASE"
