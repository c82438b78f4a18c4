"""Segmentation scores from one confusion matrix accumulated over a whole split.

This is the PASCAL VOC protocol: per-image averaging, or dropping the ignore label after
resizing, inflates mIoU by points. The confusion matrix itself is torchmetrics' (summed across
processes under DDP); this module only turns it into numbers.
"""
from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from .constants import IGNORE_INDEX


def confusion_matrix_metric(num_classes: int, ignore_index: int = IGNORE_INDEX) -> MulticlassConfusionMatrix:
    """A metric that accumulates a [C, C] matrix (rows: ground truth, columns: prediction)."""
    return MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index, normalize="none")


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """mIoU, per-class IoU, pixel accuracy, mean class accuracy and frequency-weighted IoU.

    Classes that appear neither in the ground truth nor in the predictions have no IoU (NaN in
    `iou`) and are left out of the means, as the VOC evaluation does.
    """
    cm = confusion.double()
    tp = cm.diagonal()
    gt = cm.sum(dim=1)
    pred = cm.sum(dim=0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    freq = gt / total.clamp(min=1)
    present = ~torch.isnan(iou)
    return {
        "mIoU": iou[present].mean() if present.any() else torch.tensor(float("nan"), dtype=cm.dtype),
        "iou": iou,
        "pixel_acc": tp.sum() / total.clamp(min=1),
        "mean_acc": acc[~torch.isnan(acc)].mean() if (~torch.isnan(acc)).any() else torch.tensor(float("nan")),
        "fw_iou": (freq[present] * iou[present]).sum(),
    }
