"""`DenseCRF`: the fully connected CRF as an nn.Module (post-processing or, with
`trainable=True`, an end-to-end trainable CRF-as-RNN style layer)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import _validation as check
from . import mean_field as defaults
from .mean_field import dense_crf


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
        compatibility: optional [C, C] label compatibility (identity = Potts); see `dense_crf`.
        trainable: make pos_w, bi_w (and the compatibility) nn.Parameters.

    Call with unary [B, C, H, W] energies and image [B, 3, H, W] uint8 RGB; returns the
    marginals [B, C, H, W] (float32, or float64 for a float64 unary).
    """

    def __init__(
        self,
        iterations: int = defaults.ITERATIONS,
        pos_w: float = defaults.POS_W,
        pos_xy_std: float = defaults.POS_XY_STD,
        bi_w: float = defaults.BI_W,
        bi_xy_std: float = defaults.BI_XY_STD,
        bi_rgb_std: float = defaults.BI_RGB_STD,
        normalization: str = defaults.NORMALIZATION,
        compatibility: Optional[torch.Tensor] = None,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        check.check_iterations(iterations)
        check.check_normalization(normalization)
        check.check_weight("pos_w", pos_w)
        check.check_weight("bi_w", bi_w)
        self.iterations = int(iterations)
        self.pos_xy_std = check.check_positive("pos_xy_std", pos_xy_std)
        self.bi_xy_std = check.check_positive("bi_xy_std", bi_xy_std)
        self.bi_rgb_std = check.check_positive("bi_rgb_std", bi_rgb_std)
        self.normalization = normalization
        self.trainable = trainable
        if compatibility is not None:
            if not isinstance(compatibility, torch.Tensor) or compatibility.dim() != 2 or (
                compatibility.shape[0] != compatibility.shape[1]
            ):
                raise ValueError("compatibility must be a square [C, C] tensor")
            compatibility = compatibility.detach().clone().to(torch.float32)
        self._register("pos_w", torch.tensor(float(pos_w)))
        self._register("bi_w", torch.tensor(float(bi_w)))
        self._register("compatibility", compatibility)

    def _register(self, name: str, value: Optional[torch.Tensor]) -> None:
        if self.trainable and value is not None:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value, persistent=False)  # settings come from the config

    def forward(self, unary: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Refines unary energies [B, C, H, W] with the CRF; returns marginals [B, C, H, W]."""
        return dense_crf(
            unary,
            image,
            iterations=self.iterations,
            pos_w=self.pos_w,
            pos_xy_std=self.pos_xy_std,
            bi_w=self.bi_w,
            bi_xy_std=self.bi_xy_std,
            bi_rgb_std=self.bi_rgb_std,
            normalization=self.normalization,
            compatibility=self.compatibility,
        )

    def extra_repr(self) -> str:
        return (
            f"iterations={self.iterations}, pos_w={float(self.pos_w):g}, "
            f"pos_xy_std={self.pos_xy_std:g}, bi_w={float(self.bi_w):g}, "
            f"bi_xy_std={self.bi_xy_std:g}, bi_rgb_std={self.bi_rgb_std:g}, "
            f"normalization={self.normalization!r}, trainable={self.trainable}"
        )
