"""Multi-scale inputs (MSC): the scales, the resized input sizes, and the max fusion.

Two ways to resize (``msc_resize``):

- ``"caffe"``: the official DeepLab v2 nets' ``Interp`` layer. A scale is a ratio
  ``zoom / shrink`` of integers (0.75 = 3/4: ``shrink_factor: 4, zoom_factor: 3``; 0.5:
  ``shrink_factor: 2``), and a side ``n`` becomes ``(n - 1) // shrink + 1``, then
  ``(m - 1) * zoom + 1`` (500 -> 373 at 0.75, 321 -> 241). The weights are corner-aligned
  bilinear: output pixel ``i`` samples input position ``i * (n_in - 1) / (n_out - 1)``
  (``align_corners=True``). The scaled branches' score maps are resized back to the full-scale
  map's size with the same Interp before the max fusion.
- ``"pytorch"``: sides ``ceil(n * scale)`` and ``align_corners=False`` both ways (what most
  PyTorch ports train with).
"""

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import MSC_RESIZES  # noqa: F401 (the valid ``msc_resize`` names)
from ..crf.values import is_real

# Guards ceil() against products such as 100 * 0.7 = 70.00000000000001.
_ROUNDING_SLACK = 1e-6
#: Largest shrink factor tried when a scale is written as Caffe's ``zoom / shrink``.
_MAX_SHRINK = 100


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
        if not is_real(scale):
            raise TypeError(f"msc_scales must hold numbers, got {scale!r} in {scales!r}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"msc_scales must be positive and finite, got {scale!r} in {scales!r}")
    result = tuple(float(scale) for scale in scales)
    if len(set(result)) != len(result):
        raise ValueError(f"msc_scales must be distinct, got {scales!r}")
    if 1.0 in result and result[0] != 1.0:
        raise ValueError(f"msc_scales must start with 1.0 when it holds 1.0, got {scales!r}")
    return result


def caffe_factors(scale: float) -> tuple[int, int]:
    """``(zoom, shrink)`` of Caffe's Interp for ``scale`` (0.75 -> (3, 4), 0.5 -> (1, 2), 1.5 -> (3, 2)).

    Raises ValueError for a scale that is no ratio of integers with a shrink up to 100.
    """
    ratio = Fraction(scale).limit_denominator(_MAX_SHRINK)
    if abs(float(ratio) - scale) > 1e-9:
        raise ValueError(
            f"msc_resize='caffe' needs each MSC scale as zoom/shrink with integers (shrink <= {_MAX_SHRINK}), "
            f"as Caffe's Interp layer takes it; {scale!r} is not (use msc_resize='pytorch')"
        )
    return ratio.numerator, ratio.denominator


def validate_caffe_scales(scales: Sequence[float]) -> None:
    """Check that every scale has Caffe Interp factors (see :func:`caffe_factors`)."""
    for scale in scales:
        caffe_factors(scale)


def caffe_scaled_size(size: int, scale: float) -> int:
    """The side Caffe's Interp gives a side ``size`` at ``scale``: ``((size - 1) // shrink) * zoom + 1``."""
    zoom, shrink = caffe_factors(scale)
    return ((size - 1) // shrink) * zoom + 1


def scaled_size(size: int, scale: float) -> int:
    """The side of an input of side ``size`` resized by ``scale``: ``ceil(size * scale)``.

    Ceil reproduces the Caffe sizes for the usual crops (321 -> 241 and 161; 513 -> 385 and 257).
    """
    return max(1, math.ceil(size * scale - _ROUNDING_SLACK))


def resize_input(x: Tensor, scale: float, method: str = "pytorch") -> Tensor:
    """``x`` ([B, C, H, W]) bilinearly resized by ``scale`` the ``method`` way (one of :data:`MSC_RESIZES`)."""
    if scale == 1.0:
        return x
    side = caffe_scaled_size if method == "caffe" else scaled_size
    size = (side(x.shape[-2], scale), side(x.shape[-1], scale))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=method == "caffe")


def fuse_max(score_maps: Sequence[Tensor], method: str = "pytorch") -> Tensor:
    """Element-wise max of the score maps, each bilinearly resized (the ``method`` way) to the first one's size."""
    size = score_maps[0].shape[-2:]
    corners = method == "caffe"
    resized = [
        m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=corners)
        for m in score_maps
    ]
    return torch.stack(resized).amax(dim=0)
