"""Segmentation scores from one confusion matrix accumulated over a whole split.

This is the PASCAL VOC protocol: per-image averaging, or dropping the ignore label after
resizing, inflates mIoU by points. The confusion matrix itself is torchmetrics' (summed across
processes under DDP); this module only turns it into numbers.

Which classes the means run over (``miou_over``, one of :data:`MIOU_OVER`):

- ``"all"`` (the default): every class, a class with no pixel in the ground truth nor in the
  predictions scoring 0, as DeepLab's MATLAB evaluation ``MyVOCevalseg.m`` does (its IoU and
  class accuracy divide by 1 when the denominator is 0, and the means divide by the number of
  classes). This is the number the paper reports.
- ``"gt"``: the classes present in the ground truth (as kazuto1011/deeplab-pytorch scores).
- ``"present"``: the classes present in the ground truth or in the predictions.

All three agree when every class occurs in the ground truth (the VOC val split).
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from ..constants import IGNORE_INDEX

#: Valid ``miou_over`` names (see the module docstring); the first is the default.
MIOU_OVER = ("all", "gt", "present")
DEFAULT_MIOU_OVER = MIOU_OVER[0]


def confusion_matrix_metric(num_classes: int, ignore_index: int = IGNORE_INDEX) -> MulticlassConfusionMatrix:
    """A metric that accumulates a [C, C] matrix (rows: ground truth, columns: prediction)."""
    return MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index, normalize="none")


def _mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return values[keep].mean() if keep.any() else torch.tensor(float("nan"), dtype=values.dtype)


def scores_from_confusion(confusion: torch.Tensor, miou_over: str = DEFAULT_MIOU_OVER) -> dict[str, torch.Tensor]:
    """mIoU, per-class IoU, pixel accuracy, mean class accuracy and frequency-weighted IoU.

    ``iou`` holds NaN for a class with no pixel in the ground truth nor in the predictions, and
    ``mIoU`` / ``mean_acc`` average over the classes ``miou_over`` names (module docstring): with
    ``"all"`` such a class counts 0 in both means, and so does a class absent from the ground
    truth in ``mean_acc``. ``fw_iou`` weighs IoU by ground-truth frequency (absent classes weigh 0).
    """
    if miou_over not in MIOU_OVER:
        raise ValueError(f"unknown miou_over {miou_over!r}; valid: {', '.join(MIOU_OVER)}")
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
    if miou_over == "all":
        miou, mean_acc = torch.nan_to_num(iou).mean(), torch.nan_to_num(acc).mean()
    else:
        miou = _mean(iou, gt > 0 if miou_over == "gt" else present)
        mean_acc = _mean(acc, gt > 0)
    return {
        "mIoU": miou,
        "iou": iou,
        "pixel_acc": tp.sum() / total.clamp(min=1),
        "mean_acc": mean_acc,
        "fw_iou": (freq[present] * iou[present]).sum(),
    }
