"""`deeplab crf-search`: the paper's grid search of the dense CRF's appearance kernel.

DeepLab v2 fixed the smoothness kernel (pos_w 3, pos_xy_std 1) and searched the appearance
kernel's weight ``bi_w`` (3..6), spatial std ``bi_xy_std`` (30..100 by 10) and colour std
``bi_rgb_std`` (3..6) on 100 val images. The network's probabilities are computed once (or read
from the ``.npy`` files ``deeplab predict`` saves) and kept; every setting then runs only the
CRF, on the GPU when there is one, and is scored with one confusion matrix over the images.

    deeplab crf-search --config configs/deeplabv2_resnet101.yaml --config configs/voc12aug.yaml \\
        --ckpt_path best --num_images 100
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..runs.checkpoint_config import read_checkpoint
from ..constants import IGNORE_INDEX
from .devices import DEVICE_HELP, resolve_device
from ..fileio import write_json
from ..evaluation.metrics import scores_from_confusion
from ..viz import image_to_uint8

#: The grid of the paper (DeepLab v2, section 4.1: w1 in [3:6], sigma_alpha in [30:10:100],
#: sigma_beta in [3:6]); the smoothness kernel and the iterations stay as configured.
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "bi_w": (3.0, 4.0, 5.0, 6.0),
    "bi_xy_std": tuple(float(v) for v in range(30, 101, 10)),
    "bi_rgb_std": (3.0, 4.0, 5.0, 6.0),
}
GRID_KEYS = tuple(DEFAULT_GRID)


@dataclass
class SearchSample:
    """One image of the search: network probabilities [C, H, W] (float16 to save memory),
    the uint8 RGB image [3, H, W] and the labels [H, W] (``ignore_index`` = ignore)."""

    name: str
    probabilities: Tensor
    image: Tensor
    mask: Tensor


def _confusion(pred: Tensor, mask: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    valid = mask != ignore_index
    index = mask[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou_of(
    predict: Callable[[SearchSample], Tensor],
    samples: Sequence[SearchSample],
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """mIoU of ``predict`` (sample -> label map [H, W]) over ``samples``: one confusion matrix."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for sample in samples:
        pred = predict(sample)
        confusion += _confusion(pred, sample.mask.to(pred.device), num_classes, ignore_index).cpu()
    return float(scores_from_confusion(confusion)["mIoU"])


