"""Seeds one bug at a time into the CUDA kernels, their launch helper and their host code, and
checks that `make test-cuda-emulated` fails on each (run by hand, not in CI: a rebuild and a
sanitized test run per bug, minutes each). Every file is restored afterwards, whatever happens.

    .venv/bin/python tests/cuda_emulation/mutation_check.py [--only NAME ...] [--list]

Prints one line per bug (caught or MISSED, by what, in how many seconds) and exits 1 if any
was missed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CUDA = "csrc/cuda"

# name: (file, the line as it is, the line with the bug, the kind of bug)
MUTATIONS = {
    "locate past the end": (
        f"{CUDA}/build_lattice_cuda.cu",
        "  if (p >= P) return;",
        "  if (p > P) return;",
        "a thread past the end",
    ),
    "lost out-of-range flag": (f"{CUDA}/build_lattice_cuda.cu", "    atomicExch(out_of_range, 1);", "", "a lost write"),
    "racy hash insert": (
        f"{CUDA}/build_lattice_cuda.cu",
        "    const int32_t owner = atomicCAS(table + slot, -1, static_cast<int32_t>(e));",
        "    const int32_t owner = table[slot];\n    if (owner == -1) table[slot] = static_cast<int32_t>(e);",
        "a non-atomic read-modify-write",
    ),
    "keep last entry": (
        f"{CUDA}/build_lattice_cuda.cu",
        "  atomicMin(table + slot_of_entry[e], static_cast<int32_t>(e));",
        "  atomicExch(table + slot_of_entry[e], static_cast<int32_t>(e));",
        "a wrong atomic",
    ),
    "first flag inverted": (
        f"{CUDA}/build_lattice_cuda.cu",
        "  is_first[e] = table[slot_of_entry[e]] == e ? 1 : 0;",
        "  is_first[e] = table[slot_of_entry[e]] != e ? 1 : 0;",
        "a wrong comparison",
    ),
    "vertex entry not written": (
        f"{CUDA}/build_lattice_cuda.cu",
        "  if (is_first[e]) vertex_entry[vertex] = static_cast<int32_t>(e);",
        "",
        "a missing fill",
    ),
    "second neighbour not written": (
        f"{CUDA}/build_lattice_cuda.cu",
        "        neighbors[(static_cast<int64_t>(j) * M + u) * 2 + 1] = static_cast<int32_t>(v);",
        "",
        "a lost write",
    ),
    "neighbour index off by one": (
        f"{CUDA}/build_lattice_cuda.cu",
        "        neighbors[(static_cast<int64_t>(j) * M + v) * 2] = static_cast<int32_t>(u);",
        "        neighbors[(static_cast<int64_t>(j) * M + v + 1) * 2] = static_cast<int32_t>(u);",
        "an index off by one",
    ),
    "iota off by one": (
        f"{CUDA}/build_lattice_cuda.cu",
        "  if (i < n) out[i] = static_cast<int32_t>(i);",
        "  if (i < n) out[i] = static_cast<int32_t>(i + 1);",
        "an index off by one",
    ),
    "splat list end": (
        f"{CUDA}/build_lattice_cuda.cu",
        "  if (i == E - 1) splat_ptr[M] = static_cast<int32_t>(E);",
        "  if (i == E - 1) splat_ptr[M] = static_cast<int32_t>(E - 1);",
        "a wrong constant",
    ),
    "signed overflow": (
        f"{CUDA}/build_lattice_cuda.cu",
        "  splat_pixel[i] = e / (d + 1);",
        "  splat_pixel[i] = e * 65536 * 65536 / (d + 1) + e / (d + 1);",
        "undefined behaviour",
    ),
    "vertex count": (
        f"{CUDA}/build_lattice_cuda.cu",
        "  vertex_counts[b] = end - start;",
        "  vertex_counts[b] = end - start - 1;",
        "a wrong constant",
    ),
    "splat one entry too many": (
        f"{CUDA}/lattice_filter_cuda.cu",
        "  for (int32_t k = ptrs.splat_ptr[v]; k < ptrs.splat_ptr[v + 1]; ++k) {",
        "  for (int32_t k = ptrs.splat_ptr[v]; k <= ptrs.splat_ptr[v + 1]; ++k) {",
        "an index off by one",
    ),
    "blur weight": (
        f"{CUDA}/lattice_filter_cuda.cu",
        "  dst[(v + 1) * C + c] = lattice::add_rn(src[(v + 1) * C + c], lattice::mul_rn(T(0.5), sides));",
        "  dst[(v + 1) * C + c] = lattice::add_rn(src[(v + 1) * C + c], lattice::mul_rn(T(0.25), sides));",
        "a wrong constant",
    ),
    "slice drops a vertex": (
        f"{CUDA}/lattice_filter_cuda.cu",
        "  for (int r = 0; r < d1; ++r) {",
        "  for (int r = 0; r < d; ++r) {",
        "an index off by one",
    ),
    "softmax past the end": (
        f"{CUDA}/lattice_filter_cuda.cu",
        "  if (p >= P) return;\n  lattice::softmax_row",
        "  lattice::softmax_row",
        "a thread past the end",
    ),
    "missing zero row": (
        f"{CUDA}/lattice_filter_cuda.cu",
        "  status = cudaMemsetAsync(ptrs.buf_b, 0, C * sizeof(T), stream);",
        "  status = cudaSuccess;",
        "a missing fill",
    ),
    "one blur axis short": (
        f"{CUDA}/lattice_filter_cuda.cu",
        "  for (int step = 0; step <= d && M > 0; ++step) {",
        "  for (int step = 0; step < d && M > 0; ++step) {",
        "an index off by one",
    ),
    "launch drops the last block": (
        f"{CUDA}/launch.cuh",
        "  const int64_t blocks = (threads - 1) / kThreads + 1;",
        "  const int64_t blocks = threads / kThreads;",
        "a wrong grid",
    ),
    "neighbours not set to -1": (
        f"{CUDA}/lattice_ops.cpp",
        "  at::Tensor neighbors = at::full({d1, M, 2}, -1, int_opts);",
        "  at::Tensor neighbors = context.empty({d1, M, 2}, int_opts);",
        "a missing fill",
    ),
    "vertex count off by one": (
        f"{CUDA}/lattice_ops.cpp",
        "  const int64_t M = static_cast<int64_t>(tail_p[0]) + tail_p[1];",
        "  const int64_t M = static_cast<int64_t>(tail_p[0]);",
        "an index off by one",
    ),
    "sort key bits": (
        f"{CUDA}/lattice_ops.cpp",
        "    const int key_bits = bits_for(M);",
        "    const int key_bits = bits_for(M) - 1;",
        "a wrong constant",
    ),
    "scratch too small": (
        f"{CUDA}/lattice_ops.cpp",
        "    at::Tensor temp = scratch(context, bytes, features);\n    check(exclusive_sum(",
        "    at::Tensor temp = scratch(context, bytes / 2, features);\n    check(exclusive_sum(",
        "a buffer too small",
    ),
    "lattice buffer a row short": (
        f"{CUDA}/lattice_ops.cpp",
        "  at::Tensor buf_a = context.empty({M + 1, C}, in.values.options());",
        "  at::Tensor buf_a = context.empty({M, C}, in.values.options());",
        "a buffer too small",
    ),
}


def run_check() -> tuple[bool, str, float]:
    """`make test-cuda-emulated` without reinstalling the package (the CPU reference stays the
    unmutated one), stopping at the first failing test. Returns (failed, what failed, seconds)."""
    env = dict(os.environ, PYTEST_ADDOPTS="-x")
    start = time.time()
    try:
        result = subprocess.run(
            ["make", "-o", ".venv/.built", "test-cuda-emulated"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    except subprocess.TimeoutExpired:
        return True, "timed out (a hang)", time.time() - start
    seconds = time.time() - start
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return False, "", seconds
    for marker, what in (
        ("AddressSanitizer", "AddressSanitizer"),
        ("runtime error:", "UBSan"),
        ("ThreadSanitizer", "ThreadSanitizer"),
        ("building the CUDA emulation", "the build"),
        ("tsan driver: FAILED", "the driver's checks"),
    ):
        if marker in output:
            return True, what, seconds
    failed = [line.split(" - ")[0] for line in output.splitlines() if line.startswith("FAILED ")]
    if failed:
        return True, f"the tests ({failed[0].removeprefix('FAILED ')})", seconds
    return True, "make, ending with:\n    " + "\n    ".join(output.strip().splitlines()[-6:]), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="names of the bugs to seed (default: all)")
    parser.add_argument("--list", action="store_true", help="list the bugs and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (path, _, _, kind) in MUTATIONS.items():
            print(f"{name}: {kind} in {path}")
        return 0
    names = args.only or list(MUTATIONS)
    unknown = [name for name in names if name not in MUTATIONS]
    if unknown:
        parser.error(f"unknown bugs {unknown}; --list names them")
    missed = []
    for name in names:
        path, before, after, kind = MUTATIONS[name]
        source = ROOT / path
        original = source.read_text()
        if original.count(before) != 1:
            print(f"{name}: the line to change is not in {path} exactly once; update this script")
            missed.append(name)
            continue
        try:
            source.write_text(original.replace(before, after))
            failed, what, seconds = run_check()
        finally:
            source.write_text(original)
        print(f"{name} ({kind}): {'caught by ' + what if failed else 'MISSED'} in {seconds:.0f} s", flush=True)
        if not failed:
            missed.append(name)
    print(f"{len(names) - len(missed)} of {len(names)} seeded bugs caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
