"""The demo driver end to end on a tiny synthetic set: it trains, evaluates with and without
the CRF, and writes the results table, JSON, plot and palette PNG predictions."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from tiny_run import tiny_args

from lightning_deeplab.commands.demo import run


@pytest.mark.slow
def test_demo_writes_scores_predictions_and_pictures(tmp_path):
    out = str(tmp_path / "demo")
    extra = tiny_args(str(tmp_path / "data"), out, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2")
    extra = extra[2:]  # run() passes the config itself
    summary = run(out, extra_args=extra, num_examples=3)

    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(summary))
    assert saved["steps"] == 2
    report = saved["scores"]
    assert set(report["without_crf"]["iou"]) == set(report["classes"])
    assert report["with_crf"] is not None and 0.0 <= report["with_crf"]["mIoU"] <= 1.0
    assert "IoU with CRF" in open(os.path.join(out, "results.md")).read()
    assert os.path.getsize(os.path.join(out, "per_class_iou.png")) > 0

    for folder in ("predictions", "predictions_crf"):
        names = sorted(os.listdir(os.path.join(out, folder)))
        assert len(names) == 3
        label = Image.open(os.path.join(out, folder, names[0]))
        assert label.mode == "P"  # class indices, viewable in the dataset's colours
        assert np.asarray(label).max() < len(report["classes"])
    strips = sorted(os.listdir(os.path.join(out, "comparisons")))
    image = Image.open(os.path.join(out, "comparisons", strips[0]))
    assert image.size == (4 * 64, 48)  # image | ground truth | prediction | CRF prediction

    # run again: the finished run in the folder is resumed (one run per folder), not trained anew
    again = run(out, extra_args=extra, num_examples=3)
    assert again["steps"] == 2 and again["scores"]["checkpoint"] == report["checkpoint"]
