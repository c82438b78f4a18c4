"""Dense CRF over a dataset on the whole machine: images per second of pydensecrf2 run one
process per core (the usual way, e.g. joblib with n_jobs = cores), of ours the same way (one
thread each), and of ours in one process on all cores with batches of images (parallel over
images), on the same inputs, one after the other, repeated in turn.

    python benchmarks/crf_dataset.py [--size 500x375x21] [--images 16] [--batch 4] [--repeats 3]

Not a test: report the ratios and the machine, and the load average it ran at.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crf import make_photo, make_probs  # noqa: E402
from crf_peak_memory import ITERATIONS, PARAMS, run_pydensecrf  # noqa: E402

from lightning_deeplab.crf import dense_crf, unary_from_softmax  # noqa: E402


def inputs(size: str, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    width, height, classes = (int(v) for v in size.split("x"))
    photo = make_photo(height, width)
    return [(make_probs(classes, height, width, seed)[0].numpy(), photo) for seed in range(count)]


def ours_one(sample: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    probs, photo = sample
    unary = unary_from_softmax(torch.from_numpy(probs)[None])
    image = torch.from_numpy(photo).permute(2, 0, 1)[None]
    return dense_crf(unary, image, iterations=ITERATIONS, **PARAMS)[0].numpy()


def pydensecrf_one(sample: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return run_pydensecrf(*sample)


def _one_thread() -> None:
    torch.set_num_threads(1)


def per_process(fn, samples, processes: int) -> float:
    """Seconds for all samples, one process per core (started before the clock)."""
    with multiprocessing.get_context("spawn").Pool(processes, initializer=_one_thread) as pool:
        pool.map(fn, samples[:processes])  # warm-up: imports, first-call set-up
        start = time.perf_counter()
        pool.map(fn, samples, chunksize=1)
        return time.perf_counter() - start


def batched(samples, batch: int, threads: int) -> float:
    """Seconds for all samples in one process on ``threads`` threads, ``batch`` images a call."""
    torch.set_num_threads(threads)
    probs = torch.stack([torch.from_numpy(p) for p, _ in samples])
    images = torch.stack([torch.from_numpy(photo).permute(2, 0, 1) for _, photo in samples])
    unary = unary_from_softmax(probs)
    dense_crf(unary[:batch], images[:batch], iterations=ITERATIONS, **PARAMS)  # warm-up
    start = time.perf_counter()
    for first in range(0, len(samples), batch):
        dense_crf(unary[first : first + batch], images[first : first + batch], iterations=ITERATIONS, **PARAMS)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="500x375x21", help="WIDTHxHEIGHTxCLASSES")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    samples = inputs(args.size, args.images)
    times: dict[str, list[float]] = {
        "pydensecrf2, a process per core": [],
        "ours, a process per core": [],
        f"ours, one process, batches of {args.batch}": [],
    }
    load = []
    for _ in range(args.repeats):
        load.append(os.getloadavg()[0])
        times["pydensecrf2, a process per core"].append(per_process(pydensecrf_one, samples, cores))
        times["ours, a process per core"].append(per_process(ours_one, samples, cores))
        times[f"ours, one process, batches of {args.batch}"].append(batched(samples, args.batch, cores))
    reference = statistics.median(times["pydensecrf2, a process per core"])
    print(
        f"{args.images} images of {args.size}, {ITERATIONS} iterations, {cores} cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"load average {min(load):.1f}-{max(load):.1f}, medians of {args.repeats}"
    )
    print("| way | images/s | vs pydensecrf2 |\n|---|---|---|")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"| {name} | {args.images / seconds:.2f} | {reference / seconds:.2f}x |")


if __name__ == "__main__":
    main()
