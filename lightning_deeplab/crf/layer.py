"""The fully connected CRF as nn.Modules (post-processing or, with `trainable=True`, an
end-to-end trainable CRF-as-RNN style layer): `DenseCRF`, DeepLab's two kernels on an RGB
image, and `GaussianCRF`, any Gaussian kernels on features given per call.

Settings are validated once, here; a call checks only its inputs. Constant settings are
non-persistent buffers (they follow `.to(device)` but stay out of checkpoints, so a
checkpoint evaluated with other CRF settings uses the new ones); trainable ones are
parameters."""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
from torch import nn

from . import checks as check
from . import mean_field as defaults
from .gaussian import check_kernel_settings, run_kernels
from .mean_field import KernelSettings, refine
from .values import is_integer


class DenseCRF(nn.Module):
    """Mean-field fully connected CRF with a smoothness and an appearance Gaussian kernel,
    batched and differentiable with respect to the unary (and, when trainable, the kernel
    weights and compatibility). Defaults are DeepLab v2 ResNet-101's.

    Args:
        iterations: mean-field iterations.
        pos_w, pos_xy_std: smoothness kernel weight and spatial standard deviation (pixels).
        bi_w, bi_xy_std, bi_rgb_std: appearance kernel weight, spatial and colour (0-255)
            standard deviations.
        normalization: "symmetric" (matches pydensecrf) or "after" (the 2011 Caffe variant).
        compatibility: optional [C, C] label compatibility (identity = Potts; see `dense_crf`),
            a tensor or a nested list of numbers, or "potts": the C x C identity, the usual
            start of a learned compatibility, made once the class count is known (`num_classes`
            or `set_num_classes`).
        num_classes: the number of labels C, when known at construction (checked against a
            given matrix; needed by "potts" before the first call).
        trainable: make pos_w, bi_w (and the compatibility) nn.Parameters.
        check_values: data-dependent input checks (see `dense_crf`): None = on CPU only.

    Call with unary [B, C, H, W] energies and image [B, 3, H, W] uint8 RGB (and optionally
    another iteration count, e.g. fewer in training); returns the marginals [B, C, H, W]
    (float32, or float64 for a float64 unary).
    """

    def __init__(
        self,
        iterations: int = defaults.ITERATIONS,
        pos_w: float = defaults.POS_W,
        pos_xy_std: float = defaults.POS_XY_STD,
        bi_w: float = defaults.BI_W,
        bi_xy_std: float = defaults.BI_XY_STD,
        bi_rgb_std: float = defaults.BI_RGB_STD,
        normalization: Literal[check.NORMALIZATIONS] = defaults.NORMALIZATION,
        compatibility: Union[Literal["potts"], list[list[float]], torch.Tensor, None] = None,
        num_classes: Optional[int] = None,
        trainable: bool = False,
        check_values: Optional[bool] = None,
    ) -> None:
        super().__init__()
        check.check_iterations(iterations)
        settings = KernelSettings(pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, normalization).validated()
        self.iterations = int(iterations)
        self.pos_xy_std, self.bi_xy_std, self.bi_rgb_std = settings.pos_xy_std, settings.bi_xy_std, settings.bi_rgb_std
        self.normalization = normalization
        self.trainable = bool(trainable)
        self.check_values = check.check_flag("check_values", check_values)
        # "potts" waits for the class count; any other value is a matrix from here on.
        self._potts_pending = isinstance(compatibility, str)
        if self._potts_pending:
            if compatibility != "potts":
                raise ValueError(f'compatibility must be "potts", a [C, C] matrix or None, got {compatibility!r}')
            compatibility = None
        elif compatibility is not None:
            compatibility = _compatibility_matrix(compatibility)
        self._register("pos_w", torch.tensor(float(pos_w)))
        self._register("bi_w", torch.tensor(float(bi_w)))
        self._register("compatibility", compatibility)
        #: The arguments this layer was built with, as plain values (what a checkpoint's
        #: hyperparameters keep to rebuild it; learned values are in its state dict).
        self.init_args = {
            **{key: value for key, value in self.settings().items() if key != "compatibility"},
            "compatibility": "potts" if self._potts_pending else _as_list(compatibility),
            "num_classes": num_classes,
            "trainable": self.trainable,
            "check_values": self.check_values,
        }
        if num_classes is not None:
            self.set_num_classes(num_classes)

    def set_num_classes(self, num_classes: int) -> None:
        """Tells the layer its label count: makes a "potts" compatibility (the identity), or
        checks that a given matrix has that size. Idempotent."""
        if not is_integer(num_classes) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if self._potts_pending:
            identity = torch.eye(num_classes, dtype=self.pos_w.dtype, device=self.pos_w.device)
            delattr(self, "compatibility")  # the placeholder buffer (None)
            self._register("compatibility", identity)
            self._potts_pending = False
        elif self.compatibility is not None and self.compatibility.shape[0] != num_classes:
            raise ValueError(
                f"the CRF's compatibility is {tuple(self.compatibility.shape)} but there are {num_classes} classes"
            )

    def _register(self, name: str, value: Optional[torch.Tensor]) -> None:
        _register_setting(self, name, value, self.trainable)

    def forward(self, unary: torch.Tensor, image: torch.Tensor, iterations: Optional[int] = None) -> torch.Tensor:
        """Refines unary energies [B, C, H, W] with the CRF (``iterations`` mean-field
        iterations instead of the layer's own, when given); returns marginals [B, C, H, W]."""
        if self._potts_pending:
            raise ValueError(
                'compatibility="potts" needs the number of classes: give DenseCRF(num_classes=C) '
                "or call set_num_classes(C) before the first call"
            )
        if iterations is None:
            iterations = self.iterations
        else:
            check.check_iterations(iterations)
        return refine(unary, image, iterations, self.kernel_settings(), self.compatibility, self.check_values)

    def kernel_settings(self) -> KernelSettings:
        """The two kernels' settings, with the current (possibly learned) weights."""
        return KernelSettings(
            self.pos_w, self.pos_xy_std, self.bi_w, self.bi_xy_std, self.bi_rgb_std, self.normalization
        )

    def settings(self) -> dict:
        """The settings this layer runs with, as plain values (the weights' current values)."""
        return {
            "iterations": self.iterations,
            "pos_w": float(self.pos_w.detach()),
            "pos_xy_std": self.pos_xy_std,
            "bi_w": float(self.bi_w.detach()),
            "bi_xy_std": self.bi_xy_std,
            "bi_rgb_std": self.bi_rgb_std,
            "normalization": self.normalization,
            "compatibility": "potts" if self._potts_pending else _as_list(self.compatibility),
        }

    def extra_repr(self) -> str:
        settings = self.settings()
        matrix = settings.pop("compatibility")
        shown = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in settings.items()]
        if matrix is not None:
            shown.append(
                f"compatibility={matrix!r}"
                if isinstance(matrix, str)
                else f"compatibility=[{len(matrix)}, {len(matrix)}]"
            )
        return ", ".join(shown) + f", trainable={self.trainable}"


