"""Dense CRF timings: this project's CPU (and CUDA, when present) path against pydensecrf2,
same inputs, same run, 10 mean-field iterations, DeepLab v2 parameters.

    python benchmarks/crf.py                       # 500x375x21, 1024x512x21, 2048x1024x19
    python benchmarks/crf.py --sizes 500x375x21 --repeats 7

Prints a markdown table of median wall-clock times (and how far the outputs agree), ready
for benchmarks/README.md. CUDA rows time the lattice build and the iterations separately
with CUDA events and report peak GPU memory. Not a test: nothing here asserts.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from lightning_deeplab.crf import unary_from_softmax
from lightning_deeplab.crf.mean_field import build_kernels, channels_first, dense_crf, mean_field, pixels_last

# DeepLab v2 ResNet-101: pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std
PARAMS = dict(pos_w=3.0, pos_xy_std=1.0, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0)
ITERATIONS = 10
PHOTOS = ("astronaut", "coffee", "rocket", "chelsea")


def make_photo(height: int, width: int) -> np.ndarray:
    """A photo collage from scikit-image, resized to [height, width, 3] uint8 (C-contiguous)."""
    import skimage.data

    tiles = []
    for name in PHOTOS:
        image = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]))
        image = image.permute(2, 0, 1)[None].float()
        tiles.append(F.interpolate(image, size=(height // 2 + 1, width // 2 + 1), mode="bilinear", align_corners=False))
    top = torch.cat(tiles[:2], dim=3)
    bottom = torch.cat(tiles[2:], dim=3)
    collage = torch.cat([top, bottom], dim=2)[..., :height, :width]
    return np.ascontiguousarray(collage[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy())


def make_probs(classes: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """DeepLab-like softmax [1, C, H, W]: a 1/8-resolution label map, upsampled, noised."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (1, (height + 7) // 8, (width + 7) // 8), generator=gen)
    scores = F.one_hot(coarse, classes).permute(0, 3, 1, 2).float() * 4.0
    scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
    return torch.softmax(scores + 1.5 * torch.randn(scores.shape, generator=gen), dim=1)


def run_pydensecrf(probs: np.ndarray, image: np.ndarray) -> np.ndarray:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax as ref_unary

    classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(ref_unary(probs)))
    crf.addPairwiseGaussian(sxy=PARAMS["pos_xy_std"], compat=PARAMS["pos_w"])
    crf.addPairwiseBilateral(sxy=PARAMS["bi_xy_std"], srgb=PARAMS["bi_rgb_std"], rgbim=image, compat=PARAMS["bi_w"])
    return np.array(crf.inference(ITERATIONS), dtype=np.float32).reshape(classes, height, width)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_time(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up (allocator, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def cpu_phases(unary: torch.Tensor, image: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of the lattice build (both kernels, with normalisation) and of the
    iterations, on the CPU."""
    builds, loops = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        kernels = build_kernels(image, normalization="symmetric", dtype=torch.float32, **PARAMS)
        middle = time.perf_counter()
        mean_field(-pixels_last(unary), kernels, ITERATIONS)
        end = time.perf_counter()
        builds.append(middle - start)
        loops.append(end - middle)
    return statistics.median(builds[1:]), statistics.median(loops[1:])


def cuda_row(unary: torch.Tensor, image: torch.Tensor, repeats: int) -> dict:
    unary, image = unary.cuda(), image.cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    builds, loops, totals = [], [], []
    for _ in range(repeats + 1):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        events[0].record()
        kernels = build_kernels(image, normalization="symmetric", dtype=torch.float32, **PARAMS)
        events[1].record()
        q = mean_field(-pixels_last(unary), kernels, ITERATIONS)
        events[2].record()
        torch.cuda.synchronize()
        builds.append(events[0].elapsed_time(events[1]) / 1e3)
        loops.append(events[1].elapsed_time(events[2]) / 1e3)
        start = time.perf_counter()
        dense_crf(unary, image, iterations=ITERATIONS, **PARAMS)
        torch.cuda.synchronize()
        totals.append(time.perf_counter() - start)
    return {
        "build": statistics.median(builds[1:]),
        "iterations": statistics.median(loops[1:]),
        "total": statistics.median(totals[1:]),
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
        "q": channels_first(q, *image.shape[2:]).cpu(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["500x375x21", "1024x512x21", "2048x1024x19"],
                        help="WIDTHxHEIGHTxCLASSES")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--ref-repeats", type=int, default=3, help="timed pydensecrf2 runs (median)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA rows")
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available() and not args.no_cuda
    print(f"# Dense CRF benchmark, {datetime.date.today()}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if use_cuda else ""))
    print(f"{ITERATIONS} iterations, DeepLab v2 parameters {PARAMS}; median of {args.repeats} "
          f"(pydensecrf2: {args.ref_repeats}) wall-clock runs\n")
    header = ("| size | pydensecrf2 (1 core) | ours CPU | ratio | CPU build | CPU iterations "
              "| max abs diff | argmax agree |")
    if use_cuda:
        header += " CUDA total | CUDA build | CUDA iterations | CUDA peak MiB | ratio vs pydensecrf2 |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for size in args.sizes:
        width, height, classes = (int(v) for v in size.split("x"))
        image_np = make_photo(height, width)
        probs = make_probs(classes, height, width)
        unary = unary_from_softmax(probs)
        image = torch.from_numpy(image_np).permute(2, 0, 1)[None].contiguous()

        ref_time, q_ref = median_time(lambda: run_pydensecrf(probs[0].numpy(), image_np), args.ref_repeats)
        ours_time, q = median_time(lambda: dense_crf(unary, image, iterations=ITERATIONS, **PARAMS), args.repeats)
        build_time, loop_time = cpu_phases(unary, image, args.repeats)
        q = q[0].numpy()
        diff = float(np.abs(q - q_ref).max())
        agree = float((q.argmax(0) == q_ref.argmax(0)).mean())
        row = (f"| {width}x{height}x{classes} | {ref_time:.3f} s | {ours_time:.3f} s | {ref_time / ours_time:.2f}x "
               f"| {build_time:.3f} s | {loop_time:.3f} s | {diff:.1e} | {100 * agree:.4f}% |")
        if use_cuda:
            gpu = cuda_row(unary, image, args.repeats)
            gpu_diff = float(np.abs(gpu["q"][0].numpy() - q_ref).max())
            row += (f" {1e3 * gpu['total']:.2f} ms (diff {gpu_diff:.1e}) | {1e3 * gpu['build']:.2f} ms "
                    f"| {1e3 * gpu['iterations']:.2f} ms | {gpu['peak_mib']:.0f} | {ref_time / gpu['total']:.0f}x |")
        print(row, flush=True)


if __name__ == "__main__":
    main()
