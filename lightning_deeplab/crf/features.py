"""Per-pixel features of the dense-CRF kernels.

`position_features` / `bilateral_features` are DeepLab's two 2-D kernels, laid out [B, N, d]
with pixel n = y*W + x and features in (x, y[, r, g, b]) order. `position_features_nd` /
`bilateral_features_nd` build features of images and volumes of any dimension for
`gaussian_crf`, laid out [B, d, *spatial] with the position features in array-axis order
(for a volume [D, H, W]: z, y, x), as pydensecrf.utils.create_pairwise_* does.

Features are divided by their standard deviation in float32, exactly as pydensecrf does, so
the lattices (and the CRF output) match it.
"""

from __future__ import annotations

import math
import numbers
import struct
from typing import Optional, Sequence, Union

import torch
from .values import is_real

#: Elevated lattice coordinates must stay below this magnitude (csrc/lattice.h kMaxElevated).
MAX_ELEVATED = 2.0**18
#: Largest feature dimension d the lattice takes (csrc/lattice.h kMaxDim).
MAX_FEATURE_DIM = 16

PerAxis = Union[float, Sequence[float]]


def _pixel_grid(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return xs.reshape(-1), ys.reshape(-1)


def position_features(batch: int, height: int, width: int, xy_std: float, device: torch.device) -> torch.Tensor:
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


def _per_axis(name: str, value: PerAxis, axes: int) -> list[float]:
    """A number (every axis) or one positive number per axis."""
    values = [value] * axes if isinstance(value, numbers.Real) else list(value)
    if len(values) != axes:
        raise ValueError(f"{name} must be a number or {axes} numbers (one per axis), got {value!r}")
    for item in values:
        if not is_real(item) or not math.isfinite(item) or item <= 0:
            raise ValueError(f"{name} must hold finite numbers > 0, got {value!r}")
    return [float(item) for item in values]


def position_features_nd(
    spatial_shape: Sequence[int],
    std: PerAxis,
    spacing: Optional[PerAxis] = None,
    batch: int = 1,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Smoothness-kernel features of an image or volume: [batch, k, *spatial_shape] float32
    for k = len(spatial_shape) axes, feature a = index_a * spacing_a / std_a (in array-axis
    order). `std` and `spacing` (physical size of a voxel, e.g. mm; default 1) are one number
    or one per axis. With unit spacing this is pydensecrf.utils.create_pairwise_gaussian."""
    shape = [int(size) for size in spatial_shape]
    if not shape or any(size <= 0 for size in shape):
        raise ValueError(f"spatial_shape must be positive sizes, got {tuple(spatial_shape)}")
    if len(shape) > MAX_FEATURE_DIM:
        raise ValueError(f"at most {MAX_FEATURE_DIM} axes, got spatial_shape {tuple(shape)}")
    stds = _per_axis("std", std, len(shape))
    spacings = None if spacing is None else _per_axis("spacing", spacing, len(shape))
    axes = []
    for axis, size in enumerate(shape):
        coordinate = torch.arange(size, dtype=torch.float32, device=device)
        if spacings is not None:
            coordinate = coordinate * torch.tensor(spacings[axis], dtype=torch.float32, device=device)
        coordinate = coordinate / torch.tensor(stds[axis], dtype=torch.float32, device=device)
        view = [1] * len(shape)
        view[axis] = size
        axes.append(coordinate.reshape(view).expand(shape))
    return torch.stack(axes).unsqueeze(0).expand(batch, *([-1] * (len(shape) + 1))).contiguous()


def bilateral_features_nd(
    image: torch.Tensor,
    std: PerAxis,
    channel_std: PerAxis,
    spacing: Optional[PerAxis] = None,
) -> torch.Tensor:
    """Appearance-kernel features of image [B, ch, *spatial] (RGB 0-255, an intensity, any
    channels): positions as in `position_features_nd`, then channel c / channel_std_c:
    [B, k + ch, *spatial] float32. `channel_std` is one number or one per channel. With unit
    spacing this is pydensecrf.utils.create_pairwise_bilateral (channels moved to dim 1)."""
    if not isinstance(image, torch.Tensor) or image.dim() < 3:
        raise ValueError(
            "image must be a tensor [B, channels, *spatial] (e.g. [B, 3, H, W] or [B, 1, D, H, W]), "
            f"got {getattr(image, 'shape', type(image).__name__)}"
        )
    batch, channels, *spatial = image.shape
    stds = _per_axis("channel_std", channel_std, channels)
    position = position_features_nd(spatial, std, spacing, batch, image.device)
    divisor = torch.tensor(stds, dtype=torch.float32, device=image.device).reshape(1, channels, *([1] * len(spatial)))
    return torch.cat([position, image.to(torch.float32) / divisor], dim=1)
