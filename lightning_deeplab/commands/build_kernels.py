"""`deeplab build-kernels`: compiles the CRF kernels ahead of time into the kernel cache, so that
processes on machines without a compiler (a container image, cluster nodes) load them instead of
compiling on first use.

    deeplab build-kernels                          # CPU, and CUDA when torch and a toolkit have it
    deeplab build-kernels --cuda-arch "8.0;9.0"    # for these GPU architectures
    deeplab build-kernels --cache-dir /opt/deeplab-kernels   # then LIGHTNING_DEEPLAB_KERNEL_DIR=/opt/deeplab-kernels
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Optional, Sequence


def _parser() -> argparse.ArgumentParser:
    from ..crf._build import DEFAULT_CUDA_ARCH_LIST, KERNEL_DIR_ENV

    parser = argparse.ArgumentParser(
        prog="deeplab build-kernels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cuda-arch",
        help=f'GPU architectures to compile for, e.g. "8.0;8.6;9.0" (default: the visible GPUs, else {DEFAULT_CUDA_ARCH_LIST})',
    )
    parser.add_argument("--cpu-only", action="store_true", help="the CPU kernels only")
    parser.add_argument(
        "--cache-dir", help=f"build into this folder instead of the kernel cache (set {KERNEL_DIR_ENV} to it to use it)"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`deeplab build-kernels`; returns the exit status."""
    args = _parser().parse_args(argv)
    from ..crf import _build as build
    from ..crf._ops import build_kernels, cached_build

    if args.cpu_only and args.cuda_arch:
        print("error: --cuda-arch and --cpu-only contradict each other", file=sys.stderr)
        return 2
    if args.cache_dir:
        os.environ[build.KERNEL_DIR_ENV] = os.path.abspath(os.path.expanduser(args.cache_dir))
    with_cuda = not args.cpu_only and (args.cuda_arch is not None or build.want_cuda())
    cached = cached_build(with_cuda)
    if cached is not None and (args.cuda_arch is None or cached[1].get("cuda_arch_list") == args.cuda_arch):
        print(f"already built for these sources and this torch: {cached[0]}")
    else:
        build_kernels(with_cuda, args.cuda_arch)
        library, stamp = cached_build(with_cuda)
        archs = (
            f" for CUDA {stamp['cuda']}, architectures {stamp['cuda_arch_list'] or 'of the visible GPUs'}"
            if with_cuda
            else ""
        )
        print(
            f"built the {'CPU and CUDA' if with_cuda else 'CPU'} CRF kernels{archs} in {stamp['seconds']:.0f} s: {library}"
        )
    if importlib.util.find_spec("lightning_deeplab._C") is not None:
        print("note: this install also has lightning_deeplab._C (built with the package), which is loaded first")
    if args.cache_dir:
        print(f"processes load them when {build.KERNEL_DIR_ENV}={os.environ[build.KERNEL_DIR_ENV]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
