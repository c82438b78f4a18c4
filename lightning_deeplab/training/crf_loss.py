"""Training through the dense CRF (CRF-as-RNN, Zheng et al. 2015) for DeepLab v2.

The network's logits, upsampled to the crop, are the CRF's unary; the cross-entropy of the
mean-field marginals log Q (ignore label excluded) is added to the training loss, so the
gradient reaches the network through every mean-field iteration and, with a trainable CRF,
its kernel weights and compatibility matrix.

Padding: training crops are padded (bottom/right, or left after the flip) with PAD_VALUE and
the ignore label. The CRF runs per sample on the bounding box of the pixels that are not
padding, so padded pixels are not in the lattice at all and cannot pass labels into the image
(a zero unary weight would still let their marginals, which follow their neighbours, carry
messages). PAD_VALUE tells padding from an ignore border inside the image: no pixel of a
0-255 image holds it.

Plain torch: nothing here knows about Lightning.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any, MutableMapping, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runs.checkpoint_config import read_checkpoint
from ..constants import IGNORE_INDEX, PAD_VALUE
from ..crf import DenseCRF, unary_from_softmax
from ..viz import image_to_uint8
from ..crf.values import is_real

#: Key prefix of the CRF layer's entries in the LightningModule's state dict.
CRF_PREFIX = "crf."

Box = tuple[int, int, int, int]  # top, bottom, left, right (bottom and right exclusive)


def unpadded_boxes(image: Tensor) -> list[Optional[Box]]:
    """Per sample of ``image`` [B, 3, H, W] (float 0-255), the bounding box of the pixels that
    are not padding (PAD_VALUE; None when all are)."""
    real = ~(image == PAD_VALUE).all(dim=1)
    rows, cols = real.any(dim=2).cpu(), real.any(dim=1).cpu()
    boxes: list[Optional[Box]] = []
    for b in range(image.shape[0]):
        r, c = rows[b].nonzero()[:, 0], cols[b].nonzero()[:, 0]
        boxes.append((int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1) if len(r) else None)
    return boxes


class CRFRegions(NamedTuple):
    """What the CRF term needs of a batch besides the logits, found once per batch: the uint8
    image evaluation's CRF reads, the groups of samples run together with their unpadded box,
    and the number of labelled pixels in those boxes."""

    colours: Tensor
    groups: list[tuple[slice, Box]]
    labelled: int


def crf_regions(image: Tensor, mask: Tensor, ignore_index: int = IGNORE_INDEX) -> CRFRegions:
    """The :class:`CRFRegions` of ``image`` [B, 3, H, W] (float RGB 0-255, padded with
    PAD_VALUE and the ignore label as the training transform pads) and ``mask`` [B, H, W]."""
    boxes = unpadded_boxes(image)
    if boxes[0] is not None and all(box == boxes[0] for box in boxes):
        groups = [(slice(None), boxes[0])]  # the usual case: one batched call
    else:
        groups = [(slice(b, b + 1), box) for b, box in enumerate(boxes) if box is not None]
    labelled = sum(
        int((mask[samples, top:bottom, left:right] != ignore_index).sum())
        for samples, (top, bottom, left, right) in groups
    )
    return CRFRegions(image_to_uint8(image), groups, labelled)


def region_cross_entropy(
    crf: DenseCRF,
    logits: Tensor,
    mask: Tensor,
    regions: CRFRegions,
    iterations: Optional[int] = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """`crf_cross_entropy` with the batch's regions already found."""
    if logits.dtype != torch.float64:
        logits = logits.float()  # the CRF runs in float32 even under mixed precision
    total = logits.new_zeros(())
    with torch.autocast(logits.device.type, enabled=False):
        logits = F.interpolate(logits, size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
        for samples, (top, bottom, left, right) in regions.groups:
            region = (samples, slice(None), slice(top, bottom), slice(left, right))
            # the unary evaluation gives the CRF (clipped -log softmax), so it learns for that
            unary = unary_from_softmax(torch.softmax(logits[region], dim=1))
            q = crf(unary, regions.colours[region], iterations=iterations)
            log_q = torch.log(q.clamp_min(torch.finfo(q.dtype).tiny))
            target = mask[samples, top:bottom, left:right]
            total = total + F.nll_loss(log_q, target, ignore_index=ignore_index, reduction="sum")
    return total / max(regions.labelled, 1)


def crf_cross_entropy(
    crf: DenseCRF,
    logits: Tensor,
    image: Tensor,
    mask: Tensor,
    iterations: Optional[int] = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Mean cross-entropy, over the batch's labelled pixels, of the CRF marginals of ``logits``
    [B, C, h, w] upsampled (bilinear) to ``image`` [B, 3, H, W] (float RGB 0-255, padded with
    PAD_VALUE and the ignore label as the training transform pads), against ``mask`` [B, H, W].
    ``iterations`` overrides the CRF's own count. Padding never enters the CRF."""
    regions = crf_regions(image, mask, ignore_index)
    return region_cross_entropy(crf, logits, mask, regions, iterations, ignore_index)


@dataclass(frozen=True)
class CRFTraining:
    """Training through the dense CRF (CRF-as-RNN): the fused logits, upsampled to the crop, go
    through the module's CRF with the crop's image (padding left out), and the cross-entropy of
    its marginals, times ``weight``, is added to the loss. A CRF built with ``trainable=True``
    learns pos_w, bi_w and its compatibility (``"potts"`` starts it at the identity).

    Attributes:
        weight: weight of that cross-entropy in the loss.
        iterations: mean-field iterations in training (None: the CRF's own).
        lr_mult: LR multiplier of the CRF's learned parameters (their own optimiser group,
            without weight decay).
        per_scale: every MSC output through the CRF too, not only the fused one.
    """

    weight: float = 1.0
    iterations: Optional[int] = None
    lr_mult: float = 1.0
    per_scale: bool = False

    def __post_init__(self) -> None:
        for name in ("weight", "lr_mult"):
            value = getattr(self, name)
            if not is_real(value) or not value >= 0:
                raise ValueError(f"crf_training.{name} must be a number >= 0, got {value!r}")
        if self.iterations is not None and (
            isinstance(self.iterations, bool)
            or not isinstance(self.iterations, numbers.Integral)
            or self.iterations < 1
        ):
            raise ValueError(f"crf_training.iterations must be a positive int or null, got {self.iterations!r}")
        if not isinstance(self.per_scale, bool):
            raise TypeError(f"crf_training.per_scale must be true or false, got {self.per_scale!r}")

    def losses(
        self, crf: DenseCRF, outputs: Sequence[Tensor], names: Sequence[str], image: Tensor, mask: Tensor
    ) -> dict[str, Tensor]:
        """Weighted CRF losses, named ``crf_<output>``, of the fused output (the last) or, with
        ``per_scale``, of every output of ``forward_multi`` (the batch's regions found once)."""
        chosen = list(zip(names, outputs)) if self.per_scale else [(names[-1], outputs[-1])]
        regions = crf_regions(image, mask)
        return {
            f"crf_{name}": self.weight * region_cross_entropy(crf, logits, mask, regions, self.iterations)
            for name, logits in chosen
        }


def crf_parameter_group(crf: nn.Module, training: Optional[CRFTraining], lr: float) -> Optional[dict[str, Any]]:
    """The optimiser group of the CRF's learned parameters (no weight decay: it would pull the
    kernel weights and the compatibility towards 0), or None when the CRF learns nothing."""
    params = [p for p in crf.parameters() if p.requires_grad]
    if not params:
        return None
    if training is None:
        raise ValueError(
            "model.crf.init_args.trainable is true but model.crf_training is not set: nothing would "
            "train the CRF's parameters; set model.crf_training (e.g. {iterations: 5}), or trainable: false"
        )
    return {"name": "crf", "params": params, "lr": lr * training.lr_mult, "weight_decay": 0.0}


def learned_crf_values(ckpt_path: str) -> dict[str, Tensor]:
    """The CRF values a checkpoint learned (``pos_w``, ``bi_w``, ``compatibility``, those it has),
    for a CRF built outside the LightningModule (``deeplab crf --ckpt``)."""
    state = read_checkpoint(ckpt_path, "--ckpt")["state_dict"]
    learned = {key[len(CRF_PREFIX) :]: value for key, value in state.items() if key.startswith(CRF_PREFIX)}
    if not learned:
        raise ValueError(
            f"--ckpt {ckpt_path} holds no learned CRF values (it was not trained with crf_training and a "
            "trainable CRF); give the CRF settings as options instead"
        )
    return learned


def reconcile_crf_state(state: MutableMapping[str, Tensor], crf: nn.Module) -> None:
    """A checkpoint's state dict, before it is loaded into a module with ``crf``: the CRF's
    learned parameters come from the checkpoint where it has them, everything else about the
    CRF from the configuration (constants are not saved). Learned values that the configured
    CRF does not learn (``trainable`` off, or no compatibility) are dropped with a warning; a
    learned parameter the checkpoint lacks (a first-stage checkpoint) keeps its configured
    start value."""
    learned = {CRF_PREFIX + name: value for name, value in crf.named_parameters()}
    unused = sorted(key for key in state if key.startswith(CRF_PREFIX) and key not in learned)
    if unused:
        warnings.warn(
            f"the checkpoint holds learned CRF values ({', '.join(unused)}) that the configured CRF does "
            "not learn (crf trainable: false, or no compatibility): the configuration's values are used",
            stacklevel=2,
        )
        for key in unused:
            del state[key]
    for key, value in learned.items():
        saved = state.get(key)
        if saved is not None and saved.shape != value.shape:
            raise ValueError(
                f"the checkpoint's learned {key} is {tuple(saved.shape)} but the configured CRF's is "
                f"{tuple(value.shape)}"
            )
        state.setdefault(key, value.detach().clone())
