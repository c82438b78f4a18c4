"""Loads the compiled CRF operators (`torch.ops.lightning_deeplab.*`) on first use and
registers their fake (shape-only) implementations and autograd rules.

Importing this module loads nothing: the first call of `operators()` (every op call of
`lattice.py` goes through it) imports `lightning_deeplab._C` (built by setup.py). When that
module is missing, csrc/ is compiled just in time with `torch.utils.cpp_extension.load`
(ninja); the result is cached by torch under TORCH_EXTENSIONS_DIR, so only the first use pays.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import logging
import os
import threading
from typing import Iterator, Optional

import torch

_log = logging.getLogger(__name__)

NAMESPACE = "lightning_deeplab"
_JIT_NAME = "lightning_deeplab_crf_ops"
_lock = threading.Lock()
_source: Optional[str] = None  # "compiled" or "jit" once loaded
_registered: set[str] = set()  # namespaces whose fake and autograd rules are registered
# Where the layer's operator calls go: NAMESPACE unless `operators_from` says otherwise.
_namespace = contextvars.ContextVar("lightning_deeplab_crf_namespace", default=NAMESPACE)


def _compile_just_in_time() -> None:
    from torch.utils.cpp_extension import load

    from . import _build as build

    with_cuda = build.want_cuda()
    if with_cuda:
        build.prepare_cuda_environment()
    _log.warning(
        "lightning_deeplab._C is not built; building the CRF operators from %s (%s) with "
        "torch.utils.cpp_extension. Only the first use compiles (about a minute); the "
        "build is cached under TORCH_EXTENSIONS_DIR.",
        build.CSRC_DIR,
        "CPU and CUDA" if with_cuda else "CPU only",
    )
    flags = build.extra_compile_args(with_cuda=with_cuda)
    load(
        name=_JIT_NAME,
        sources=build.sources(with_cuda=with_cuda),
        extra_cflags=flags["cxx"],
        extra_cuda_cflags=flags.get("nvcc"),
        extra_include_paths=build.include_dirs(),
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=False,
    )


def _load_library() -> str:
    """Makes `torch.ops.lightning_deeplab` available; returns where it came from."""
    if os.environ.get("LIGHTNING_DEEPLAB_FORCE_JIT", "0") != "1":
        try:
            importlib.import_module("lightning_deeplab._C")
            return "compiled"
        except ImportError as error:
            _log.info("lightning_deeplab._C unavailable (%s)", error)
    _compile_just_in_time()
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


def _build_lattice_fake(features: torch.Tensor):
    batch, pixels, dim = features.shape
    vertices = torch.library.get_ctx().new_dynamic_size()
    entries = batch * pixels * (dim + 1)
    return (
        features.new_empty((batch, pixels, dim + 1), dtype=torch.int32),
        features.new_empty((batch, pixels, dim + 1), dtype=torch.float32),
        features.new_empty((dim + 1, vertices, 2), dtype=torch.int32),
        features.new_empty((vertices + 1,), dtype=torch.int32),
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
    torch.library.register_fake(f"{namespace}::build_lattice", _build_lattice_fake)
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
