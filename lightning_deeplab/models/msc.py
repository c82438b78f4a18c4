"""Multi-scale inputs (MSC): the scales, the resized input sizes, and the max fusion."""

import math
from collections.abc import Sequence
from numbers import Real
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Guards ceil() against products such as 100 * 0.7 = 70.00000000000001.
_ROUNDING_SLACK = 1e-6


def validate_scales(scales: Optional[Sequence[float]]) -> tuple[float, ...]:
    """Check ``msc_scales`` and return it as a tuple of floats (``None`` -> ``(1.0,)``, MSC off).

    Scales must be positive, finite and distinct; 1.0, when present, must come first because the
    fused map takes the size of the first scale's map.
    """
    if scales is None:
        return (1.0,)
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise TypeError(f"msc_scales must be None or a sequence of floats, got {scales!r}")
    if len(scales) == 0:
        raise ValueError("msc_scales must not be empty (use None to turn MSC off)")
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, Real):
            raise TypeError(f"msc_scales must hold numbers, got {scale!r} in {scales!r}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"msc_scales must be positive and finite, got {scale!r} in {scales!r}")
    result = tuple(float(scale) for scale in scales)
    if len(set(result)) != len(result):
        raise ValueError(f"msc_scales must be distinct, got {scales!r}")
    if 1.0 in result and result[0] != 1.0:
        raise ValueError(f"msc_scales must start with 1.0 when it holds 1.0, got {scales!r}")
    return result


def scaled_size(size: int, scale: float) -> int:
    """The side of an input of side ``size`` resized by ``scale``: ``ceil(size * scale)``.

    Ceil reproduces the Caffe sizes for the usual crops (321 -> 241 and 161; 513 -> 385 and 257).
    """
    return max(1, math.ceil(size * scale - _ROUNDING_SLACK))


def resize_input(x: Tensor, scale: float) -> Tensor:
    """``x`` ([B, C, H, W]) bilinearly resized to :func:`scaled_size` of each side."""
    if scale == 1.0:
        return x
    size = (scaled_size(x.shape[-2], scale), scaled_size(x.shape[-1], scale))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def fuse_max(score_maps: Sequence[Tensor]) -> Tensor:
    """Element-wise max of the score maps, each bilinearly resized to the first one's size."""
    size = score_maps[0].shape[-2:]
    resized = [
        m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        for m in score_maps
    ]
    return torch.stack(resized).amax(dim=0)
