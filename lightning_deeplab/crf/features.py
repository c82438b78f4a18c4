"""Per-pixel features of the two dense-CRF kernels, laid out [B, N, d] with pixel n = y*W + x.

Features are divided by their standard deviation in float32, exactly as pydensecrf does, so
the lattices (and the CRF output) match it.
"""
from __future__ import annotations

import math
import struct
from typing import Sequence

import torch

#: Elevated lattice coordinates must stay below this magnitude (csrc/lattice.h kMaxElevated).
MAX_ELEVATED = 2.0**18


def _pixel_grid(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return xs.reshape(-1), ys.reshape(-1)


def position_features(
    batch: int, height: int, width: int, xy_std: float, device: torch.device
) -> torch.Tensor:
    """Smoothness-kernel features (x / xy_std, y / xy_std): [B, H*W, 2] float32."""
    xs, ys = _pixel_grid(height, width, device)
    std = torch.tensor(xy_std, dtype=torch.float32, device=device)
    features = torch.stack([xs / std, ys / std], dim=-1)
    return features.unsqueeze(0).expand(batch, -1, -1).contiguous()


def bilateral_features(image: torch.Tensor, xy_std: float, rgb_std: float) -> torch.Tensor:
    """Appearance-kernel features (x, y) / xy_std and (r, g, b) / rgb_std of image
    [B, 3, H, W] (raw 0-255 RGB values): [B, H*W, 5] float32."""
    batch, _, height, width = image.shape
    xs, ys = _pixel_grid(height, width, image.device)
    xy_div = torch.tensor(xy_std, dtype=torch.float32, device=image.device)
    rgb_div = torch.tensor(rgb_std, dtype=torch.float32, device=image.device)
    position = torch.stack([xs / xy_div, ys / xy_div], dim=-1).expand(batch, -1, -1)
    colour = image.to(torch.float32).reshape(batch, 3, -1).transpose(1, 2) / rgb_div
    return torch.cat([position, colour], dim=-1).contiguous()


def elevation_scale(dim: int) -> list[float]:
    """Diagonal of the lattice's elevation matrix (csrc/lattice.h elevation_scale)."""
    inv_std = struct.unpack("f", struct.pack("f", math.sqrt(2.0 / 3.0) * (dim + 1)))[0]  # as float32
    return [1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std for i in range(dim)]


def elevated_bound(max_abs_features: Sequence[float]) -> float:
    """Upper bound on |elevated coordinate| for features bounded by max_abs_features
    (one bound per feature dimension), following the elevation in csrc/lattice.h."""
    scale = elevation_scale(len(max_abs_features))
    cf = [m * s for m, s in zip(max_abs_features, scale)]
    dim = len(cf)
    bound = sum(cf)  # coordinate 0
    for j in range(1, dim + 1):
        bound = max(bound, sum(cf[j:]) + j * cf[j - 1])
    return bound
