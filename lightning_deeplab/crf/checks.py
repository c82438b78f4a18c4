"""Input checks of the dense CRF: every bad input fails here, in Python, with a message that
names the argument, before any kernel runs. Public: the pydensecrf API refuses the same inputs
with the same words. Settings are checked once (in a layer's
`__init__` or at a functional entry); per call only the inputs are.

Data-dependent checks (NaN/Inf, value ranges) read values back to the host. They run on CPU
tensors always and on other devices only when asked (`check_values=True`), as one
synchronisation; the kernels still refuse non-finite or out-of-range lattice features."""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from .features import MAX_ELEVATED, MAX_FEATURE_DIM, elevated_bound
from .values import is_integer, is_real

#: Normalisations of DeepLab's `DenseCRF` / `dense_crf`.
NORMALIZATIONS = ("symmetric", "after")
#: Normalisations of a kernel of `gaussian_crf` (pydensecrf's four).
KERNEL_NORMALIZATIONS = ("symmetric", "after", "before", "none")

# Every index the kernels form is an int32; the bilateral lattice has B*N*6 entries.
_MAX_ENTRIES = 2**31 - 1
_BILATERAL_DIM = 5
_UNARY_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# A little below the kernels' limit, so float32 rounding of the elevation cannot cross it.
_ELEVATED_LIMIT = MAX_ELEVATED * 0.999
#: The largest kernel weight (and compatibility entry) accepted. A normalised message is at most
#: the square root of a lattice's mass, and "none" its mass (~1e9 at the largest image), so
#: weight x compatibility x message stays far below float32's 3.4e38: energies stay finite (at
#: 3e38 they overflow to Inf and the softmax returns NaN). Real weights are below 1e3.
MAX_WEIGHT = 1e12


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def check_positive(name: str, value: float) -> float:
    """A finite, strictly positive number (standard deviations)."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def wants_value_checks(device: torch.device, check_values: Optional[bool]) -> bool:
    """Whether to run the data-dependent checks: by default on CPU only (no device sync)."""
    if _compiling():
        return False
    return device.type == "cpu" if check_values is None else bool(check_values)


def check_flag(name: str, value) -> Optional[bool]:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be None, True or False, got {value!r}")
    return value


def reject_numpy(name: str, value, how: str) -> None:
    """A clear TypeError for a NumPy array where a tensor is expected (crf/ imports no numpy)."""
    if type(value).__module__ == "numpy":
        raise TypeError(f"{name} must be a torch.Tensor, got a NumPy array; convert it with {how}")


def check_weight(name: str, value) -> None:
    """A finite kernel weight of at most MAX_WEIGHT in magnitude: a number or a 0-dim tensor."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{name} must be a scalar floating-point tensor, got {value}")
        if wants_value_checks(value.device, None):
            _check_weight_value(name, value.item())
        return
    if not is_real(value):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    _check_weight_value(name, float(value))


def _check_weight_value(name: str, value: float) -> None:
    if not math.isfinite(value) or abs(value) > MAX_WEIGHT:
        raise ValueError(
            f"{name} must be finite and at most {MAX_WEIGHT:g} in magnitude (larger weights overflow "
            f"the CRF's energies to Inf and its marginals to NaN), got {value}"
        )


def check_iterations(iterations: int) -> None:
    if not is_integer(iterations):
        raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")


def check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def check_kernel_normalization(name: str, normalization: str) -> None:
    if normalization not in KERNEL_NORMALIZATIONS:
        raise ValueError(f"{name} must be one of {KERNEL_NORMALIZATIONS}, got {normalization!r}")


def check_unary_and_image(unary: torch.Tensor, image: torch.Tensor) -> None:
    """Shapes, dtypes and devices of the CRF inputs."""
    reject_numpy("unary", unary, "torch.from_numpy(unary)[None] ([C, H, W] -> [1, C, H, W])")
    reject_numpy("image", image, "torch.from_numpy(image).permute(2, 0, 1)[None] ([H, W, 3] uint8 -> [1, 3, H, W])")
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


_warned_unit_range = False