def _as_list(matrix: Optional[torch.Tensor]) -> Optional[list[list[float]]]:
    return None if matrix is None else matrix.detach().cpu().tolist()


def _compatibility_matrix(value: Union[Sequence[Sequence[float]], torch.Tensor]) -> torch.Tensor:
    """A [C, C] compatibility given as a tensor or a nested list, as a float32 copy."""
    if not isinstance(value, torch.Tensor):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError(f"compatibility must be a tensor or a [C, C] list of numbers, got {type(value).__name__}")
        try:
            value = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"compatibility is not a [C, C] list of numbers: {err}") from err
    check.check_compatibility_matrix(value)
    return value.detach().clone().to(torch.float32)


def _register_setting(module: nn.Module, name: str, value: Optional[torch.Tensor], trainable: bool) -> None:
    """A trainable setting as a parameter, a constant one as a non-persistent buffer."""
    if trainable and value is not None:
        module.register_parameter(name, nn.Parameter(value))
    else:
        module.register_buffer(name, value, persistent=False)


class GaussianCRF(nn.Module):
    """Mean-field dense CRF with any number of Gaussian kernels (the module form of
    `gaussian_crf`): the kernels' weights, compatibilities and normalisations are settings,
    their features come with each call (they depend on the image or volume).

    Args:
        weights: one weight per kernel.
        compatibilities: None (all Potts) or one entry per kernel: None, a [C] per-label
            factor or a [C, C] matrix (see `gaussian_crf` for the sign convention).
        normalizations: one of "symmetric", "after", "before", "none" for all kernels, or one
            per kernel.
        iterations: mean-field iterations.
        trainable: make the weights (and compatibilities) nn.Parameters.
        check_values: data-dependent input checks (see `gaussian_crf`): None = on CPU only.

    Call with unary [B, C, *spatial] and one features tensor per kernel ([B|1, d, *spatial]
    or [B|1, d, N], e.g. from `position_features_nd` / `bilateral_features_nd`).
    """

    def __init__(
        self,
        weights: Sequence[float],
        compatibilities: Optional[Sequence[Optional[torch.Tensor]]] = None,
        normalizations: Union[str, Sequence[str]] = "symmetric",
        iterations: int = defaults.ITERATIONS,
        trainable: bool = False,
        check_values: Optional[bool] = None,
    ) -> None:
        super().__init__()
        if isinstance(weights, (str, torch.Tensor)) or not isinstance(weights, Sequence) or not weights:
            raise TypeError(f"weights must be a non-empty list of numbers, one per kernel, got {weights!r}")
        count = len(weights)
        compatibilities = [None] * count if compatibilities is None else list(compatibilities)
        normalizations = [normalizations] * count if isinstance(normalizations, str) else list(normalizations)
        for name, values in (("compatibilities", compatibilities), ("normalizations", normalizations)):
            if len(values) != count:
                raise ValueError(f"{name} must have one entry per kernel ({count}), got {len(values)}")
        check.check_iterations(iterations)
        for index in range(count):
            check_kernel_settings(index, weights[index], compatibilities[index], normalizations[index])
        self.iterations = int(iterations)
        self.normalizations = tuple(normalizations)
        self.trainable = bool(trainable)
        self.check_values = check.check_flag("check_values", check_values)
        self.num_kernels = count
        for index in range(count):
            weight = weights[index]
            weight = (
                weight.detach().clone().float() if isinstance(weight, torch.Tensor) else torch.tensor(float(weight))
            )
            _register_setting(self, f"weight_{index}", weight.reshape(()), self.trainable)
            compatibility = compatibilities[index]
            if compatibility is not None:
                compatibility = compatibility.detach().clone().to(torch.float32)
            _register_setting(self, f"compatibility_{index}", compatibility, self.trainable)

    def forward(self, unary: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Refines unary [B, C, *spatial] with one features tensor per kernel; returns Q."""
        if isinstance(features, torch.Tensor) or not isinstance(features, Sequence):
            raise TypeError(f"features must be a list of tensors, one per kernel, got {type(features).__name__}")
        return run_kernels(
            unary,
            features,
            [getattr(self, f"weight_{index}") for index in range(self.num_kernels)],
            [getattr(self, f"compatibility_{index}") for index in range(self.num_kernels)],
            self.normalizations,
            self.iterations,
            self.check_values,
        )

    def extra_repr(self) -> str:
        weights = ", ".join(f"{float(getattr(self, f'weight_{i}')):g}" for i in range(self.num_kernels))
        return (
            f"weights=[{weights}], normalizations={list(self.normalizations)}, "
            f"iterations={self.iterations}, trainable={self.trainable}"
        )
