"""`deeplab crf-search`: every grid point scored over the images with one confusion matrix,
the best one found, from a model or from saved probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_deeplab.commands.main import main as deeplab
from lightning_deeplab.crf import DenseCRF, unary_from_softmax
from lightning_deeplab.commands.crf_search import SearchSample, crf_grid_search

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "synthetic.yaml")


def striped_sample(seed: int, height: int = 24, width: int = 30) -> SearchSample:
    """Vertical 2-pixel stripes of two colours, labelled by colour, with noisy probabilities
    (right on ~65% of the pixels). Only a CRF that pools over pixels of the same colour (large
    weight, small colour std) can clean it; pooling over both colours blurs the stripes away."""
    gen = torch.Generator().manual_seed(seed)
    labels = ((torch.arange(width) // 2) % 2).expand(height, width).clone()
    colours = torch.tensor([[200, 40, 40], [40, 40, 200]], dtype=torch.uint8)
    image = colours[labels].permute(2, 0, 1).contiguous()
    correct = torch.rand(height, width, generator=gen) < 0.65
    noisy = torch.where(correct, labels, 1 - labels)
    probs = torch.full((2, height, width), 0.4)
    probs.scatter_(0, noisy[None], 0.6)
    mask = labels.clone()
    mask[0, :] = 255  # an ignored row
    return SearchSample(f"s{seed}", probs.half(), image, mask)


def crf_miou(samples, **params) -> float:
    """mIoU of the CRF with ``params`` over ``samples``, computed directly (2 classes)."""
    confusion = np.zeros((2, 2))
    crf = DenseCRF(**params)
    for s in samples:
        q = crf(unary_from_softmax(s.probabilities.float()[None]), s.image[None])[0]
        pred, valid = q.argmax(0), s.mask != 255
        np.add.at(confusion, (s.mask[valid].numpy(), pred[valid].numpy()), 1)
    iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
    return float(iou.mean())


def test_grid_search_scores_every_setting_and_finds_the_one_that_is_best_by_construction():
    samples = [striped_sample(seed) for seed in range(3)]
    base = {"iterations": 5, "pos_w": 0.0, "pos_xy_std": 1.0}
    seen = []
    outcome = crf_grid_search(
        samples,
        2,
        {"bi_w": [0.0, 10.0], "bi_xy_std": [5.0], "bi_rgb_std": [3.0, 1000.0]},
        base,
        on_result=seen.append,
    )
    results = outcome["results"]
    assert seen == results
    assert [(r["bi_w"], r["bi_xy_std"], r["bi_rgb_std"]) for r in results] == [
        (0.0, 5.0, 3.0),
        (0.0, 5.0, 1000.0),
        (10.0, 5.0, 3.0),
        (10.0, 5.0, 1000.0),
    ]
    for r in results:  # one confusion matrix over all the images, per setting
        expected = crf_miou(samples, **base, bi_w=r["bi_w"], bi_xy_std=r["bi_xy_std"], bi_rgb_std=r["bi_rgb_std"])
        assert r["mIoU"] == pytest.approx(expected, abs=1e-6)
    best = outcome["best"]
    assert (best["bi_w"], best["bi_rgb_std"]) == (10.0, 3.0)
    assert best["mIoU"] > 0.95 > outcome["baseline"]
    assert best["mIoU"] == max(r["mIoU"] for r in results)
    # without weight the CRF changes nothing: the network's own score
    assert results[0]["mIoU"] == pytest.approx(outcome["baseline"])


def test_grid_search_rejects_unknown_keys():
    with pytest.raises(ValueError, match="pos_ww"):
        crf_grid_search([striped_sample(0)], 2, {"pos_ww": [1.0]})
    with pytest.raises(ValueError, match="at least one sample"):
        crf_grid_search([], 2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def tiny_args(data_root) -> list[str]:
    root = data_root
    return [
        "--config",
        CONFIG,
        "--data.source.root",
        str(root),
        "--data.source.num_train",
        "2",
        "--data.source.num_val",
        "3",
        "--data.source.image_size",
        "[40, 48]",
        "--data.num_workers",
        "0",
        "--model.crf.iterations",
        "2",
        "--model.crf.pos_w",
        "3",
        "--model.crf.pos_xy_std",
        "3",
    ]


def test_crf_search_command_prints_every_setting_and_the_best(tiny_args, tmp_path, capsys):
    output = tmp_path / "search.json"
    grid = ["--bi_w", "2", "8", "--bi_xy_std", "30", "--bi_rgb_std", "5", "13"]
    status = deeplab(["crf-search", *tiny_args, "--num_images", "2", *grid, "--device", "cpu", "--output", str(output)])
    assert status == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == 4 and lines[0].startswith("[1/4] bi_w=2 bi_xy_std=30 bi_rgb_std=5  mIoU ")
    saved = json.loads(output.read_text())
    assert saved["num_images"] == 2 and saved["crf"]["iterations"] == 2
    assert len(saved["results"]) == 4
    best = max(saved["results"], key=lambda r: r["mIoU"])
    assert saved["best"] == best
    assert f"best: bi_w={best['bi_w']:g} bi_xy_std=30 bi_rgb_std={best['bi_rgb_std']:g}" in out
    for line, result in zip(lines, saved["results"]):
        assert line.endswith(f"mIoU {100 * result['mIoU']:.2f}")


def test_crf_search_reads_saved_probabilities_and_names_a_missing_file(data_root, tiny_args, tmp_path, capsys):
    from lightning_deeplab.data import SegmentationDataModule, SyntheticSource

    datamodule = SegmentationDataModule(
        SyntheticSource(data_root, num_train=2, num_val=3, image_size=(40, 48)), num_workers=0
    )
    datamodule.prepare_data()
    val = datamodule.dataset("val")
    probs_dir = tmp_path / "probabilities"
    probs_dir.mkdir()
    # probabilities that are the ground truth itself (ignored pixels: background)
    for i in range(2):
        mask = val[i]["mask"].numpy()
        probs = np.full((datamodule.num_classes, *mask.shape), 0.01, dtype=np.float16)
        np.put_along_axis(probs, np.where(mask == 255, 0, mask)[None], 0.95, axis=0)
        np.save(probs_dir / f"{val[i]['name']}.npy", probs)
    args = [
        "crf-search",
        *tiny_args,
        "--probabilities",
        str(probs_dir),
        "--bi_w",
        "1",
        "--bi_xy_std",
        "30",
        "--bi_rgb_std",
        "13",
        "--device",
        "cpu",
        "--output",
        str(tmp_path / "r.json"),
    ]
    assert deeplab([*args, "--num_images", "2"]) == 0
    assert "without CRF: mIoU 100.00" in capsys.readouterr().out

    assert deeplab([*args, "--num_images", "3"]) == 1
    err = capsys.readouterr().err
    assert f"{val[2]['name']}.npy" in err and "does not exist" in err
