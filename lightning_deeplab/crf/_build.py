"""How the CRF kernels are compiled: one description used by `setup.py` (the ahead-of-time
`lightning_deeplab._C` of a build that has torch) and by `_ops.py` (the build on first use, or by
`deeplab build-kernels`, into a cache), and where the sources and that cache are.

Imports nothing but the standard library until a function needs torch, so setup.py can load this
file by path before torch is importable.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import sys

EXTENSION_NAME = "lightning_deeplab._C"
#: The library a build into the cache makes (``<name>.so``), and the record written beside it
#: once the build is complete.
CACHED_LIBRARY_NAME = "lightning_deeplab_crf_ops"
CACHE_STAMP = "build.json"
#: Where cached builds go, when set (else TORCH_EXTENSIONS_DIR's folder, else ~/.cache).
KERNEL_DIR_ENV = "LIGHTNING_DEEPLAB_KERNEL_DIR"
#: GPU architectures of a build on a machine without a GPU (the one default; the Makefile and
#: setup.py do not guess). Each one adds about a minute of nvcc; release builds set
#: TORCH_CUDA_ARCH_LIST to every architecture they ship for (e.g. "8.0;8.6;8.9;9.0").
DEFAULT_CUDA_ARCH_LIST = "9.0"
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SOURCE_PATTERNS = ("*.h", "*.cuh", "*.cpp", "*.cu")


def packaged_folder(name: str) -> str:
    """A folder the package ships from the repository's top level (``csrc``, ``configs``): inside
    the installed package, where wheels and sdists map it (``lightning_deeplab/<name>``), else
    beside the package in the source checkout it is imported from. FileNotFoundError if neither."""
    installed = os.path.join(_PACKAGE_DIR, name)
    checkout = os.path.join(os.path.dirname(_PACKAGE_DIR), name)
    for folder in (installed, checkout):
        if os.path.isdir(folder):
            return folder
    raise FileNotFoundError(f"lightning_deeplab ships no {name}/ here: neither {installed} nor {checkout} exists")


#: The kernel sources (C++ and CUDA), wherever the package is.
CSRC_DIR = packaged_folder("csrc")


def cuda_home() -> str | None:
    """The CUDA toolkit to build with, a folder holding bin/nvcc: $CUDA_HOME, else /usr/local/cuda,
    else the toolkit of the nvcc on PATH (its real folder: torch guesses /usr/local from a
    /usr/local/bin/nvcc link, which has no headers or libcudart); None without one."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None)
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    return None


def want_cuda() -> bool:
    """Build the CUDA sources when torch is a CUDA build and a toolkit is present, or FORCE_CUDA=1."""
    import torch

    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    if os.environ.get("FORCE_CPU", "0") == "1":
        return False
    return torch.version.cuda is not None and cuda_home() is not None


def import_cpp_extension():
    """torch.utils.cpp_extension, without the warning it logs on import on a machine without a GPU
    (that no CUDA runtime is found: true, and beside the point of a build)."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def prepare_cuda_environment() -> None:
    """Set CUDA_HOME and TORCH_CUDA_ARCH_LIST when unset, so a GPU-less machine can build."""
    home = cuda_home()
    if home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = home
    if home:
        # cpp_extension reads CUDA_HOME once, at import, and may have guessed /usr/local
        # from the nvcc on PATH (no headers, no libcudart there): point it at the toolkit.
        import_cpp_extension().CUDA_HOME = home
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


def source_digest(csrc_dir: str = CSRC_DIR, with_cuda: bool = False) -> str:
    """A hash of every source and header and of the compiler flags: a cached build is reused only
    for exactly these sources."""
    digest = hashlib.sha256(repr(extra_compile_args(with_cuda)).encode())
    for pattern in _SOURCE_PATTERNS:
        for path in sorted(glob.glob(os.path.join(csrc_dir, "**", pattern), recursive=True)):
            digest.update(os.path.relpath(path, csrc_dir).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def kernel_cache_root() -> str:
    """Where cached builds live: $LIGHTNING_DEEPLAB_KERNEL_DIR, else lightning_deeplab/ in
    $TORCH_EXTENSIONS_DIR (torch's own cache of built extensions), else in ~/.cache/torch_extensions."""
    if os.environ.get(KERNEL_DIR_ENV):
        return os.path.abspath(os.path.expanduser(os.environ[KERNEL_DIR_ENV]))
    torch_dir = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch_extensions"
    )
    return os.path.join(os.path.abspath(os.path.expanduser(torch_dir)), "lightning_deeplab")


def cached_build_dir(with_cuda: bool, csrc_dir: str = CSRC_DIR) -> str:
    """The cache folder of a build of these sources for this Python and torch, with or without the
    CUDA kernels."""
    import torch

    variant = f"cu{torch.version.cuda.replace('.', '')}" if with_cuda and torch.version.cuda else "cpu"
    torch_version = torch.__version__.split("+")[0]
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch_version}-{variant}-{source_digest(csrc_dir, with_cuda)}"
    return os.path.join(kernel_cache_root(), tag)
