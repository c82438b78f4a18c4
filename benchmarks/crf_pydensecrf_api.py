"""The pydensecrf-compatible API (`lightning_deeplab.pydensecrf`) against pydensecrf2 itself:
the same script, the same inputs, the same run; only the import differs.

    python benchmarks/crf_pydensecrf_api.py                       # 500x375x21 photo, 96^3 x 4 volume
    python benchmarks/crf_pydensecrf_api.py --sizes 1024x512x21 --volume 64 --repeats 5

Rows: a photo through `DenseCRF2D` (pydensecrf's README usage: addPairwiseGaussian +
addPairwiseBilateral) and a 3-D volume through the generic `DenseCRF` with
`create_pairwise_gaussian(sdims=(1, 1, 1))` and an intensity bilateral
(`create_pairwise_bilateral(chdim=-1)`), 10 iterations. On a GPU machine the same calls run
again with `device="cuda"`. Prints a markdown table of median wall-clock times; not a test.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crf import cpu_name, interleaved_medians, make_photo, make_probs  # noqa: E402  (benchmarks/crf.py)

ITERATIONS = 10


def photo_script(dcrf, utils, probs: np.ndarray, image: np.ndarray, **device) -> np.ndarray:
    """pydensecrf's README usage; `dcrf`/`utils` are pydensecrf's modules or ours."""
    classes, height, width = probs.shape
    d = dcrf.DenseCRF2D(width, height, classes, **device)
    d.setUnaryEnergy(utils.unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
    return np.array(d.inference(ITERATIONS))


def volume_script(dcrf, utils, probs: np.ndarray, volume: np.ndarray, **device) -> np.ndarray:
    """A generic DenseCRF over a volume: a 3-D smoothness kernel and an intensity bilateral."""
    classes = probs.shape[0]
    d = dcrf.DenseCRF(volume.size, classes, **device)
    d.setUnaryEnergy(utils.unary_from_softmax(probs))
    d.addPairwiseEnergy(utils.create_pairwise_gaussian(sdims=(1, 1, 1), shape=volume.shape), compat=3)
    d.addPairwiseEnergy(utils.create_pairwise_bilateral(sdims=(3, 3, 3), schan=(10,), img=volume, chdim=-1), compat=5)
    return np.array(d.inference(ITERATIONS))


def make_volume(size: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like intensity volume [size]^3 (smooth blobs plus noise, float32) and noisy
    class probabilities [C, size, size, size] from a coarse random label volume."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (1,) + ((size + 7) // 8,) * 3, generator=gen)
    onehot = F.one_hot(coarse, classes).permute(0, 4, 1, 2, 3).float()
    scores = F.interpolate(onehot * 4.0, size=(size,) * 3, mode="trilinear", align_corners=False)
    probs = torch.softmax(scores + 1.5 * torch.randn(scores.shape, generator=gen), dim=1)[0]
    intensity = F.interpolate(torch.rand(1, 1, 6, 6, 6, generator=gen) * 200, size=(size,) * 3, mode="trilinear")
    intensity = intensity[0, 0] + 10 * torch.randn(size, size, size, generator=gen)
    return probs.numpy(), intensity.numpy().astype(np.float32)


def compare(q: np.ndarray, q_ref: np.ndarray) -> str:
    return f"{float(np.abs(q - q_ref).max()):.1e} | {100 * float((q.argmax(0) == q_ref.argmax(0)).mean()):.4f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["500x375x21"], help="photo WIDTHxHEIGHTxCLASSES")
    parser.add_argument("--volume", type=int, default=96, help="volume edge (points: edge^3), 0 to skip")
    parser.add_argument("--volume-classes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the device='cuda' runs")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import pydensecrf.densecrf as ref_dcrf
    import pydensecrf.utils as ref_utils

    import lightning_deeplab.pydensecrf.densecrf as dcrf
    import lightning_deeplab.pydensecrf.utils as utils

    use_cuda = torch.cuda.is_available() and not args.no_cuda
    print(f"# pydensecrf API benchmark, {datetime.date.today()}")
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if use_cuda else "")
    )
    print(
        f"{ITERATIONS} iterations; medians of {args.repeats} wall-clock runs, pydensecrf2 and ours in "
        "turn within each repeat, each from the NumPy inputs to the NumPy marginals (unary, "
        "features, lattices, inference)\n"
    )
    header = "| input | pydensecrf2 (1 core) | ours, CPU | ratio | max abs diff | argmax agree |"
    if use_cuda:
        header += " ours, device='cuda' | ratio |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))

    cases = []
    for size in args.sizes:
        width, height, classes = (int(v) for v in size.split("x"))
        inputs = (make_probs(classes, height, width)[0].numpy(), make_photo(height, width))
        cases.append((f"photo {width}x{height}, C={classes}, DenseCRF2D", photo_script, inputs))
    if args.volume:
        inputs = make_volume(args.volume, args.volume_classes)
        cases.append((f"volume {args.volume}^3, C={args.volume_classes}, DenseCRF d=3 + d=4", volume_script, inputs))

    for label, script, inputs in cases:
        # In turn within every repeat, so that load from other jobs hits both alike.
        runs = {
            "ref": partial(script, ref_dcrf, ref_utils, *inputs),
            "ours": partial(script, dcrf, utils, *inputs),
        }
        if use_cuda:
            runs["cuda"] = partial(script, dcrf, utils, *inputs, device="cuda")
        times, outputs = interleaved_medians(runs, args.repeats)
        ref_time, ours_time, q_ref = times["ref"], times["ours"], outputs["ref"]
        row = f"| {label} | {ref_time:.3f} s | {ours_time:.3f} s | {ref_time / ours_time:.2f}x | {compare(outputs['ours'], q_ref)} |"
        if use_cuda:
            gpu_time, q_gpu = times["cuda"], outputs["cuda"]
            row += f" {1e3 * gpu_time:.1f} ms (diff {float(np.abs(q_gpu - q_ref).max()):.1e}) | {ref_time / gpu_time:.0f}x |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
