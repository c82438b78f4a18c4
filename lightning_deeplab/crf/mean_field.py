"""Mean-field inference of the fully connected CRF (Kraehenbuehl & Koltun 2011) with a
smoothness and an appearance Gaussian kernel, each filtered through a permutohedral lattice.

Per image, with unary energies U [N, C] and Q = softmax(-U):
    repeat `iterations` times:
        A = -U + sum_k w_k * norm_k * K_k(norm_k * Q)     ("symmetric", pydensecrf's default)
        A = -U + sum_k w_k * K_k(Q) / K_k(1)               ("after", the 2011 / Caffe variant)
        Q = softmax(A)
where K_k is the lattice filter (each pixel included) and norm_k = 1 / sqrt(K_k(1)). With a
compatibility matrix M [C, C] the message sum is multiplied by M on the label axis
(A = -U + (sum_k ...) @ M); M = identity is the Potts model of the two forms above.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch.utils.checkpoint import checkpoint

from . import checks as check
from .features import bilateral_features, position_features
from .memory import POOL_CACHE_BYTES, check_memory
from .lattice import Lattice, build_lattice, has_potts_loop, potts_mean_field_, release_cached_buffers
from .threads import Threads, check_threads, cpu_threads

Weight = Union[float, torch.Tensor]

# DeepLab v2 ResNet-101's CRF setting: the defaults of `dense_crf` and `DenseCRF`.
ITERATIONS = 10
POS_W = 3.0
POS_XY_STD = 1.0
BI_W = 4.0
BI_XY_STD = 67.0
BI_RGB_STD = 3.0
NORMALIZATION = "symmetric"


class KernelSettings(NamedTuple):
    """DeepLab's two kernels as `dense_crf` and `DenseCRF` take them: the smoothness kernel's
    weight and spatial standard deviation, the appearance kernel's weight and spatial / colour
    standard deviations, and their normalisation. Weights may be tensors (learned ones)."""

    pos_w: Weight = POS_W
    pos_xy_std: float = POS_XY_STD
    bi_w: Weight = BI_W
    bi_xy_std: float = BI_XY_STD
    bi_rgb_std: float = BI_RGB_STD
    normalization: str = NORMALIZATION

    def validated(self) -> "KernelSettings":
        """These settings, checked (an error names the argument), standard deviations as floats."""
        check.check_normalization(self.normalization)
        check.check_weight("pos_w", self.pos_w)
        check.check_weight("bi_w", self.bi_w)
        return self._replace(
            pos_xy_std=check.check_positive("pos_xy_std", self.pos_xy_std),
            bi_xy_std=check.check_positive("bi_xy_std", self.bi_xy_std),
            bi_rgb_std=check.check_positive("bi_rgb_std", self.bi_rgb_std),
        )


class Kernel(NamedTuple):
    """One Gaussian kernel of the mean-field update: weight * s_out * K(s_in * Q) [@ M].

    `weight` is None when it is a constant already folded into `scale_out`; it stays a
    separate (trainable) tensor when it requires a gradient. `compatibility` is None
    (Potts), a [C] per-label factor or a [C, C] matrix applied on the label axis."""

    lattice: Lattice
    scale_in: Optional[torch.Tensor]  # [B, N] or None
    scale_out: Optional[torch.Tensor]  # [B, N] or None
    weight: Optional[torch.Tensor]
    compatibility: Optional[torch.Tensor] = None


def make_kernel(
    lattice: Lattice,
    weight: Weight,
    normalization: str,
    dtype: torch.dtype,
    compatibility: Optional[torch.Tensor] = None,
) -> Kernel:
    """Normalises `lattice` (from K(1), computed once) and folds a constant weight in.

    normalization (pydensecrf's names): "symmetric" norm * K(norm * Q) with norm = K(1)^-1/2,
    "after" K(Q) / K(1), "before" K(Q / K(1)), "none" K(Q)."""
    batch, pixels, _ = lattice.offsets.shape
    device = lattice.offsets.device
    if normalization == "none":
        scale_in, scale_out = None, torch.ones(batch, pixels, dtype=torch.float64, device=device)
    else:
        ones = torch.ones(batch, pixels, 1, dtype=dtype, device=device)
        # In float64 with the 1e-20 guard of the reference, rounded once at the end.
        mass = lattice.filter(ones).reshape(batch, pixels).to(torch.float64) + 1e-20
        if normalization == "symmetric":
            scale_in, scale_out = mass.rsqrt(), mass.rsqrt()
        elif normalization == "after":
            scale_in, scale_out = None, mass.reciprocal()
        else:  # "before"
            scale_in, scale_out = mass.reciprocal(), torch.ones_like(mass)
    if scale_in is not None:
        scale_in = scale_in.to(dtype)
    if compatibility is not None:
        compatibility = compatibility.to(dtype)
    if isinstance(weight, torch.Tensor) and weight.requires_grad:
        return Kernel(lattice, scale_in, scale_out.to(dtype), weight, compatibility)
    constant = weight.detach().to(torch.float64) if isinstance(weight, torch.Tensor) else float(weight)
    return Kernel(lattice, scale_in, (scale_out * constant).to(dtype), None, compatibility)


def pairwise_terms(q: torch.Tensor, kernels: Sequence[Kernel]) -> list[torch.Tensor]:
    """Each kernel's contribution to the mean-field energies A = -U + sum(terms) for the
    marginals q [B, N, C]: weight * s_out * K(s_in * q), times its compatibility."""
    terms = []
    for kernel in kernels:
        term = kernel.lattice.filter(q, scale_in=kernel.scale_in, scale_out=kernel.scale_out)
        if kernel.weight is not None:
            term = kernel.weight * term
        if kernel.compatibility is not None:
            matrix = kernel.compatibility
            term = term * matrix if matrix.dim() == 1 else term @ matrix
        terms.append(term)
    return terms


#: From this many labels on, torch's CPU softmax vectorises across the labels of a row and is
#: the faster one; below it, it works element by element (benchmarks/notes-crf-cpu.md, sixth round).
FEW_LABELS = 16


def label_softmax(energies: torch.Tensor) -> torch.Tensor:
    """softmax over the last (label) axis of [..., C]. For fewer than FEW_LABELS labels, in
    whole-array passes (600x400 pixels, 5 labels, one thread: 4.9 ms against torch.softmax's
    24.7 ms); from FEW_LABELS on, torch.softmax (21 labels: 11 ms against 14 ms)."""
    if energies.shape[-1] >= FEW_LABELS:
        return torch.softmax(energies, dim=-1)
    q = torch.exp(energies - energies.amax(dim=-1, keepdim=True))
    return q / q.sum(dim=-1, keepdim=True)


def mean_field(
    neg_unary: torch.Tensor,
    kernels: Sequence[Kernel],
    iterations: int,
    compatibility: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Runs the mean-field loop on -U [B, N, C]; returns Q [B, N, C].

    When a gradient is wanted, each iteration is recomputed in the backward from its input Q
    (activation checkpointing): the backward keeps one Q per iteration instead of the five or
    so [B, N, C] arrays an iteration makes, for one more forward pass per iteration."""
    if any(kernel.compatibility is not None for kernel in kernels):
        if compatibility is not None:
            raise ValueError("give the compatibility per kernel or for all kernels, not both")
        step = partial(_iteration_per_kernel, neg_unary, kernels)
    else:
        step = partial(_iteration, neg_unary, kernels, compatibility)
    q = label_softmax(neg_unary)
    if _uses_potts_loop(neg_unary, kernels, compatibility):
        return potts_in_place(q, neg_unary, kernels, iterations)
    recompute = torch.is_grad_enabled() and _any_requires_grad(neg_unary, kernels, compatibility)
    for _ in range(iterations):
        q = checkpoint(step, q, use_reentrant=False) if recompute else step(q)
    return q


def _uses_potts_loop(unary: torch.Tensor, kernels: Sequence[Kernel], compatibility: Optional[torch.Tensor]) -> bool:
    """Whether `mean_field` runs the fused CPU loop (`potts_in_place`): Potts with constant
    weights, two kernels or more, no gradient wanted, an operator library that has it."""
    return (
        not (torch.is_grad_enabled() and _any_requires_grad(unary, kernels, compatibility))
        and len(kernels) > 1
        and _fused_potts(kernels, compatibility)
        and has_potts_loop(unary.device)
    )


def _any_requires_grad(neg_unary: torch.Tensor, kernels: Sequence[Kernel], compatibility) -> bool:
    tensors = [neg_unary, compatibility, *(t for kernel in kernels for t in (kernel.weight, kernel.compatibility))]
    return any(t is not None and t.requires_grad for t in tensors)


def _iteration_per_kernel(neg_unary: torch.Tensor, kernels: Sequence[Kernel], q: torch.Tensor) -> torch.Tensor:
    """One mean-field update with a compatibility per kernel."""
    messages = neg_unary
    for term in pairwise_terms(q, kernels):
        messages = messages + term
    return torch.softmax(messages, dim=-1)


def _iteration(
    neg_unary: torch.Tensor, kernels: Sequence[Kernel], compatibility: Optional[torch.Tensor], q: torch.Tensor
) -> torch.Tensor:
    """One mean-field update with one compatibility (or Potts) for all kernels. Potts with
    constant weights: the filters add their messages straight onto -U (in the reference's
    order) and the last one applies the softmax itself."""
    fused = _fused_potts(kernels, compatibility)
    messages = neg_unary if compatibility is None else None
    for index, kernel in enumerate(kernels):
        if kernel.weight is None:
            messages = kernel.lattice.filter(
                q,
                scale_in=kernel.scale_in,
                scale_out=kernel.scale_out,
                addend=messages,
                softmax=fused and index == len(kernels) - 1,
            )
        else:
            term = kernel.weight * kernel.lattice.filter(q, scale_in=kernel.scale_in, scale_out=kernel.scale_out)
            messages = term if messages is None else messages + term
    if fused:
        return messages
    if compatibility is not None:
        messages = neg_unary + messages @ compatibility
    return torch.softmax(messages, dim=-1)


def _fused_potts(kernels: Sequence[Kernel], compatibility: Optional[torch.Tensor]) -> bool:
    """Potts with constant weights: the filters can add onto -U and apply the softmax themselves."""
    return (
        compatibility is None
        and bool(kernels)
        and all(kernel.weight is None and kernel.compatibility is None for kernel in kernels)
    )


def potts_in_place(
    q: torch.Tensor, neg_unary: torch.Tensor, kernels: Sequence[Kernel], iterations: int, subtract_unary: bool = False
) -> torch.Tensor:
    """The fused Potts loop of `mean_field` in one CPU operator, in place on q = softmax(-U):
    the same operations in the same order (bitwise the same Q), q the only [B, N, C] array
    alive besides -U (or U, any strides, with `subtract_unary`), and a batch that shares
    the threads out runs image by image, one thread each."""
    return potts_mean_field_(
        q,
        neg_unary,
        [kernel.lattice for kernel in kernels],
        [kernel.scale_in for kernel in kernels],
        [kernel.scale_out for kernel in kernels],
        iterations,
        subtract_unary,
    )


def pixels_last(scores: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C], the layout the lattice kernels read (a pixel's C values
    contiguous). channels_last conversion has a fast transposing copy; the rest is a view."""
    batch, classes, height, width = scores.shape
    scores = scores.contiguous(memory_format=torch.channels_last)
    return scores.permute(0, 2, 3, 1).reshape(batch, height * width, classes)


def channels_first(q: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H*W, C] -> contiguous [B, C, H, W]; per-image 2-D transposes take torch's fast path."""
    batch, _, classes = q.shape
    planes = [q[b].t().contiguous() for b in range(batch)]
    q = planes[0].unsqueeze(0) if batch == 1 else torch.stack(planes)
    return q.reshape(batch, classes, height, width)


def negated_points_last(unary: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """-unary [B, C, *spatial] as [B, N, C] in `dtype`, a new tensor (the caller's is kept)."""
    scores = unary.to(dtype)
    if scores.dim() == 4:
        if scores.is_contiguous(memory_format=torch.channels_last):
            return -pixels_last(scores)  # a view of the caller's tensor: negate into a new one
        return pixels_last(scores).neg_()  # negate the layout copy in place
    batch, classes = scores.shape[:2]
    return scores.reshape(batch, classes, -1).transpose(1, 2).neg().contiguous()


def softmax_of_negated(unary: torch.Tensor, dtype: torch.dtype, rows: int = 1 << 16) -> torch.Tensor:
    """softmax(-unary) [B, N, C] in `dtype`, bitwise `label_softmax(negated_points_last(unary,
    dtype))`, made in the one new [B, N, C] array: the softmax runs in place, a block of rows
    at a time (each row's softmax is independent of the others)."""
    q = negated_points_last(unary, dtype)
    flat = q.view(-1, q.shape[-1])
    for start in range(0, flat.shape[0], rows):
        block = flat[start : start + rows]
        block.copy_(label_softmax(block))
    return q


def unary_points_last(unary: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """unary [B, C, *spatial] as a [B, N, C] view in `dtype` (any strides): the caller's own
    tensor when it is in `dtype` and its points flatten without a copy."""
    return unary.to(dtype).reshape(*unary.shape[:2], -1).transpose(1, 2)


def points_first(q: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """[B, N, C] -> contiguous [B, C, *spatial]."""
    if len(spatial) == 2:
        return channels_first(q, *spatial)
    batch, _, classes = q.shape
    return q.transpose(1, 2).reshape(batch, classes, *spatial).contiguous()


def compute_dtype(unary: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other unary is computed in float32."""
    return torch.float64 if unary.dtype == torch.float64 else torch.float32


def run_mean_field(
    unary: torch.Tensor,
    kernels: Sequence[tuple[torch.Tensor, Weight, Optional[torch.Tensor], str]],
    iterations: int,
    compatibility: Optional[torch.Tensor] = None,
    threads: Threads = None,
) -> torch.Tensor:
    """The CRF on unary [B, C, *spatial] with kernels (features [B, N, d] float32 or
    `LazyFeatures`, weight,
    compatibility or None, normalization), lattices built once; returns Q [B, C, *spatial].
    On the CPU it runs on `threads` threads (see `lightning_deeplab.crf.threads`: None or
    "auto" picks them from torch's count and the cores other processes leave idle).
    A CPU call that cannot fit the available memory raises MemoryError before it allocates
    (`lightning_deeplab.crf.memory`). Nothing else is validated here: the public entries do
    that once."""
    # Under torch.compile the thread count and the memory check (host reads) stay outside the graph.
    if unary.device.type != "cpu" or torch.compiler.is_compiling():
        return _run_mean_field(unary, kernels, iterations, compatibility)
    with cpu_threads(threads, batch=unary.shape[0]):
        return _run_mean_field(unary, kernels, iterations, compatibility)


def _run_mean_field(
    unary: torch.Tensor,
    kernels: Sequence[tuple[torch.Tensor, Weight, Optional[torch.Tensor], str]],
    iterations: int,
    compatibility: Optional[torch.Tensor],
) -> torch.Tensor:
    dtype = compute_dtype(unary)
    need = 0
    if unary.device.type == "cpu" and not torch.compiler.is_compiling():
        need = check_memory(
            unary.shape[0],
            unary.shape[2:],
            unary.shape[1],
            [_feature_dim(kernel[0]) for kernel in kernels],
            torch.finfo(dtype).bits // 8,
        )
    # Lazy features are made just before their lattice and dropped after it, and the lattices
    # and -U are freed before the output's layout copy: at 4000x3000 each of these is ~0.3-1 GB.
    # The fused CPU loop reads U where the caller holds it (no [B, N, C] copy of -U).
    built = [
        make_kernel(build_lattice(_features(features)), weight, normalization, dtype, kernel_compatibility)
        for features, weight, kernel_compatibility, normalization in kernels
    ]
    # A call larger than the pool returns its idle blocks (memory.POOL_CACHE_BYTES) before the
    # iterations and again before the output copy.
    large = need > POOL_CACHE_BYTES
    if large:
        release_cached_buffers()
    matrix = compatibility.to(dtype) if compatibility is not None else None
    if _uses_potts_loop(unary, built, matrix):
        q = potts_in_place(softmax_of_negated(unary, dtype), unary_points_last(unary, dtype), built, iterations, True)
    else:
        neg_unary = negated_points_last(unary, dtype)
        q = mean_field(neg_unary, built, iterations, matrix)
        del neg_unary
    del built
    if large:
        release_cached_buffers()
    return points_first(q, unary.shape[2:])


class LazyFeatures(NamedTuple):
    """Features [B, N, dim] that `make()` computes when the lattice is built."""

    dim: int
    make: Callable[[], torch.Tensor]


def _features(features: Union[torch.Tensor, LazyFeatures]) -> torch.Tensor:
    return features.make() if isinstance(features, LazyFeatures) else features


def _feature_dim(features: Union[torch.Tensor, LazyFeatures]) -> int:
    return features.dim if isinstance(features, LazyFeatures) else features.shape[-1]


def deeplab_kernels(image: torch.Tensor, settings: KernelSettings) -> list[tuple[torch.Tensor, Weight, None, str]]:
    """DeepLab's smoothness and appearance kernels of image [B, 3, H, W], in the reference's
    order, as `run_mean_field` takes them (``settings`` already validated)."""
    batch, _, height, width = image.shape
    position = partial(position_features, batch, height, width, settings.pos_xy_std, image.device)
    appearance = partial(bilateral_features, image, settings.bi_xy_std, settings.bi_rgb_std)
    return [
        (LazyFeatures(2, position), settings.pos_w, None, settings.normalization),
        (LazyFeatures(5, appearance), settings.bi_w, None, settings.normalization),
    ]


def build_kernels(image: torch.Tensor, settings: KernelSettings, dtype: torch.dtype) -> list[Kernel]:
    """The smoothness and appearance kernels of image [B, 3, H, W]: lattices built once,
    normalised, weights folded in (``settings`` already validated)."""
    return [
        make_kernel(build_lattice(_features(features)), weight, norm, dtype)
        for features, weight, _, norm in deeplab_kernels(image, settings)
    ]


def dense_crf(
    unary: torch.Tensor,
    image: torch.Tensor,
    iterations: int = ITERATIONS,
    pos_w: Weight = POS_W,
    pos_xy_std: float = POS_XY_STD,
    bi_w: Weight = BI_W,
    bi_xy_std: float = BI_XY_STD,
    bi_rgb_std: float = BI_RGB_STD,
    normalization: str = NORMALIZATION,
    compatibility: Optional[torch.Tensor] = None,
    check_values: Optional[bool] = None,
    threads: Threads = None,
) -> torch.Tensor:
    """Fully connected CRF refinement of unary energies; the functional form of `DenseCRF`.

    Args:
        unary: [B, C, H, W] energies (-log p; see `unary_from_softmax`), C >= 2. float16 and
            bfloat16 are computed in float32; float64 stays float64.
        image: [B, 3, H, W] RGB, uint8 (or float holding 0-255 values).
        iterations: mean-field iterations (0 returns softmax(-unary)).
        pos_w, pos_xy_std: weight and spatial standard deviation (pixels) of the smoothness
            kernel. Weights may be tensors (e.g. nn.Parameters) and then get gradients.
        bi_w, bi_xy_std, bi_rgb_std: weight and spatial / colour standard deviations of the
            appearance (bilateral) kernel.
        normalization: "symmetric" (pydensecrf's default, norm * K(norm * Q)) or "after"
            (K(Q) / K(1), the 2011 code used by DeepLab's Caffe layer).
        compatibility: optional [C, C] label compatibility M; messages are multiplied by it
            on the label axis (identity = Potts). pydensecrf's matrix compatibility
            `compat=X` on both kernels, with weights w, is M = -(X + X.T) / (2 w) here.
        check_values: run the data-dependent checks (NaN/Inf, image range), which read values
            back to the host: None (default) on CPU only, True also on CUDA (one sync).
            A float image in [0, 1] is warned about once per process (on CUDA this reads two
            numbers back per call, for float images only, until the warning was given).
        threads: CPU threads for this call: an int >= 1, or None / "auto" (default): the
            environment variable LIGHTNING_DEEPLAB_CRF_THREADS if set, else torch's thread
            count (`torch.set_num_threads`) capped at the cores that other processes leave
            idle when the call starts (on a busy machine one thread beats two: every pass of
            a filter ends at a barrier). See `lightning_deeplab.crf.threads`.

    Returns:
        Marginals Q [B, C, H, W] (each pixel sums to 1), float32 (float64 for a float64 unary).
    """
    check.check_iterations(iterations)
    settings = KernelSettings(pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, normalization).validated()
    check.check_flag("check_values", check_values)
    check_threads(threads)
    if compatibility is not None:
        check.check_compatibility_matrix(compatibility)
    return refine(unary, image, iterations, settings, compatibility, check_values, threads)


def refine(
    unary: torch.Tensor,
    image: torch.Tensor,
    iterations: int,
    settings: KernelSettings,
    compatibility: Optional[torch.Tensor],
    check_values: Optional[bool],
    threads: Threads = None,
) -> torch.Tensor:
    """`dense_crf` with settings already validated (by `dense_crf` or `DenseCRF.__init__`):
    checks the per-call inputs only, then runs DeepLab's two kernels through `run_mean_field`."""
    check.check_unary_and_image(unary, image)
    batch, classes, height, width = unary.shape
    if compatibility is not None:
        if compatibility.shape != (classes, classes):
            raise ValueError(f"compatibility must be [C, C] = [{classes}, {classes}], got {tuple(compatibility.shape)}")
        if compatibility.device != unary.device:
            raise ValueError(f"compatibility is on {compatibility.device} but unary is on {unary.device}")
    check.check_lattice_range(height, width, settings.pos_xy_std, settings.bi_xy_std, settings.bi_rgb_std)
    check.check_values(unary, image, check.wants_value_checks(unary.device, check_values))
    kernels = deeplab_kernels(image, settings)
    return run_mean_field(unary, kernels, iterations, compatibility, threads)
