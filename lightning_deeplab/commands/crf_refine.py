"""`deeplab crf`: refine the class probabilities (or logits) of any segmentation model with the
dense CRF, and write the refined label maps.

    deeplab crf --probabilities DIR --images DIR --output_dir OUT [--logits] [--bi_w 5 ...]

Inputs: ``.npy`` arrays ``[C, H, W]`` (float16/32/64; probabilities over C, or raw scores with
``--logits``) in a folder (searched recursively) or a list file (one path per line, relative to
the list's folder), as ``deeplab predict --save_probabilities true`` writes them or as another
framework saves them; and the images they were predicted from, matched by name (the path below
the folder without extension, the same names ``deeplab predict`` gives its outputs). Outputs under
``OUT``: ``labels/<name>.png`` (palette PNGs, pixel value = class index) and, with
``--save_probabilities``, ``probabilities/<name>.npy`` (float16 refined marginals). Arrays whose
image is missing or unreadable, whose size differs from the image's or whose class count differs
from the others' are reported by file and skipped, and so are probabilities whose classes do not
sum to 1 (within ``SUM_TOLERANCE``; ``--allow_unnormalized`` refines them with a warning); the
rest is written. Exit status: 0 when every array was refined, 1 when some were skipped, 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .devices import DEVICE_HELP, resolve_device

#: Folders below ``--output_dir``: the refined label maps and (optionally) probabilities.
LABELS_DIR, PROBABILITIES_DIR = "labels", "probabilities"
#: Probabilities may overshoot [0, 1] by this much (float16 rounding) before they are refused.
PROBABILITY_SLACK = 1e-2
#: How far from 1 the class probabilities of a pixel may sum. float16 rounds each value by at
#: most 2**-11 of itself, so stored softmax outputs sum within ~5e-4 of 1 (bfloat16: ~4e-3).
SUM_TOLERANCE = 1e-2

#: The CRF settings given as options: name -> (type, help). Unset ones keep DenseCRF's defaults
#: (the paper's), so the defaults live in one place (lightning_deeplab.crf).
CRF_OPTIONS: dict[str, tuple[type, str]] = {
    "iterations": (int, "mean-field iterations"),
    "pos_w": (float, "weight of the smoothness (position) kernel"),
    "pos_xy_std": (float, "spatial standard deviation of the smoothness kernel, pixels"),
    "bi_w": (float, "weight of the appearance (bilateral) kernel"),
    "bi_xy_std": (float, "spatial standard deviation of the appearance kernel, pixels"),
    "bi_rgb_std": (float, "colour standard deviation of the appearance kernel, 0-255 scale"),
    "normalization": (str, "'symmetric' (as pydensecrf) or 'after' (the DeepLab Caffe CRF)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplab crf",
        description="Refine saved class probabilities (or logits) of any model with the dense CRF; "
        "write palette PNG label maps. Exit status 0: all refined, 1: some skipped (listed), 2: usage error.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--probabilities",
        required=True,
        type=Path,
        metavar="PATH",
        help="folder of .npy arrays [C, H, W] (searched recursively) or a list file of their paths",
    )
    parser.add_argument(
        "--images",
        required=True,
        type=Path,
        metavar="PATH",
        help="folder (or list file) of the images, matched to the arrays by name",
    )
    parser.add_argument(
        "--output_dir",
        required=True,
        type=Path,
        metavar="DIR",
        help=f"where {LABELS_DIR}/ (and {PROBABILITIES_DIR}/) are written",
    )
    parser.add_argument(
        "--logits", action="store_true", help="the arrays are raw class scores (softmax is taken), not probabilities"
    )
    parser.add_argument(
        "--allow_unnormalized",
        action="store_true",
        help=f"refine probability arrays whose classes do not sum to 1 (within {SUM_TOLERANCE}) and list them as "
        "warnings (default: skip them)",
    )
    crf = parser.add_argument_group("CRF settings (default: the paper's, as lightning_deeplab.crf.DenseCRF)")
    for name, (kind, text) in CRF_OPTIONS.items():
        crf.add_argument(f"--{name}", type=kind, default=None, help=text)
    crf.add_argument(
        "--ckpt",
        type=Path,
        metavar="PATH",
        help="take the CRF values a checkpoint learned (crf_training with a trainable CRF: pos_w, bi_w, "
        "compatibility); the other settings come from the options above",
    )
    parser.add_argument(
        "--save_probabilities",
        action="store_true",
        help=f"also write the refined marginals as float16 {PROBABILITIES_DIR}/<name>.npy",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--batch_size", type=_positive_int, default=8, help="arrays of the same size refined together (default: 8)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace label maps an earlier run left in --output_dir (default: refuse)",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def find_arrays(path: Path) -> list[tuple[str, Path]]:
    """``(name, path)`` of every ``.npy`` under the folder ``path`` (name: the path below it
    without ``.npy``), or of every path listed in the list file ``path``."""
    from ..data.listing import name_under, read_path_list

    if path.is_dir():
        return [(name_under(p, path), p) for p in sorted(path.rglob("*.npy"))]
    if path.suffix.lower() == ".npy":
        raise ValueError(
            f"--probabilities {path} is one array: give the folder that holds the .npy arrays, "
            "or a list file of their paths (one per line)"
        )
    try:
        return [(name, file) for _, name, file in read_path_list(path)]
    except UnicodeDecodeError:
        raise ValueError(f"--probabilities {path} is neither a folder nor a text list file of .npy paths") from None


def sum_problem(probabilities: Any) -> Optional[str]:
    """What is wrong with the sums over the classes (axis 0) of ``probabilities``, or None when
    every pixel's sum lies within :data:`SUM_TOLERANCE` of 1."""
    sums = probabilities.sum(axis=0)
    low, high = float(sums.min()), float(sums.max())
    off = max(abs(low - 1), abs(high - 1))
    if off <= SUM_TOLERANCE:
        return None
    where = f"{low:.3g} at every pixel" if high - low <= SUM_TOLERANCE else f"between {low:.3g} and {high:.3g}"
    return f"its {probabilities.shape[0]} class probabilities sum to {where}, up to {off:.3g} away from 1"


