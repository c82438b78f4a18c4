"""Loads the compiled CRF operators (`torch.ops.lightning_deeplab.*`) on first use and
registers their fake (shape-only) implementations and autograd rules.

Importing this module loads nothing. The first call of `operators()` (every op call of
`lattice.py` goes through it) loads, in this order:
1. `lightning_deeplab._C`, which `setup.py` builds when torch is there at build time
   (`pip install --no-build-isolation`, `make install`);
2. else a complete earlier build of exactly these sources for this Python and torch, from the
   kernel cache (`_build.kernel_cache_root()`): made by a first use before, or ahead of time by
   `deeplab build-kernels` (images and cluster nodes without a compiler at run time);
3. else it compiles the sources into that cache now (ninja, through torch.utils.cpp_extension),
   once, saying so in one line.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import importlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Iterator, Optional

import torch

from . import _build as build

_log = logging.getLogger(__name__)

NAMESPACE = "lightning_deeplab"
_lock = threading.Lock()
_source: Optional[str] = None  # "compiled", "cache" or "jit" once loaded
_registered: set[str] = set()  # namespaces whose fake and autograd rules are registered
# Where the layer's operator calls go: NAMESPACE unless `operators_from` says otherwise.
_namespace = contextvars.ContextVar("lightning_deeplab_crf_namespace", default=NAMESPACE)


class KernelBuildError(OSError):
    """The CRF kernels could not be compiled: a missing compiler or CUDA toolkit (the message says
    what to install), or a failed build."""


def cached_build(with_cuda: bool) -> Optional[tuple[str, dict]]:
    """The library of a complete cached build of these sources (with the CUDA kernels or not)
    for this Python and torch, and its build record (what it was built for, how long it took);
    None when there is none."""
    folder = build.cached_build_dir(with_cuda)
    library = os.path.join(folder, build.CACHED_LIBRARY_NAME + ".so")
    # the record is written only once the build succeeded: a killed build is never loaded
    try:
        with open(os.path.join(folder, build.CACHE_STAMP)) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    return (library, record) if os.path.isfile(library) else None


def build_kernels(with_cuda: bool, cuda_arch_list: Optional[str] = None) -> str:
    """Compiles the kernels (the CUDA ones too if ``with_cuda``, for ``cuda_arch_list``, e.g.
    "8.0;9.0", default: the visible GPUs, else `_build.DEFAULT_CUDA_ARCH_LIST`) into the kernel
    cache and loads them into this process; returns the library's path. Raises
    :class:`KernelBuildError` naming what is missing."""
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        raise KernelBuildError(
            f"no C++ compiler ({compiler}) to build the CRF kernels with: install one (Debian/Ubuntu: apt install "
            f"g++; conda: conda install -c conda-forge cxx-compiler), or run `deeplab build-kernels` where there is one "
            f"and set {build.KERNEL_DIR_ENV} to the folder it prints"
        )
    if with_cuda:
        if torch.version.cuda is None:
            raise KernelBuildError(f"torch {torch.__version__} is a CPU build: it cannot build CUDA kernels")
        if cuda_arch_list:
            os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list
        build.prepare_cuda_environment()
        if build.cuda_home() is None:
            raise KernelBuildError(
                "no CUDA toolkit (nvcc) to build the CUDA kernels with: install the toolkit of CUDA "
                f"{torch.version.cuda} and set CUDA_HOME, or build the CPU kernels only"
            )
    folder = build.cached_build_dir(with_cuda)
    os.makedirs(folder, exist_ok=True)
    what = "CPU and CUDA" if with_cuda else "CPU"
    _log.warning(
        "lightning_deeplab: compiling the %s CRF kernels from %s into %s: once, about %s on 2 cores; later "
        "processes load them from there (`deeplab build-kernels` builds them ahead of time)",
        what,
        build.CSRC_DIR,
        folder,
        "a minute per GPU architecture" if with_cuda else "half a minute",
    )
    start = time.monotonic()
    flags = build.extra_compile_args(with_cuda=with_cuda)
    try:
        build.import_cpp_extension().load(
            name=build.CACHED_LIBRARY_NAME,
            sources=build.sources(with_cuda=with_cuda),
            extra_cflags=flags["cxx"],
            extra_cuda_cflags=flags.get("nvcc"),
            extra_include_paths=build.include_dirs(),
            build_directory=folder,
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=False,
        )
    except (RuntimeError, subprocess.CalledProcessError) as error:
        raise KernelBuildError(f"building the CRF kernels in {folder} failed: {error}") from error
    stamp = {
        "sources": build.source_digest(with_cuda=with_cuda),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if with_cuda else None,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "seconds": round(time.monotonic() - start, 1),
        "built": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    # every process that waited for the same build (DDP ranks on first use) writes the record:
    # each through a file of its own, renamed whole
    handle, partial = tempfile.mkstemp(dir=folder, prefix=f".{build.CACHE_STAMP}.", suffix=".partial")
    with os.fdopen(handle, "w") as stream:
        json.dump(stamp, stream, indent=2)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o666 & ~umask)  # readable as the library is: a cache in an image serves other users
    os.replace(partial, os.path.join(folder, build.CACHE_STAMP))
    return os.path.join(folder, build.CACHED_LIBRARY_NAME + ".so")


def _load_library() -> str:
    """Makes `torch.ops.lightning_deeplab` available; returns where it came from."""
    if os.environ.get("LIGHTNING_DEEPLAB_FORCE_JIT", "0") != "1":
        try:
            importlib.import_module("lightning_deeplab._C")
            return "compiled"
        except ImportError as error:
            _log.info("lightning_deeplab._C unavailable (%s)", error)
    # a build with the CUDA kernels first: one made ahead of time on a node with the toolkit
    for with_cuda in (True, False) if torch.version.cuda else (False,):
        cached = cached_build(with_cuda)
        if cached is not None:
            torch.ops.load_library(cached[0])
            return "cache"
    build_kernels(with_cuda=build.want_cuda())
    return "jit"


def operators():
    """`torch.ops.lightning_deeplab`, loading (or compiling) the extension on first use; inside
    `operators_from`, that namespace instead."""
    global _source
    if _source is None:
        with _lock:
            if _source is None:
                source = _load_library()
                _register_python_rules(NAMESPACE)
                _source = source
    return getattr(torch.ops, _namespace.get())


@contextlib.contextmanager
def operators_from(namespace: str) -> Iterator[None]:
    """Sends this thread's operator calls of the CRF layer to `namespace`: a library, already
    loaded, that registers `build_lattice` and `lattice_filter` with the same schemas (the
    tests run the CUDA operators' host emulation this way). Its fake and autograd rules are
    registered on first use; a namespace without `potts_mean_field_` takes the per-iteration
    path, as CUDA tensors do."""
    operators()  # the package's own rules first
    with _lock:
        if namespace not in _registered:
            _register_python_rules(namespace)
    token = _namespace.set(namespace)
    try:
        yield
    finally:
        _namespace.reset(token)


def __getattr__(name: str):
    # OPS_SOURCE ("compiled" or "jit") is known only once the operators are loaded.
    if name == "OPS_SOURCE":
        operators()
        return _source
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_lattice_fake(features: torch.Tensor, *, lists_on_cpu: bool):
    batch, pixels, dim = features.shape
    vertices = torch.library.get_ctx().new_dynamic_size()
    # The CUDA build makes splat lists, the CPU build none.
    lists = features.device.type != "cpu" or lists_on_cpu
    entries = batch * pixels * (dim + 1) if lists else 0
    return (
        features.new_empty((batch, pixels, dim + 1), dtype=torch.int32),
        features.new_empty((batch, pixels, dim + 1), dtype=torch.float32),
        features.new_empty((dim + 1, vertices, 2), dtype=torch.int32),
        features.new_empty((vertices + 1 if lists else 0,), dtype=torch.int32),
        features.new_empty((entries,), dtype=torch.int32),
        features.new_empty((entries,), dtype=torch.float32),
        features.new_empty((batch,), dtype=torch.int64),
    )


def _lattice_filter_fake(
    values,
    offsets,
    weights,
    neighbors,
    splat_ptr,
    splat_pixel,
    splat_weight,
    scale_in,
    scale_out,
    addend,
    reverse,
    softmax=False,
):
    torch._check(values.dim() == 3, lambda: "lattice_filter: values must be [B, N, C]")
    return torch.empty_like(values, memory_format=torch.contiguous_format)


def _potts_mean_field_fake(q, neg_unary, *lattices_and_options) -> None:
    torch._check(q.shape == neg_unary.shape, lambda: "potts_mean_field_: q must match neg_unary")


def _lattice_filter_setup_context(ctx, inputs, output) -> None:
    _values, *lattice, scale_in, scale_out, addend, reverse = inputs[:11]
    softmax = inputs[11] if len(inputs) > 11 else False
    ctx.save_for_backward(*lattice, scale_in, scale_out, output if softmax else None)
    ctx.reverse = reverse
    ctx.has_addend = addend is not None


def _lattice_filter_backward(lattice_filter, ctx, grad: torch.Tensor):
    # out = [softmax](addend + s_out * K(s_in * x)) is linear in x and addend before the
    # softmax. K's adjoint is the same filter with the blur axes reversed, so x's gradient
    # swaps the scales and the axis order. The scales (kernel normalisations) are constants.
    *lattice, scale_in, scale_out, softmax_out = ctx.saved_tensors
    if softmax_out is not None:
        grad = softmax_out * (grad - (grad * softmax_out).sum(dim=-1, keepdim=True))
    grad_values = lattice_filter(grad, *lattice, scale_out, scale_in, None, not ctx.reverse)
    grad_addend = grad if ctx.has_addend else None
    return (grad_values,) + (None,) * 8 + (grad_addend, None, None)


def _register_python_rules(namespace: str) -> None:
    """Fake implementations and autograd rules of `namespace`'s operators, once they exist."""
    ops = getattr(torch.ops, namespace)
    # Another namespace is the CUDA operators' emulation: a CUDA build on CPU tensors.
    build_fake = functools.partial(_build_lattice_fake, lists_on_cpu=namespace != NAMESPACE)
    torch.library.register_fake(f"{namespace}::build_lattice", build_fake)
    torch.library.register_fake(f"{namespace}::lattice_filter", _lattice_filter_fake)
    if hasattr(ops, "potts_mean_field_"):
        torch.library.register_fake(f"{namespace}::potts_mean_field_", _potts_mean_field_fake)
    torch.library.register_autograd(
        f"{namespace}::lattice_filter",
        functools.partial(_lattice_filter_backward, ops.lattice_filter),
        setup_context=_lattice_filter_setup_context,
    )
    _registered.add(namespace)


__all__ = ["OPS_SOURCE", "operators", "operators_from"]  # noqa: F822 (OPS_SOURCE comes from __getattr__)
