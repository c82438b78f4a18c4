"""How the `lightning_deeplab._C` extension is compiled: one description used by both
`setup.py` (ahead of time) and the just-in-time fallback in `_ops.py`.

Imports nothing but the standard library and torch, so setup.py can load this file by path.
"""

from __future__ import annotations

import glob
import os
import sys

EXTENSION_NAME = "lightning_deeplab._C"
#: GPU architectures of a build on a machine without a GPU (the one default; the Makefile and
#: setup.py do not guess). Each one adds about a minute of nvcc; release builds set
#: TORCH_CUDA_ARCH_LIST to every architecture they ship for (e.g. "8.0;8.6;8.9;9.0").
DEFAULT_CUDA_ARCH_LIST = "9.0"
# The kernel sources live inside the package, so wheels and sdists carry them for the JIT build.
CSRC_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "csrc"))


def _default_cuda_home() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    # torch guesses CUDA_HOME from the nvcc on PATH, which may point at /usr/local and fail to link.
    if os.path.isfile("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return CUDA_HOME


def want_cuda() -> bool:
    """Build the CUDA sources when torch is a CUDA build and a toolkit is present, or FORCE_CUDA=1."""
    import torch

    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    if os.environ.get("FORCE_CPU", "0") == "1":
        return False
    return torch.version.cuda is not None and _default_cuda_home() is not None


def prepare_cuda_environment() -> None:
    """Set CUDA_HOME and TORCH_CUDA_ARCH_LIST when unset, so a GPU-less machine can build."""
    home = _default_cuda_home()
    if home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = home
    if home:
        # cpp_extension reads CUDA_HOME once, at import, and may have guessed /usr/local
        # from the nvcc on PATH (no headers, no libcudart there): point it at the toolkit.
        import torch.utils.cpp_extension as cpp_extension

        cpp_extension.CUDA_HOME = home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        import torch

        if torch.cuda.is_available():
            return  # cpp_extension targets the visible GPUs
        # Without a GPU cpp_extension cannot guess.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST


def sources(csrc_dir: str = CSRC_DIR, with_cuda: bool = False) -> list[str]:
    found = sorted(glob.glob(os.path.join(csrc_dir, "*.cpp")))
    found += sorted(glob.glob(os.path.join(csrc_dir, "cpu", "*.cpp")))
    if with_cuda:
        # cuda/*.cpp hold the host side (operator registration, allocation) compiled by the
        # C++ compiler; cuda/*.cu hold only kernels, so nvcc never parses the heavy torch headers.
        found += sorted(glob.glob(os.path.join(csrc_dir, "cuda", "*.cpp")))
        found += sorted(glob.glob(os.path.join(csrc_dir, "cuda", "*.cu")))
    return found


def extra_compile_args(with_cuda: bool = False) -> dict[str, list[str]]:
    # No contraction into FMAs: the lattice arithmetic must round the same on CPU and GPU.
    cxx = ["-O3", "-std=c++20", "-ffp-contract=off"]
    if sys.platform.startswith("linux"):
        # at::parallel_for is inline code over OpenMP pragmas (torch's Linux backend): without
        # -fopenmp the kernels would run on one thread. The GOMP symbols resolve to the
        # libgomp that torch itself loads, so nothing extra is linked.
        cxx.append("-fopenmp")
    if with_cuda:
        cxx.append("-DWITH_CUDA")
    args = {"cxx": cxx}
    if with_cuda:
        args["nvcc"] = ["-O3", "-std=c++20", "-DWITH_CUDA", "-diag-suppress=3189", "-lineinfo"]
    return args


def include_dirs(csrc_dir: str = CSRC_DIR) -> list[str]:
    return [csrc_dir]
