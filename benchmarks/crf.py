"""Dense CRF timings: this project's CPU (and CUDA, when present) path against pydensecrf2,
same inputs, same run, 10 mean-field iterations, DeepLab v2 parameters.

    python benchmarks/crf.py                       # 500x375x21, 1024x512x21, 2048x1024x19
    python benchmarks/crf.py --threads 1           # ours on one thread only (per core)
    python benchmarks/crf.py --sizes 500x375x21 --repeats 7
    python benchmarks/crf.py --loaded              # beside 3 busy processes per core

Prints a markdown table of median wall-clock times (and how far the outputs agree), ready
for benchmarks/README.md: pydensecrf2 (single-threaded) and ours on one thread and on all
threads, interleaved run by run so that load from other jobs hits both alike; the iterations
next to their memory-traffic floor (bytes per iteration / this machine's copy bandwidth);
peak resident memory of a fresh process per case. CUDA rows time the lattice build and the
iterations separately with CUDA events and report peak GPU memory. Not a test: nothing here
asserts.

`--loaded` measures a loaded machine instead: N busy processes (default 3 per core, each
stopping by itself after --busy-seconds; `--busy 0` for the idle machine) run beside it while
pydensecrf2, ours on one thread, on all of torch's threads and at its default thread count
run in turn, for the pydensecrf drop-in with
pydensecrf's README parameters (600x400, 5 labels, 5 iterations) and for `dense_crf` with
DeepLab's (500x375x21, 10 iterations). The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from crf_peak_memory import ITERATIONS, PARAMS, run_pydensecrf
from lightning_deeplab.crf import unary_from_softmax
from lightning_deeplab.crf.mean_field import (
    KernelSettings,
    build_kernels,
    channels_first,
    dense_crf,
    mean_field,
    pixels_last,
)

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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def interleaved_medians(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median seconds of each function, run in turn within every repeat (after one warm-up
    round), so that load from other jobs hits them alike; also each one's last result."""
    results = {name: fn() for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def with_threads(threads: int, fn):
    def run():
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(saved)

    return run


def copy_bandwidth(threads: int, megabytes: int = 256, repeats: int = 9) -> float:
    """Bytes per second read plus written by a large tensor copy (far beyond the caches)."""
    src = torch.ones(megabytes * 2**18)
    dst = torch.empty_like(src)
    times = []
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved)
    return 2 * src.numel() * 4 / statistics.median(times[1:])


def filter_bytes(pixels: int, vertices: int, dim: int, channels: int, addend: bool) -> int:
    """Memory traffic of one float32 lattice filter if every row is read or written once per
    pass (blur neighbours found in cache): splat, d+1 blur passes, slice (with the scales)."""
    row = 4 * channels
    lists = pixels * (dim + 1) * 8  # offsets and weights
    splat = pixels * row + lists + vertices * row + pixels * 4
    blur = (dim + 1) * (2 * vertices * row + vertices * 8)
    slice_ = vertices * row + lists + pixels * row * (2 if addend else 1) + pixels * 4
    return splat + blur + slice_


def iteration_bytes(kernels, channels: int) -> int:
    """Memory traffic of one mean-field iteration (every filter adds onto the messages)."""
    total = 0
    for kernel in kernels:
        batch, pixels, _ = kernel.lattice.offsets.shape
        total += filter_bytes(batch * pixels, kernel.lattice.num_vertices, kernel.lattice.dim, channels, True)
    return total


