"""Convert the raw SBD release into VOC's ``SegmentationClassAug`` labels and ``train_aug`` list.

    python -m lightning_deeplab.data.sbd --sbd /data/benchmark_RELEASE --voc /data/VOCdevkit

Input: the SBD release (``benchmark_RELEASE/dataset/{cls/<id>.mat, img/<id>.jpg, train.txt,
val.txt}``; each ``cls`` file holds a struct ``GTcls`` whose ``Segmentation`` field is an HxW
map of class indices 0-20, 0 = background, no ignore label) and a VOC 2012 tree.

Output, in the VOC tree:

- ``SegmentationClassAug/<id>.png``: grayscale class indices for every image of SBD (train and
  val) and every image with an official VOC label (VOC train and val). The rule: an image with
  an official ``SegmentationClass`` label gets that label (finer outlines, 255 on object
  borders); an SBD image without one gets its SBD label. ``--labels sbd`` gives the SBD label
  precedence on the images that have both instead.
- ``ImageSets/Segmentation/train_aug.txt``: (VOC train + SBD train + SBD val) minus VOC val,
  without duplicates, sorted; 10,582 ids for the full releases.
- ``JPEGImages/<id>.jpg`` for SBD images that the VOC tree lacks (copied from ``img/``).

Every file is written to a temporary name and renamed into place, and ``train_aug.txt`` is
written last: an interrupted run never leaves a list that names labels not yet written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..fileio import atomic_path
from .listing import raise_if_missing, read_list_lines, require_dir
from .remap import as_integer_labels

# .files and .voc (the VOC layout) import torch: they are imported where used, so that `--help`
# answers without it.

#: Which label an image that has both an official VOC label and an SBD label gets.
LABEL_PRECEDENCE = ("voc", "sbd")


@dataclass(frozen=True)
class SBDConversion:
    """What a conversion wrote."""

    #: Aug labels converted from SBD ``cls/*.mat`` files.
    sbd_labels: int
    #: Aug labels copied from the official VOC ``SegmentationClass`` PNGs.
    voc_labels: int
    #: Images that have both labels (each counted once above, by the precedence rule).
    overlap: int
    #: SBD images copied into ``JPEGImages`` because the VOC tree lacked them.
    images_copied: int
    #: Ids in ``train_aug.txt``.
    train_aug: int
    #: The list written.
    train_aug_file: Path

    def summary(self) -> str:
        """One line per count, for the command's output."""
        return (
            f"SegmentationClassAug: {self.sbd_labels + self.voc_labels} labels "
            f"({self.sbd_labels} from SBD, {self.voc_labels} from VOC; {self.overlap} images had both)\n"
            f"JPEGImages: {self.images_copied} SBD images copied\n"
            f"{self.train_aug_file}: {self.train_aug} ids"
        )


def resolve_sbd_root(root: Union[str, Path]) -> Path:
    """The SBD ``dataset`` folder (holding ``cls/``): ``root`` itself, ``root/dataset`` or
    ``root/benchmark_RELEASE/dataset``."""
    root = require_dir(Path(root).expanduser(), "SBD root")
    for candidate in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            return candidate
    raise FileNotFoundError(
        f"no SBD release under {root}: expected {root / 'dataset' / 'cls'}/ (benchmark_RELEASE/dataset)"
    )


def read_id_list(list_file: Path) -> dict[str, int]:
    """Image id -> line number, one id per line (blank lines skipped); anything else is an error
    naming the line."""
    ids: dict[str, int] = {}
    for lineno, fields in read_list_lines(list_file):
        if len(fields) != 1:
            raise ValueError(f"{list_file}:{lineno}: expected one image id, got {' '.join(fields)!r}")
        ids.setdefault(fields[0], lineno)
    return ids


def read_sbd_label(path: Path) -> np.ndarray:
    """The ``GTcls.Segmentation`` map of an SBD ``cls`` file as uint8 class indices (0-20)."""
    from .files import load_mat

    content = load_mat(path, "SBD annotation", squeeze_me=True, struct_as_record=False)
    gt = content.get("GTcls")
    if gt is None or not hasattr(gt, "Segmentation"):
        raise ValueError(f"SBD annotation {path} has no GTcls.Segmentation (is it a cls/ file?)")
    label = np.asarray(gt.Segmentation)
    if label.ndim != 2:
        raise ValueError(f"SBD annotation {path}: GTcls.Segmentation has shape {label.shape}; expected HxW")
    from .voc import VOC_CLASSES

    label = as_integer_labels(label, path)
    if label.size and (label.min() < 0 or label.max() >= len(VOC_CLASSES)):
        bad = sorted(set(np.unique(label).tolist()) - set(range(len(VOC_CLASSES))))
        raise ValueError(f"SBD annotation {path} holds values {bad} outside the classes 0-{len(VOC_CLASSES) - 1}")
    return label.astype(np.uint8)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, then rename it into place."""
    with atomic_path(path) as temporary:
        write(temporary)


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _convert_one(job: tuple[str, Path, Path, Path]) -> None:
    """Check one image's label (from SBD's .mat or VOC's PNG) and write it as an Aug PNG."""
    from .files import check_label, read_index_label, write_index_png
    from .voc import VOC_CLASSES

    kind, source, image, target = job
    label = read_sbd_label(source) if kind == "sbd" else read_index_label(source)
    check_label(label, _image_size(image), len(VOC_CLASSES), source)
    write_index_png(target, label)


