import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from lightning_deeplab.constants import IGNORE_INDEX
from lightning_deeplab.evaluation.metrics import confusion_matrix_metric, scores_from_confusion


def numpy_confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    keep = gt != IGNORE_INDEX
    return np.bincount(num_classes * gt[keep] + pred[keep], minlength=num_classes**2).reshape(num_classes, num_classes)


def random_batches(num_classes, shapes, seed=0):
    rng = np.random.default_rng(seed)
    for h, w in shapes:
        gt = rng.integers(0, num_classes, size=(1, h, w))
        gt[rng.random((1, h, w)) < 0.1] = IGNORE_INDEX
        # predictions that agree with the ground truth most of the time
        pred = np.where(rng.random((1, h, w)) < 0.7, gt % num_classes, rng.integers(0, num_classes, size=(1, h, w)))
        pred[gt == IGNORE_INDEX] = rng.integers(0, num_classes, size=(gt == IGNORE_INDEX).sum())
        yield gt, pred


def test_scores_match_a_numpy_confusion_matrix_over_the_whole_split():
    num_classes = 5
    metric = confusion_matrix_metric(num_classes)
    total = np.zeros((num_classes, num_classes), np.int64)
    per_image_miou = []
    for gt, pred in random_batches(num_classes, [(7, 9), (13, 5), (4, 4)]):
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
        cm = numpy_confusion(gt.ravel(), pred.ravel(), num_classes)
        total += cm
        per_image_miou.append(np.nanmean(np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))))
    cm = metric.compute().numpy()
    np.testing.assert_array_equal(cm, total)

    scores = scores_from_confusion(torch.from_numpy(cm))
    tp = np.diag(total)
    iou = tp / (total.sum(0) + total.sum(1) - tp)
    np.testing.assert_allclose(scores["iou"].numpy(), iou, rtol=1e-12)
    assert scores["mIoU"].item() == pytest.approx(iou.mean(), rel=1e-12)
    assert scores["pixel_acc"].item() == pytest.approx(tp.sum() / total.sum(), rel=1e-12)
    assert scores["mean_acc"].item() == pytest.approx(np.mean(tp / total.sum(1)), rel=1e-12)
    freq = total.sum(1) / total.sum()
    assert scores["fw_iou"].item() == pytest.approx((freq * iou).sum(), rel=1e-12)
    # One matrix over the split is not the mean of per-image scores.
    assert scores["mIoU"].item() != pytest.approx(np.mean(per_image_miou), rel=1e-6)


def test_miou_agrees_with_torchmetrics_jaccard_index():
    num_classes = 4
    ours = confusion_matrix_metric(num_classes)
    theirs = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=IGNORE_INDEX, average="macro")
    for gt, pred in random_batches(num_classes, [(16, 16), (8, 20)], seed=3):
        ours.update(torch.from_numpy(pred), torch.from_numpy(gt))
        theirs.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert scores_from_confusion(ours.compute())["mIoU"].item() == pytest.approx(theirs.compute().item(), abs=1e-6)


def test_miou_over_all_gt_and_present_on_a_matrix_where_they_differ():
    # rows: ground truth, columns: prediction. Class 2 is predicted but absent from the ground
    # truth; class 3 appears nowhere.
    cm = torch.tensor([[5, 1, 1, 0], [2, 8, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    iou0, iou1 = 5 / (7 + 7 - 5), 8 / (10 + 9 - 8)
    acc0, acc1 = 5 / 7, 8 / 10
    expected = {
        "all": ((iou0 + iou1 + 0 + 0) / 4, (acc0 + acc1 + 0 + 0) / 4),  # MyVOCevalseg.m: absent classes score 0
        "gt": ((iou0 + iou1) / 2, (acc0 + acc1) / 2),
        "present": ((iou0 + iou1 + 0) / 3, (acc0 + acc1) / 2),
    }
    for miou_over, (miou, mean_acc) in expected.items():
        scores = scores_from_confusion(cm, miou_over)
        assert scores["mIoU"].item() == pytest.approx(miou, rel=1e-12), miou_over
        assert scores["mean_acc"].item() == pytest.approx(mean_acc, rel=1e-12), miou_over
        assert scores["iou"][2].item() == 0.0 and torch.isnan(scores["iou"][3])
    assert len({round(v[0], 9) for v in expected.values()}) == 3  # the three really differ here
    assert scores_from_confusion(cm)["mIoU"].item() == pytest.approx(expected["all"][0])  # the official default


def test_miou_over_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="miou_over"):
        scores_from_confusion(torch.eye(2), "everything")