def cpu_phases(unary: torch.Tensor, image: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of the lattice build (both kernels, with normalisation) and of the
    iterations, on the CPU."""
    builds, loops = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        kernels = build_kernels(image, KernelSettings(**PARAMS), torch.float32)
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
        kernels = build_kernels(image, KernelSettings(**PARAMS), torch.float32)
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


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference > 0 else "n/a"


def peak_memory(probs: torch.Tensor, image: np.ndarray) -> dict:
    """Peak resident memory (MiB) of a fresh process running pydensecrf2 or ours once:
    the whole process, and above what it held before the call (imports, inputs)."""
    peaks = {}
    with tempfile.TemporaryDirectory() as folder:
        np.save(os.path.join(folder, "probs.npy"), probs[0].numpy())
        np.save(os.path.join(folder, "image.npy"), image)
        for which in ("ref", "ours", "cli"):
            child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crf_peak_memory.py")
            out = subprocess.run(
                [sys.executable, child, which, folder], check=True, capture_output=True, text=True
            ).stdout.split()
            before, peak = float(out[-2]), float(out[-1])
            peaks[which] = (peak, peak - before)
    return peaks


def busy_processes(count: int, seconds: float) -> list[subprocess.Popen]:
    """`count` processes that each spin on one core for at most `seconds` (they stop by
    themselves if this script dies)."""
    spin = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    sum(range(10000))"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]


def readme_api_script(dcrf, unary: np.ndarray, image: np.ndarray, **options) -> np.ndarray:
    """pydensecrf's README usage, 5 iterations; `dcrf` is pydensecrf's module or ours."""
    classes = unary.shape[0]
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, classes, **options)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
    return np.array(crf.inference(5))


def loaded_main(args) -> None:
    """Ratios on a machine whose cores are all busy with other processes."""
    import pydensecrf.densecrf as ref_dcrf
    from pydensecrf.utils import unary_from_softmax as ref_unary

    import lightning_deeplab.pydensecrf.densecrf as our_dcrf

    busy = args.busy if args.busy is not None else 3 * (os.cpu_count() or 1)
    all_threads = torch.get_num_threads()
    api_image = make_photo(400, 600)
    api_unary = np.ascontiguousarray(ref_unary(make_probs(5, 400, 600)[0].numpy()))
    dl_image_np = make_photo(375, 500)
    dl_probs = make_probs(21, 375, 500)
    dl_unary = unary_from_softmax(dl_probs)
    dl_image = torch.from_numpy(dl_image_np).permute(2, 0, 1)[None].contiguous()
    cases = {
        "pydensecrf API, 600x400x5, README parameters, 5 iterations": {
            "pydensecrf2": lambda: readme_api_script(ref_dcrf, api_unary, api_image),
            "ours 1T": lambda: readme_api_script(our_dcrf, api_unary, api_image, threads=1),
            "ours default": lambda: readme_api_script(our_dcrf, api_unary, api_image),
            "ours all": lambda: readme_api_script(our_dcrf, api_unary, api_image, threads=all_threads),
        },
        "dense_crf, 500x375x21, DeepLab parameters, 10 iterations": {
            "pydensecrf2": lambda: run_pydensecrf(dl_probs[0].numpy(), dl_image_np),
            "ours 1T": lambda: dense_crf(dl_unary, dl_image, threads=1, **PARAMS),
            "ours default": lambda: dense_crf(dl_unary, dl_image, **PARAMS),
            "ours all": lambda: dense_crf(dl_unary, dl_image, threads=all_threads, **PARAMS),
        },
    }
    print(f"# Dense CRF on a loaded machine, {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(f"load average before the busy processes: {os.getloadavg()}")
    procs = busy_processes(busy, args.busy_seconds)
    try:
        time.sleep(2.0)  # let the load settle
        print(f"{busy} busy processes; medians of {args.repeats} interleaved runs\n")
        print(
            f"| case | pydensecrf2 | ours 1T | ours {all_threads}T | ours default | default / 1T speed "
            f"| default / {all_threads}T speed | default / pydensecrf2 speed | load |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name, fns in cases.items():
            medians, _ = interleaved_medians(fns, args.repeats)
            ref, one, default = medians["pydensecrf2"], medians["ours 1T"], medians["ours default"]
            every = medians["ours all"]
            print(
                f"| {name} | {ref:.3f} s | {one:.3f} s | {every:.3f} s | {default:.3f} s | {one / default:.2f}x "
                f"| {every / default:.2f}x | {ref / default:.2f}x | {os.getloadavg()[0]:.1f} |",
                flush=True,
            )
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="*", default=["500x375x21", "1024x512x21", "2048x1024x19"], help="WIDTHxHEIGHTxCLASSES"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA rows")
    parser.add_argument(
        "--threads", type=int, default=None, help="time ours on this many threads only (default: on 1 and on all)"
    )
    parser.add_argument(
        "--memory-sizes",
        nargs="*",
        default=["2048x1024x19"],
        help="sizes whose peak resident memory is measured (a process per case, pydensecrf2, ours in "
        "process and `deeplab crf`; 4000x3000x21 takes minutes per case and ~12 GB)",
    )
    parser.add_argument(
        "--loaded", action="store_true", help="measure beside busy processes (see the module docstring)"
    )
    parser.add_argument("--busy", type=int, default=None, help="busy processes for --loaded (default: 3 per core)")
    parser.add_argument("--busy-seconds", type=float, default=600.0, help="each busy process stops after this long")
    args = parser.parse_args()
    if args.loaded:
        loaded_main(args)
        return
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")

    use_cuda = torch.cuda.is_available() and not args.no_cuda
    all_threads = torch.get_num_threads()
    thread_counts = [args.threads] if args.threads is not None else sorted({1, all_threads})
    bandwidth = {t: copy_bandwidth(t) for t in thread_counts}
    print(f"# Dense CRF benchmark, {datetime.date.today()}")
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if use_cuda else "")
    )
    print(
        "copy bandwidth (read + write, 256 MiB): "
        + ", ".join(f"{t} thread{'s' if t > 1 else ''} {bandwidth[t] / 1e9:.1f} GB/s" for t in thread_counts)
    )
    print(
        f"{ITERATIONS} iterations, DeepLab v2 parameters {PARAMS}; medians of {args.repeats} interleaved "
        f"wall-clock runs; pydensecrf2 is single-threaded\n"
    )
    header = "| size | pydensecrf2 |"
    for t in thread_counts:
        header += f" ours {t}T | speed-up {t}T | build {t}T | iterations {t}T (floor) |"
    header += " MB / iteration | max abs diff | argmax agree |"
    if use_cuda:
        header += " CUDA total | CUDA build | CUDA iterations | CUDA peak MiB | ratio vs pydensecrf2 |"
    if args.sizes:
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
    for size in args.sizes:
        width, height, classes = (int(v) for v in size.split("x"))
        image_np = make_photo(height, width)
        probs = make_probs(classes, height, width)
        unary = unary_from_softmax(probs)
        image = torch.from_numpy(image_np).permute(2, 0, 1)[None].contiguous()

        fns = {"ref": lambda: run_pydensecrf(probs[0].numpy(), image_np)}
        for t in thread_counts:
            fns[t] = with_threads(t, lambda: dense_crf(unary, image, iterations=ITERATIONS, **PARAMS))
        medians, results = interleaved_medians(fns, args.repeats)
        q_ref = results["ref"]
        q = results[thread_counts[-1]][0].numpy()
        diff = float(np.abs(q - q_ref).max())
        agree = float((q.argmax(0) == q_ref.argmax(0)).mean())
        kernels = build_kernels(image, KernelSettings(**PARAMS), torch.float32)
        traffic = iteration_bytes(kernels, classes)
        row = f"| {width}x{height}x{classes} | {medians['ref']:.3f} s |"
        for t in thread_counts:
            build_time, loop_time = with_threads(t, lambda: cpu_phases(unary, image, args.repeats))()
            floor = ITERATIONS * traffic / bandwidth[t]
            row += (
                f" {medians[t]:.3f} s | {medians['ref'] / medians[t]:.2f}x | {build_time:.3f} s "
                f"| {loop_time:.3f} s ({floor:.3f} s) |"
            )
        row += f" {traffic / 1e6:.0f} | {diff:.1e} | {100 * agree:.4f}% |"
        if use_cuda:
            gpu = cuda_row(unary, image, args.repeats)
            gpu_diff = float(np.abs(gpu["q"][0].numpy() - q_ref).max())
            row += (
                f" {1e3 * gpu['total']:.2f} ms (diff {gpu_diff:.1e}) | {1e3 * gpu['build']:.2f} ms "
                f"| {1e3 * gpu['iterations']:.2f} ms | {gpu['peak_mib']:.0f} | {medians['ref'] / gpu['total']:.0f}x |"
            )
        print(row, flush=True)

    if args.memory_sizes:
        print(
            "\n| size | peak resident, pydensecrf2 | peak resident, ours (1 thread) | ours / pydensecrf2 "
            "| above imports and inputs: pydensecrf2 | ours | ours / pydensecrf2 "
            "| `deeplab crf` (float16 input) | `deeplab crf` / pydensecrf2 |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
    for size in args.memory_sizes:
        width, height, classes = (int(v) for v in size.split("x"))
        peaks = peak_memory(make_probs(classes, height, width), make_photo(height, width))
        (ref_peak, ref_delta), (our_peak, our_delta) = peaks["ref"], peaks["ours"]
        cli_peak = peaks["cli"][0]
        print(
            f"| {width}x{height}x{classes} | {ref_peak:.0f} MiB | {our_peak:.0f} MiB | {ratio(our_peak, ref_peak)} "
            f"| {ref_delta:.0f} MiB | {our_delta:.0f} MiB | {ratio(our_delta, ref_delta)} "
            f"| {cli_peak:.0f} MiB | {ratio(cli_peak, ref_peak)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