def _missing_inputs(
    sbd: Path, voc: Path, sbd_ids: dict[str, dict[str, int]], voc_ids: dict[str, dict[str, int]], to_copy: Sequence[str]
) -> list[str]:
    """Every listed file that does not exist, named with the list (and line) that named it."""
    from .voc import IMAGE_DIR, LABEL_DIR, SPLIT_DIR

    missing = []
    for split, ids in voc_ids.items():
        for name, lineno in ids.items():
            for path in (voc / LABEL_DIR / f"{name}.png", voc / IMAGE_DIR / f"{name}.jpg"):
                if not path.is_file():
                    missing.append(f"{voc / SPLIT_DIR / split}.txt:{lineno}: {path} does not exist")
    for split, ids in sbd_ids.items():
        for name, lineno in ids.items():
            if not (sbd / "cls" / f"{name}.mat").is_file():
                missing.append(f"{sbd / split}.txt:{lineno}: {sbd / 'cls' / name}.mat does not exist")
    for name in to_copy:
        if not (sbd / "img" / f"{name}.jpg").is_file():
            missing.append(f"image {name}: neither {voc / IMAGE_DIR / name}.jpg nor {sbd / 'img' / name}.jpg exists")
    return missing


def convert_sbd(
    sbd_root: Union[str, Path],
    voc_root: Union[str, Path],
    labels: str = "voc",
    workers: int = 1,
) -> SBDConversion:
    """Write ``SegmentationClassAug/`` and ``train_aug.txt`` into the VOC tree (see the module notes).

    Args:
        sbd_root: ``benchmark_RELEASE``, its ``dataset`` folder, or the folder holding it.
        voc_root: the folder holding ``VOCdevkit/``, ``VOCdevkit`` or ``VOCdevkit/VOC2012``.
        labels: "voc" (official VOC labels take precedence where an image has both) or "sbd".
        workers: processes converting labels in parallel (1: in this process).
    """
    from .voc import AUG_LABEL_DIR, AUG_SPLIT, IMAGE_DIR, LABEL_DIR, SPLIT_DIR, resolve_voc_root

    if labels not in LABEL_PRECEDENCE:
        raise ValueError(f"labels must be one of {LABEL_PRECEDENCE}, got {labels!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    sbd = resolve_sbd_root(sbd_root)
    voc = resolve_voc_root(voc_root)
    sbd_ids = {split: read_id_list(sbd / f"{split}.txt") for split in ("train", "val")}
    voc_ids = {split: read_id_list(voc / SPLIT_DIR / f"{split}.txt") for split in ("train", "val")}
    in_sbd = set(sbd_ids["train"]) | set(sbd_ids["val"])
    in_voc = set(voc_ids["train"]) | set(voc_ids["val"])

    to_copy = sorted(i for i in in_sbd if not (voc / IMAGE_DIR / f"{i}.jpg").is_file())
    raise_if_missing(_missing_inputs(sbd, voc, sbd_ids, voc_ids, to_copy))

    (voc / AUG_LABEL_DIR).mkdir(exist_ok=True)
    for name in to_copy:
        _write_atomic(voc / IMAGE_DIR / f"{name}.jpg", lambda t, n=name: shutil.copyfile(sbd / "img" / f"{n}.jpg", t))
    jobs = []
    for name in sorted(in_sbd | in_voc):
        use_voc = name in in_voc and (labels == "voc" or name not in in_sbd)
        source = voc / LABEL_DIR / f"{name}.png" if use_voc else sbd / "cls" / f"{name}.mat"
        jobs.append(
            ("voc" if use_voc else "sbd", source, voc / IMAGE_DIR / f"{name}.jpg", voc / AUG_LABEL_DIR / f"{name}.png")
        )
    if workers == 1:
        for job in jobs:
            _convert_one(job)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_convert_one, jobs, chunksize=64))

    train_aug = sorted((set(voc_ids["train"]) | in_sbd) - set(voc_ids["val"]))
    train_aug_file = voc / SPLIT_DIR / f"{AUG_SPLIT}.txt"
    _write_atomic(train_aug_file, lambda t: t.write_text("".join(f"{i}\n" for i in train_aug)))
    from_voc = sum(1 for job in jobs if job[0] == "voc")
    return SBDConversion(
        sbd_labels=len(jobs) - from_voc,
        voc_labels=from_voc,
        overlap=len(in_sbd & in_voc),
        images_copied=len(to_copy),
        train_aug=len(train_aug),
        train_aug_file=train_aug_file,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: convert, print the counts; errors are printed, exit status 1."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_deeplab.data.sbd",
        description="Convert the SBD release into VOCdevkit/VOC2012/SegmentationClassAug PNGs and "
        "ImageSets/Segmentation/train_aug.txt ((VOC train + SBD train + SBD val) - VOC val).",
    )
    parser.add_argument("--sbd", required=True, help="benchmark_RELEASE (or its dataset/ folder)")
    parser.add_argument("--voc", required=True, help="VOCdevkit (or the folder holding it, or VOC2012)")
    parser.add_argument(
        "--labels",
        choices=LABEL_PRECEDENCE,
        default="voc",
        help="label of images in both sets: the official VOC one (default) or SBD's",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="parallel conversion processes (default: up to 8)",
    )
    args = parser.parse_args(argv)
    try:
        result = convert_sbd(args.sbd, args.voc, labels=args.labels, workers=args.workers)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