class Refiner:
    """Checks the arrays, refines them in batches of one size, writes each result as it is done.
    Arrays are read in two passes (headers to group them, then the data of one batch at a time),
    so memory holds one batch whatever the number of image sizes."""

    def __init__(self, args: argparse.Namespace, crf: Any, device: Any, palette: Any) -> None:
        self.args, self.crf, self.device, self.palette = args, crf, device, palette
        self.skipped: list[tuple[str, str]] = []
        #: arrays refined although something is off (--allow_unnormalized): (path, what)
        self.warnings: list[tuple[str, str]] = []
        self.written = 0

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append((str(path), reason))

    def shape_of(self, name: str, path: Path, image_path: Optional[Path]):
        """``(C, H, W)`` of the array at ``path`` from its header, checked against its image's
        header (or None, recorded as skipped)."""
        import numpy as np
        from PIL import Image

        if image_path is None:
            return self.skip(path, f"no image named {name!r} under {self.args.images}")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
        except (OSError, ValueError) as err:
            return self.skip(path, f"cannot read the array: {err}")
        if array.ndim != 3 or array.dtype not in (np.float16, np.float32, np.float64) or array.shape[0] < 2:
            return self.skip(path, f"expected a float array [C, H, W] with C >= 2, got {array.dtype} {array.shape}")
        try:
            with Image.open(image_path) as image:
                width, height = image.size
        except OSError as err:
            return self.skip(path, f"cannot read its image {image_path}: {err}")
        if (height, width) != array.shape[1:]:
            return self.skip(
                path, f"is {array.shape[1]}x{array.shape[2]} (HxW) but its image {image_path} is {height}x{width}"
            )
        return tuple(array.shape)

    def values_of(self, path: Path):
        """The array at ``path`` as float32, its values checked (or None, recorded as skipped)."""
        import numpy as np

        try:
            array = np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as err:  # e.g. truncated after its header
            return self.skip(path, f"cannot read the array: {err}")
        if not np.isfinite(array).all():
            return self.skip(path, "holds NaN or infinite values")
        if not self.args.logits and (array.min() < -PROBABILITY_SLACK or array.max() > 1 + PROBABILITY_SLACK):
            return self.skip(path, "holds values outside [0, 1]: not probabilities (pass --logits for raw scores)")
        problem = None if self.args.logits else sum_problem(array)
        if problem is not None:
            if not self.args.allow_unnormalized:
                return self.skip(
                    path,
                    f"{problem} (tolerance {SUM_TOLERANCE}): not probabilities (pass --logits "
                    "for raw scores, or --allow_unnormalized to refine them as they are)",
                )
            self.warnings.append((str(path), problem))
        return array

    def refine(self, batch: list[tuple[str, Path, Path]]) -> None:
        """Refine arrays of one size together and write their outputs."""
        import numpy as np
        import torch

        from ..crf import unary_from_logits, unary_from_softmax
        from ..data.files import read_rgb_image, write_index_png
        from ..fileio import atomic_output

        images, kept = [], []
        for name, path, image_path in batch:
            array = self.values_of(path)
            if array is None:
                continue
            try:
                images.append(read_rgb_image(image_path))
            except ValueError as err:
                self.skip(path, str(err))
                continue
            kept.append((name, path, array))
        if not kept:
            return
        # One array is used as it is (no stacked copy); the scores are dropped once the unary is
        # made: at 4000x3000x21 each of these is ~1 GB beside the CRF's own memory.
        arrays = [a for _, _, a in kept]
        kept = [(name, path, None) for name, path, _ in kept]
        scores = torch.from_numpy(arrays[0][None] if len(arrays) == 1 else np.stack(arrays)).to(self.device)
        del arrays
        unary = unary_from_logits(scores) if self.args.logits else unary_from_softmax(scores)
        del scores
        image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(self.device)
        with torch.no_grad():
            marginals = self.crf(unary, image)
        labels = marginals.argmax(dim=1).to(torch.uint8).cpu().numpy()
        for i, (name, _, _) in enumerate(kept):
            write_index_png(self.args.output_dir / LABELS_DIR / f"{name}.png", labels[i], self.palette)
            if self.args.save_probabilities:
                with atomic_output(self.args.output_dir / PROBABILITIES_DIR / f"{name}.npy") as handle:
                    np.save(handle, marginals[i].to(torch.float16).cpu().numpy())
            self.written += 1