def crf_grid_search(
    samples: Sequence[SearchSample],
    num_classes: int,
    grid: Optional[Mapping[str, Sequence[float]]] = None,
    crf_settings: Optional[Mapping[str, Any]] = None,
    device: Optional[torch.device] = None,
    ignore_index: int = IGNORE_INDEX,
    on_result: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    """Score every combination of ``grid`` (keys among bi_w, bi_xy_std, bi_rgb_std; missing keys
    take :data:`DEFAULT_GRID`) on ``samples``.

    ``crf_settings``: the other :class:`~lightning_deeplab.crf.DenseCRF` arguments (iterations,
    pos_w, pos_xy_std, normalization). ``on_result`` is called with each result as it comes.
    Returns ``{"baseline": mIoU without CRF, "results": [{bi_w, bi_xy_std, bi_rgb_std, mIoU}] in
    grid order, "best": the result with the highest mIoU (the first one on ties)}``.
    """
    from ..crf import DenseCRF, unary_from_softmax

    if not samples:
        raise ValueError("crf_grid_search needs at least one sample")
    grid = dict(grid or {})
    unknown = set(grid) - set(GRID_KEYS)
    if unknown:
        raise ValueError(f"grid keys must be among {GRID_KEYS}, got {sorted(unknown)}")
    values = [tuple(grid.get(key) or DEFAULT_GRID[key]) for key in GRID_KEYS]
    base = {k: v for k, v in dict(crf_settings or {}).items() if k not in GRID_KEYS}
    device = torch.device(device) if device is not None else samples[0].probabilities.device

    def network(sample: SearchSample) -> Tensor:
        return sample.probabilities.to(device).argmax(dim=0)

    baseline = miou_of(network, samples, num_classes, ignore_index)
    results = []
    for setting in itertools.product(*values):
        params = dict(zip(GRID_KEYS, setting))
        try:
            crf = DenseCRF(**base, **params).to(device)
        except TypeError as err:
            raise TypeError(f"CRF settings: {err}") from err

        def refined(sample: SearchSample) -> Tensor:
            probs = sample.probabilities.to(device, torch.float32)[None]
            q = crf(unary_from_softmax(probs), sample.image.to(device)[None])
            return q[0].argmax(dim=0)

        start = time.perf_counter()
        with torch.no_grad():
            result = {**params, "mIoU": miou_of(refined, samples, num_classes, ignore_index)}
        result["seconds"] = round(time.perf_counter() - start, 3)
        results.append(result)
        if on_result is not None:
            on_result(result)
    best = max(results, key=lambda r: r["mIoU"] if math.isfinite(r["mIoU"]) else -math.inf)
    return {"baseline": baseline, "results": results, "best": best}


# -------------------------------------------------------------------------- gathering inputs
def samples_from_model(module: Any, dataset: Any, num_images: int, device: torch.device) -> list[SearchSample]:
    """Run ``module`` (a DeepLabV2Module: its inference settings) on the first ``num_images``
    samples of ``dataset`` once, keeping the probabilities on ``device`` as float16."""
    module = module.to(device).eval()
    samples = []
    with torch.inference_mode():
        for index in range(min(num_images, len(dataset))):
            item = dataset[index]
            probs = module.predict_probabilities(item["image"][None].to(device))[0]
            samples.append(_sample(item, probs.to(torch.float16), device))
            _progress(index + 1, min(num_images, len(dataset)), "network")
    return samples


def samples_from_files(
    directory: str, dataset: Any, num_images: int, num_classes: int, device: torch.device
) -> list[SearchSample]:
    """Read ``<directory>/<name>.npy`` (the [C, H, W] probabilities ``deeplab predict`` saves
    with ``save_probabilities``) for the first ``num_images`` samples of ``dataset``."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"probabilities folder {directory} does not exist")
    samples = []
    for index in range(min(num_images, len(dataset))):
        item = dataset[index]
        path = os.path.join(directory, f"{item['name']}.npy")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no probabilities for {item['name']!r}: {path} does not exist")
        probs = torch.from_numpy(np.load(path))
        expected = (num_classes, *item["mask"].shape)
        if tuple(probs.shape) != expected:
            raise ValueError(f"{path} holds an array of shape {tuple(probs.shape)}, expected {expected} (C, H, W)")
        samples.append(_sample(item, probs.to(torch.float16), device))
    return samples


def _sample(item: Mapping[str, Any], probs: Tensor, device: torch.device) -> SearchSample:
    image = image_to_uint8(item["image"])
    return SearchSample(item["name"], probs.to(device), image.to(device), item["mask"].to(device))


def _progress(done: int, total: int, what: str) -> None:
    if done == total or done % 10 == 0:
        print(f"  {what}: {done}/{total} images", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplab crf-search",
        allow_abbrev=False,
        description="Grid search of the dense CRF's bi_w, bi_xy_std and bi_rgb_std on the first val "
        "images, from network probabilities computed once. Other arguments (--config, --model.*, "
        "--data.*) configure the model and the data as for `deeplab validate`.",
    )
    parser.add_argument(
        "--ckpt_path",
        default=None,
        help="checkpoint of the trained model (a Lightning .ckpt, or best / last of the run)",
    )
    parser.add_argument(
        "--probabilities",
        default=None,
        metavar="DIR",
        help="read <DIR>/<name>.npy saved by `deeplab predict` instead of running the network",
    )
    parser.add_argument("--num_images", type=int, default=100, help="first N images of the split (default 100)")
    parser.add_argument("--split", default=None, help="split to search on (default: data.val_split)")
    for key, default in DEFAULT_GRID.items():
        parser.add_argument(
            f"--{key}",
            type=float,
            nargs="+",
            default=list(default),
            help=f"values to try (default: {' '.join(f'{v:g}' for v in default)})",
        )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--output", default=None, help="JSON of all results (default: beside the checkpoint, or ./crf-search.json)"
    )
    return parser


def _load_weights(module: Any, path: str) -> None:
    checkpoint = read_checkpoint(path)
    module.on_load_checkpoint(checkpoint)  # as Lightning does: learned CRF values reconciled
    module.load_state_dict(checkpoint["state_dict"])


def _format(result: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={result[key]:g}" for key in GRID_KEYS)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`deeplab crf-search`; returns the exit status."""
    from .cli import DeepLabCLI

    args, rest = _parser().parse_known_args(argv)
    if args.num_images < 1:
        print(f"error: --num_images must be >= 1, got {args.num_images}", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Initial weights load only when fitting, so nothing is fetched here; the checkpoint brings
    # the weights and, where the configuration does not say it, the architecture.
    cli = DeepLabCLI(args=[*rest, "--trainer.logger", "false"], run=False, ckpt_path=args.ckpt_path)
    module, datamodule = cli.model, cli.datamodule
    datamodule.prepare_data()
    split = args.split or datamodule.splits["val"]
    dataset = datamodule.source.dataset(split)
    num_classes = datamodule.num_classes
    try:
        if args.probabilities is not None:
            samples = samples_from_files(args.probabilities, dataset, args.num_images, num_classes, device)
            source = f"probabilities in {args.probabilities}"
        else:
            if cli.ckpt_path is not None:
                _load_weights(module, cli.ckpt_path)
            source = f"checkpoint {cli.ckpt_path}" if cli.ckpt_path else "random weights (no checkpoint)"
            samples = samples_from_model(module, dataset, args.num_images, device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    grid = {key: getattr(args, key) for key in GRID_KEYS}
    total = math.prod(len(v) for v in grid.values())
    base = module.crf.settings()
    print(f"CRF grid search: {len(samples)} image(s) of split {split!r}, {source}, {total} setting(s) on {device}")
    done = itertools.count(1)

    def show(result: dict[str, Any]) -> None:
        print(f"[{next(done)}/{total}] {_format(result)}  mIoU {100 * result['mIoU']:.2f}", flush=True)

    outcome = crf_grid_search(samples, num_classes, grid, base, device, on_result=show)
    best = outcome["best"]
    print(f"without CRF: mIoU {100 * outcome['baseline']:.2f}")
    gain = best["mIoU"] - outcome["baseline"]
    print(f"best: {_format(best)}  mIoU {100 * best['mIoU']:.2f} ({100 * gain:+.2f} over no CRF)")
    output = args.output
    if output is None:
        output = os.path.splitext(cli.ckpt_path)[0] + ".crf-search.json" if cli.ckpt_path else "crf-search.json"
    write_json(
        output, {"split": split, "num_images": len(samples), "source": source, "crf": base, "grid": grid, **outcome}
    )
    print(f"results saved to {output}")
    return 0
