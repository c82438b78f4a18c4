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

from typing import Optional, Union

import torch

from . import _validation as check
from .features import bilateral_features, position_features
from .lattice import Lattice, build_lattice

Weight = Union[float, torch.Tensor]


def _kernel_norms(
    lattice: Lattice, batch: int, pixels: int, dtype: torch.dtype, device: torch.device,
    normalization: str,
) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """(input scale, output scale) of one kernel, each [B, N, 1] (input None: no scaling)."""
    ones = torch.ones(batch, pixels, 1, dtype=dtype, device=device)
    # In float64 and with the 1e-20 guard of the reference, then rounded once.
    mass = lattice.filter(ones).to(torch.float64) + 1e-20
    if normalization == "symmetric":
        norm = mass.rsqrt().to(dtype)
        return norm, norm
    return None, mass.reciprocal().to(dtype)


def mean_field(
    neg_unary: torch.Tensor,
    kernels: list[tuple[Lattice, Optional[torch.Tensor], torch.Tensor, Weight]],
    iterations: int,
    compatibility: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Runs the mean-field loop on -U [B, N, C] with kernels given as
    (lattice, input scale or None, output scale, weight); returns Q [B, N, C]."""
    q = torch.softmax(neg_unary, dim=-1)
    for _ in range(iterations):
        messages = None
        for lattice, scale_in, scale_out, weight in kernels:
            filtered = lattice.filter(q if scale_in is None else q * scale_in) * scale_out
            term = weight * filtered
            if compatibility is not None:
                messages = term if messages is None else messages + term
            else:  # summed in the reference's order: (-U + term_0) + term_1
                messages = neg_unary + term if messages is None else messages + term
        if compatibility is not None:
            messages = neg_unary + messages @ compatibility
        q = torch.softmax(messages, dim=-1)
    return q


def dense_crf(
    unary: torch.Tensor,
    image: torch.Tensor,
    iterations: int = 10,
    pos_w: Weight = 3.0,
    pos_xy_std: float = 1.0,
    bi_w: Weight = 4.0,
    bi_xy_std: float = 67.0,
    bi_rgb_std: float = 3.0,
    normalization: str = "symmetric",
    compatibility: Optional[torch.Tensor] = None,
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

    Returns:
        Marginals Q [B, C, H, W] (each pixel sums to 1), float32 (float64 for a float64 unary).
    """
    check.check_unary_and_image(unary, image)
    check.check_iterations(iterations)
    check.check_normalization(normalization)
    check.check_weight("pos_w", pos_w)
    check.check_weight("bi_w", bi_w)
    pos_xy_std = check.check_positive("pos_xy_std", pos_xy_std)
    bi_xy_std = check.check_positive("bi_xy_std", bi_xy_std)
    bi_rgb_std = check.check_positive("bi_rgb_std", bi_rgb_std)
    batch, classes, height, width = unary.shape
    if compatibility is not None:
        check.check_compatibility(compatibility, classes, unary.device)
    check.check_lattice_range(height, width, pos_xy_std, bi_xy_std, bi_rgb_std)
    check.check_values(unary, image)

    dtype = torch.float64 if unary.dtype == torch.float64 else torch.float32
    pixels = height * width
    # Channels-last [B, N, C]: the lattice kernels read each pixel's C values contiguously.
    neg_unary = -unary.to(dtype).permute(0, 2, 3, 1).reshape(batch, pixels, classes)

    kernels = []
    for features, weight in (
        (position_features(batch, height, width, pos_xy_std, unary.device), pos_w),
        (bilateral_features(image, bi_xy_std, bi_rgb_std), bi_w),
    ):
        lattice = build_lattice(features)
        scale_in, scale_out = _kernel_norms(lattice, batch, pixels, dtype, unary.device, normalization)
        kernels.append((lattice, scale_in, scale_out, weight))

    matrix = compatibility.to(dtype) if compatibility is not None else None
    q = mean_field(neg_unary, kernels, iterations, matrix)
    return q.reshape(batch, height, width, classes).permute(0, 3, 1, 2).contiguous()