def _existing_labels(output_dir: Path) -> list[Path]:
    return sorted(
        p for folder in (LABELS_DIR, PROBABILITIES_DIR) for p in (output_dir / folder).rglob("*") if p.is_file()
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``deeplab crf``; returns the exit status (0: all refined, 1: some skipped, 2: usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for option in ("probabilities", "images"):
        if not getattr(args, option).exists():
            parser.error(f"--{option} {getattr(args, option)} does not exist")
    if not args.overwrite and _existing_labels(args.output_dir):
        parser.error(
            f"--output_dir {args.output_dir} already holds outputs of an earlier run; "
            "choose another folder or pass --overwrite"
        )

    # torch only now: `deeplab crf --help` and usage errors answer at once
    from collections import Counter, defaultdict

    from tqdm.auto import tqdm

    from ..crf import DenseCRF
    from ..data.images import find_predict_images
    from ..data.palette import VOC_PALETTE

    settings = {name: getattr(args, name) for name in CRF_OPTIONS if getattr(args, name) is not None}
    try:
        if args.ckpt is not None:
            from ..training.crf_loss import learned_crf_values

            learned = learned_crf_values(str(args.ckpt))
            given = sorted(set(learned) & set(settings))
            if given:
                raise ValueError(f"--{given[0]} is learned in --ckpt {args.ckpt}: leave the option out")
            settings.update(learned)
        device = resolve_device(args.device)
        crf = DenseCRF(**settings).to(device)
        arrays = find_arrays(args.probabilities)
        images = dict(find_predict_images(args.images, option="--images"))
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.error(str(err))
    if not arrays:
        parser.error(f"--probabilities {args.probabilities} holds no .npy arrays")

    refiner = Refiner(args, crf, device, VOC_PALETTE)
    shapes = {}
    for name, path in arrays:
        shape = refiner.shape_of(name, path, images.get(name))
        if shape is not None:
            shapes[name, path] = shape
    # the class count of most arrays is the reference (ties: the first one's)
    counts = Counter(shape[0] for shape in shapes.values())
    classes = max(counts, key=counts.get, default=None)
    if crf.compatibility is not None and classes is not None:
        try:
            crf.set_num_classes(classes)  # a learned matrix must have the arrays' class count
        except ValueError as err:
            parser.error(f"--ckpt {args.ckpt}: {err}")
    progress = tqdm(total=len(arrays), desc="dense CRF", unit="image", disable=None)
    progress.update(len(arrays) - len(shapes))
    by_size: dict[tuple[int, int], list] = defaultdict(list)
    for (name, path), shape in shapes.items():
        if shape[0] != classes:
            refiner.skip(path, f"has {shape[0]} classes, but most arrays have {classes}")
            progress.update(1)
            continue
        by_size[shape[1:]].append((name, path, images[name]))
    for group in by_size.values():
        for start in range(0, len(group), args.batch_size):
            batch = group[start : start + args.batch_size]
            refiner.refine(batch)
            progress.update(len(batch))
    progress.close()

    print(f"{refiner.written} refined label map(s) written to {args.output_dir / LABELS_DIR}", file=sys.stderr)
    if refiner.warnings:
        print(
            f"warning: {len(refiner.warnings)} of them refined from probabilities that do not sum to 1:",
            file=sys.stderr,
        )
        for path, problem in refiner.warnings:
            print(f"  {path}: {problem}", file=sys.stderr)
    if refiner.skipped:
        print(f"{len(refiner.skipped)} array(s) skipped:", file=sys.stderr)
        for path, reason in refiner.skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
