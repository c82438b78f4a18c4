"""The dense CRF with any Gaussian kernels: each kernel is a feature map of the points (pixels
of an image, voxels of a volume, any N points) with a weight, an optional label compatibility
and a normalisation. `DenseCRF` / `dense_crf` are DeepLab's two-kernel instance of it.

Per batch element, with unary energies U [N, C] and Q = softmax(-U):
    repeat `iterations` times:
        A = -U + sum_k w_k * (n_k-normalised K_k(Q)) [* m_k | @ M_k]
        Q = softmax(A)
K_k is the permutohedral-lattice Gaussian filter over kernel k's features (unit standard
deviation in feature space: divide by the standard deviations first, see
`position_features_nd` / `bilateral_features_nd`). Without a compatibility the kernel is
Potts with weight w_k (positive = neighbours attract); a [C] compatibility m_k scales each
label's message, a [C, C] matrix M_k mixes the labels (A += w_k * msg @ M_k).

pydensecrf's `compat` maps as: a number w -> weight w; a 1-D v -> compatibility -v; a 2-D
X -> compatibility -(X + X.T) / 2 (pydensecrf subtracts the compatibility-applied messages).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Union

import torch

from . import checks as check
from .features import MAX_FEATURE_DIM
from .mean_field import ITERATIONS, Weight, run_mean_field

Normalization = str  # one of checks.KERNEL_NORMALIZATIONS


class PairwiseKernel(NamedTuple):
    """One Gaussian kernel of `gaussian_crf`.

    features: [B, d, N] or [B, d, *spatial] (B may be 1 for all images), d from 1 to
        MAX_FEATURE_DIM (16), already divided by the standard deviations.
    weight: a number or a scalar tensor (which then gets a gradient).
    compatibility: None (Potts), a [C] per-label factor or a [C, C] matrix.
    normalization: "symmetric" (pydensecrf's default), "after", "before" or "none".
    """

    features: torch.Tensor
    weight: Weight = 1.0
    compatibility: Optional[torch.Tensor] = None
    normalization: Normalization = "symmetric"


KernelSpec = Union[PairwiseKernel, tuple]


def check_kernel_settings(
    index: int, weight: Weight, compatibility: Optional[torch.Tensor], normalization: str
) -> None:
    """Everything about kernel `index` that does not depend on the inputs of a call."""
    name = f"kernels[{index}]"
    check.check_weight(f"{name}.weight", weight)
    check.check_kernel_normalization(f"{name}.normalization", normalization)
    if compatibility is not None:
        if not isinstance(compatibility, torch.Tensor):
            raise TypeError(f"{name}.compatibility must be None or a torch.Tensor, got {type(compatibility).__name__}")
        if not compatibility.is_floating_point():
            raise TypeError(f"{name}.compatibility must be floating point, got {compatibility.dtype}")
        if compatibility.dim() not in (1, 2) or (
            compatibility.dim() == 2 and compatibility.shape[0] != compatibility.shape[1]
        ):
            raise ValueError(f"{name}.compatibility must be [C] or [C, C], got shape {tuple(compatibility.shape)}")
        check.check_finite_compatibility(f"{name}.compatibility", compatibility)


def check_unary(unary: torch.Tensor) -> None:
    check.reject_numpy("unary", unary, "torch.from_numpy(unary)[None] ([C, *spatial] -> [1, C, *spatial])")
    if not isinstance(unary, torch.Tensor):
        raise TypeError(f"unary must be a torch.Tensor, got {type(unary).__name__}")
    if unary.dim() < 3 or unary.numel() == 0:
        raise ValueError(f"unary must be a non-empty [B, C, *spatial] tensor, got shape {tuple(unary.shape)}")
    if unary.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"unary must be float16, bfloat16, float32 or float64, got {unary.dtype}")


def points_features(name: str, features: torch.Tensor, unary: torch.Tensor) -> torch.Tensor:
    """features [B|1, d, N] or [B|1, d, *spatial] matching unary [B, C, *spatial] ->
    contiguous float32 [B, N, d], the lattice's layout."""
    check.reject_numpy(name, features, f"torch.from_numpy({name.split('.')[0]}...)")
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {features.dtype}")
    batch, _, *spatial = unary.shape
    points = math.prod(spatial)
    expected = f"[{batch} or 1, d, {points}] or [{batch} or 1, d, {', '.join(map(str, spatial))}]"
    if features.dim() < 3 or features.shape[0] not in (1, batch):
        raise ValueError(f"{name} must be {expected}, got shape {tuple(features.shape)}")
    if list(features.shape[2:]) != spatial and tuple(features.shape[2:]) != (points,):
        raise ValueError(f"{name} must be {expected}, got shape {tuple(features.shape)}")
    if features.device != unary.device:
        raise ValueError(f"{name} is on {features.device} but unary is on {unary.device}")
    dim = features.shape[1]
    check.check_feature_dim(name, dim)
    check.check_index_range(name, batch, points, dim)
    flat = features.to(torch.float32).reshape(features.shape[0], dim, points).transpose(1, 2)
    return flat.expand(batch, -1, -1).contiguous()


def check_compatibility_size(name: str, compatibility: Optional[torch.Tensor], unary: torch.Tensor) -> None:
    if compatibility is None:
        return
    classes = unary.shape[1]
    if any(size != classes for size in compatibility.shape):
        raise ValueError(
            f"{name}.compatibility must be [C] or [C, C] with C = {classes} (the unary's classes), "
            f"got shape {tuple(compatibility.shape)}"
        )
    if compatibility.device != unary.device:
        raise ValueError(f"{name}.compatibility is on {compatibility.device} but unary is on {unary.device}")


def run_kernels(
    unary: torch.Tensor,
    features: Sequence[torch.Tensor],
    weights: Sequence[Weight],
    compatibilities: Sequence[Optional[torch.Tensor]],
    normalizations: Sequence[str],
    iterations: int,
    check_values: Optional[bool],
) -> torch.Tensor:
    """`gaussian_crf` with the kernel settings already validated: checks the inputs of this
    call (shapes always; values on CPU, or when asked) and runs the mean field."""
    check_unary(unary)
    if len(features) != len(weights):
        raise ValueError(f"expected {len(weights)} feature tensors (one per kernel), got {len(features)}")
    lattice_features = []
    for index, (feature, compatibility) in enumerate(zip(features, compatibilities)):
        lattice_features.append(points_features(f"kernels[{index}].features", feature, unary))
        check_compatibility_size(f"kernels[{index}]", compatibility, unary)
    if check.wants_value_checks(unary.device, check_values):
        if not bool(torch.isfinite(unary).all()):
            raise ValueError("unary contains NaN or Inf")
        for index, feature in enumerate(lattice_features):
            check.check_feature_values(f"kernels[{index}].features", feature)
    kernels = list(zip(lattice_features, weights, compatibilities, normalizations))
    return run_mean_field(unary, kernels, iterations)


def _as_kernel(index: int, spec: KernelSpec) -> PairwiseKernel:
    if isinstance(spec, PairwiseKernel):
        return spec
    if isinstance(spec, (tuple, list)) and 1 <= len(spec) <= 4:
        return PairwiseKernel(*spec)
    raise TypeError(
        f"kernels[{index}] must be a PairwiseKernel or a tuple (features, weight[, compatibility"
        f"[, normalization]]), got {type(spec).__name__}"
    )


def gaussian_crf(
    unary: torch.Tensor,
    kernels: Sequence[KernelSpec],
    iterations: int = ITERATIONS,
    check_values: Optional[bool] = None,
) -> torch.Tensor:
    """Mean-field dense CRF with any Gaussian kernels, batched and differentiable (in the
    unary, the tensor weights and compatibilities), on the device of the inputs.

    Args:
        unary: [B, C, *spatial] energies (-log p): [B, C, H, W] images, [B, C, D, H, W]
            volumes, or [B, C, N] points. float16/bfloat16 are computed in float32.
        kernels: PairwiseKernel or tuples (features, weight[, compatibility[, normalization]]),
            in the order their messages are added; see `PairwiseKernel`.
        iterations: mean-field iterations (0 returns softmax(-unary)).
        check_values: data-dependent checks (NaN/Inf, lattice range of the features): None
            (default) on CPU only, True also on other devices (synchronises).

    Returns:
        Marginals Q [B, C, *spatial], float32 (float64 for a float64 unary).
    """
    check.check_iterations(iterations)
    check.check_flag("check_values", check_values)
    if isinstance(kernels, (torch.Tensor, str)) or not isinstance(kernels, Sequence):
        raise TypeError(f"kernels must be a list of kernels, got {type(kernels).__name__}")
    specs = [_as_kernel(index, spec) for index, spec in enumerate(kernels)]
    for index, spec in enumerate(specs):
        check_kernel_settings(index, spec.weight, spec.compatibility, spec.normalization)
    return run_kernels(
        unary,
        [spec.features for spec in specs],
        [spec.weight for spec in specs],
        [spec.compatibility for spec in specs],
        [spec.normalization for spec in specs],
        iterations,
        check_values,
    )


__all__ = ["MAX_FEATURE_DIM", "PairwiseKernel", "gaussian_crf"]