def _finite_extremes(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(low) & torch.isfinite(high)


def check_values(unary: torch.Tensor, image: torch.Tensor, enabled: bool) -> None:
    """Finite unary, image values in 0-255, when `enabled`; and a warning (once per process)
    for a float image holding values only in [0, 1]. All read back in one synchronisation;
    a float image is read even when not `enabled` until the warning has been given (so on
    CUDA a float image costs one sync per call until then; uint8 images none)."""
    global _warned_unit_range
    warn = image.is_floating_point() and not _warned_unit_range and not _compiling()
    if not (enabled or warn):
        return
    # Extremes rather than isfinite(): a reduction without a temporary as large as the input
    # (isfinite of a 4000x3000x21 unary held 1.7 GB), and NaN propagates through min and max.
    flags = []
    if enabled:
        flags.append(~_finite_extremes(*torch.aminmax(unary)))
    if image.is_floating_point():
        low, high = torch.aminmax(image)
        if enabled:
            flags += [~_finite_extremes(low, high), (low < 0) | (high > 255)]
        flags.append((low >= 0) & (high <= 1))
    if not flags:
        return
    values = torch.stack(flags).tolist()
    if enabled:
        if values[0]:
            raise ValueError("unary contains NaN or Inf")
        if image.is_floating_point() and values[1]:
            raise ValueError("image contains NaN or Inf")
        if image.is_floating_point() and values[2]:
            raise ValueError("image must hold raw RGB values in [0, 255] (got values outside)")
    if warn and values[-1] and not _warned_unit_range:
        _warned_unit_range = True
        warnings.warn(
            "image is a float tensor with values only in [0, 1]; the CRF expects raw RGB values "
            "in 0-255 (uint8, or float 0-255): multiply by 255 (e.g. (image * 255).round().byte())",
            UserWarning,
            stacklevel=3,
        )


def check_compatibility_matrix(compatibility: torch.Tensor) -> None:
    """A finite, floating-point, square [C, C] tensor (its size is checked against the unary per call)."""
    if not isinstance(compatibility, torch.Tensor):
        raise TypeError(f"compatibility must be a torch.Tensor, got {type(compatibility).__name__}")
    if compatibility.dim() != 2 or compatibility.shape[0] != compatibility.shape[1]:
        raise ValueError(f"compatibility must be a square [C, C] tensor, got shape {tuple(compatibility.shape)}")
    if not compatibility.is_floating_point():
        raise TypeError(f"compatibility must be floating point, got {compatibility.dtype}")
    check_finite_compatibility("compatibility", compatibility)


def check_finite_compatibility(name: str, compatibility: torch.Tensor) -> None:
    """Finite entries of at most MAX_WEIGHT in magnitude (they multiply the weighted messages)."""
    if not wants_value_checks(compatibility.device, None):
        return
    if not bool(torch.isfinite(compatibility).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    largest = float(compatibility.detach().abs().max()) if compatibility.numel() else 0.0
    if largest > MAX_WEIGHT:
        raise ValueError(
            f"{name} has an entry of magnitude {largest:g}; at most {MAX_WEIGHT:g} is accepted "
            "(larger ones overflow the CRF's energies to Inf and its marginals to NaN)"
        )


def check_lattice_range(height: int, width: int, pos_xy_std: float, bi_xy_std: float, bi_rgb_std: float) -> None:
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
    bilateral = elevated_bound([max_x / bi_xy_std, max_y / bi_xy_std] + [255.0 / bi_rgb_std] * 3)
    if bilateral >= _ELEVATED_LIMIT:
        raise ValueError(
            f"bi_xy_std={bi_xy_std} / bi_rgb_std={bi_rgb_std} are too small for a "
            f"{height}x{width} image: lattice coordinates would reach {bilateral:.0f} >= 2^18"
        )


def check_feature_values(name: str, features: torch.Tensor) -> None:
    """Finite features [B, N, d] whose elevated lattice coordinates stay in range (reads the
    per-dimension maxima back: call only when value checks are wanted)."""
    bounds = features.abs().amax(dim=(0, 1)).tolist()
    if not all(math.isfinite(bound) for bound in bounds):
        raise ValueError(f"{name} contains NaN or Inf")
    reach = elevated_bound(bounds)
    if reach >= _ELEVATED_LIMIT:
        raise ValueError(
            f"{name} are too large for the lattice: coordinates would reach {reach:.0f} >= 2^18; "
            f"divide them by larger standard deviations (by at least {reach / _ELEVATED_LIMIT:.3g}x)"
        )


def check_feature_dim(name: str, dim: int) -> None:
    if not 1 <= dim <= MAX_FEATURE_DIM:
        raise ValueError(f"{name} must have 1 to {MAX_FEATURE_DIM} feature dimensions, got d = {dim}")


def check_index_range(name: str, batch: int, points: int, dim: int) -> None:
    if batch * points * (dim + 1) > _MAX_ENTRIES:
        raise ValueError(
            f"{name} is too large: B*N*(d+1) = {batch * points * (dim + 1)} lattice entries exceed "
            f"the int32 indices (at most {_MAX_ENTRIES})"
        )
