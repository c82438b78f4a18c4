"""Input checks of the dense CRF: every bad input fails here, in Python, with a message that
names the argument, before any kernel runs."""
from __future__ import annotations

import math
import numbers

import torch

from .features import MAX_ELEVATED, elevated_bound

NORMALIZATIONS = ("symmetric", "after")

# Every index the kernels form is an int32; the bilateral lattice has B*N*6 entries.
_MAX_ENTRIES = 2**31 - 1
_BILATERAL_DIM = 5
_UNARY_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# A little below the kernels' limit, so float32 rounding of the elevation cannot cross it.
_ELEVATED_LIMIT = MAX_ELEVATED * 0.999


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def check_positive(name: str, value: float) -> float:
    """A finite, strictly positive number (standard deviations)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_weight(name: str, value) -> None:
    """A finite kernel weight: a number or a 0-dim tensor."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{name} must be a scalar floating-point tensor, got {value}")
        if not _compiling() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be finite, got {value.item()}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def check_iterations(iterations: int) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
        raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")


def check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def check_unary_and_image(unary: torch.Tensor, image: torch.Tensor) -> None:
    """Shapes, dtypes and devices of the CRF inputs."""
    for name, tensor in (("unary", unary), ("image", image)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be 4-D, got shape {tuple(tensor.shape)}")
        if tensor.numel() == 0:
            raise ValueError(f"{name} must not be empty, got shape {tuple(tensor.shape)}")
    if unary.dtype not in _UNARY_DTYPES:
        raise TypeError(f"unary must be float16, bfloat16, float32 or float64, got {unary.dtype}")
    batch, classes, height, width = unary.shape
    if classes < 2:
        raise ValueError(f"unary must have at least 2 classes (dim 1), got shape {tuple(unary.shape)}")
    if image.shape[1] != 3:
        raise ValueError(f"image must be [B, 3, H, W] RGB, got shape {tuple(image.shape)}")
    if (image.shape[0], image.shape[2], image.shape[3]) != (batch, height, width):
        raise ValueError(
            f"image shape {tuple(image.shape)} does not match unary shape {tuple(unary.shape)}: "
            f"expected [{batch}, 3, {height}, {width}]"
        )
    if image.device != unary.device:
        raise ValueError(f"unary is on {unary.device} but image is on {image.device}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise TypeError(f"image must be uint8 (or float with values in 0-255), got {image.dtype}")
    if unary.dtype == torch.float64 and unary.device.type not in ("cpu", "cuda"):
        raise TypeError(f"float64 unary is supported on CPU and CUDA, not {unary.device}")
    if batch * height * width * (_BILATERAL_DIM + 1) > _MAX_ENTRIES:
        raise ValueError(
            f"unary/image of shape {tuple(unary.shape)} is too large: B*H*W = {batch * height * width} "
            f"pixels exceed the int32 lattice indices (at most {_MAX_ENTRIES // (_BILATERAL_DIM + 1)})"
        )


def check_values(unary: torch.Tensor, image: torch.Tensor) -> None:
    """Finite unary, image values in 0-255 (data-dependent: skipped while compiling)."""
    if _compiling():
        return
    if not bool(torch.isfinite(unary).all()):
        raise ValueError("unary contains NaN or Inf")
    if image.is_floating_point():
        if not bool(torch.isfinite(image).all()):
            raise ValueError("image contains NaN or Inf")
        if bool((image < 0).any()) or bool((image > 255).any()):
            raise ValueError("image must hold raw RGB values in [0, 255] (got values outside)")


def check_compatibility(compatibility: torch.Tensor, classes: int, device: torch.device) -> None:
    if not isinstance(compatibility, torch.Tensor):
        raise TypeError(f"compatibility must be a torch.Tensor, got {type(compatibility).__name__}")
    if compatibility.shape != (classes, classes):
        raise ValueError(
            f"compatibility must be [C, C] = [{classes}, {classes}], got {tuple(compatibility.shape)}"
        )
    if not compatibility.is_floating_point():
        raise TypeError(f"compatibility must be floating point, got {compatibility.dtype}")
    if compatibility.device != device:
        raise ValueError(f"compatibility is on {compatibility.device} but unary is on {device}")
    if not _compiling() and not bool(torch.isfinite(compatibility).all()):
        raise ValueError("compatibility contains NaN or Inf")


def check_lattice_range(
    height: int, width: int, pos_xy_std: float, bi_xy_std: float, bi_rgb_std: float
) -> None:
    """Refuses standard deviations so small (or images so large) that lattice coordinates
    would leave the range the kernels resolve (pydensecrf's int16 keys overflow far sooner)."""
    max_x, max_y = float(width - 1), float(height - 1)
    position = elevated_bound([max_x / pos_xy_std, max_y / pos_xy_std])
    if position >= _ELEVATED_LIMIT:
        raise ValueError(
            f"pos_xy_std={pos_xy_std} is too small for a {height}x{width} image: lattice "
            f"coordinates would reach {position:.0f} >= 2^18; use pos_xy_std >= "
            f"{pos_xy_std * position / _ELEVATED_LIMIT:.3g}"
        )
    bilateral = elevated_bound(
        [max_x / bi_xy_std, max_y / bi_xy_std] + [255.0 / bi_rgb_std] * 3
    )
    if bilateral >= _ELEVATED_LIMIT:
        raise ValueError(
            f"bi_xy_std={bi_xy_std} / bi_rgb_std={bi_rgb_std} are too small for a "
            f"{height}x{width} image: lattice coordinates would reach {bilateral:.0f} >= 2^18"
        )
