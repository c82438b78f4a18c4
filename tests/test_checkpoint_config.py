"""With --ckpt_path the configuration wins: CRF, eval_crf and inference settings are used as
given (validate, test, predict, crf-search), the architecture comes from the checkpoint where
the configuration does not say it, contradictions are errors; best/last resolve from the run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_deeplab.runs.checkpoint_config import (
    CheckpointConfigError,
    DamagedCheckpoint,
    read_checkpoint,
    resolve_ckpt_path,
)
from lightning_deeplab.commands.cli import DeepLabCLI
from lightning_deeplab.commands.main import main
from tiny_run import save_untrained_checkpoint, tiny_args


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An (untrained) checkpoint of the demo network, saved as fit saves one: the CLI's hparams."""
    root = tmp_path_factory.mktemp("ckpt")
    args = tiny_args(str(root / "data"), str(root / "run"), "--trainer.logger", "false")
    ckpt = root / "model.ckpt"
    save_untrained_checkpoint(args, ckpt)
    return root, args, str(ckpt)


def scores(ckpt: str, stage: str) -> dict:
    return json.loads(Path(ckpt).with_suffix(f".{stage}-scores.json").read_text())


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_evaluation_uses_the_given_crf_and_inference_settings(trained, stage):
    _, args, ckpt = trained
    key = "val" if stage == "validate" else "test"
    DeepLabCLI(args=[stage, *args, "--ckpt_path", ckpt])
    saved = scores(ckpt, key)
    assert saved["crf"]["bi_w"] == 10.0 and saved["inference"]["flip"] is False  # the YAML's

    DeepLabCLI(
        args=[
            stage,
            *args,
            "--ckpt_path",
            ckpt,
            "--model.crf.bi_w",
            "0",
            "--model.crf.pos_w",
            "0",
            "--model.inference.flip",
            "true",
        ]
    )
    changed = scores(ckpt, key)
    assert changed["crf"]["bi_w"] == 0.0 and changed["crf"]["pos_w"] == 0.0
    assert changed["inference"]["flip"] is True
    assert changed["without_crf"]["confusion"] != saved["without_crf"]["confusion"]  # flip changed the network's
    assert changed["with_crf"]["confusion"] != saved["with_crf"]["confusion"]

    DeepLabCLI(args=[stage, *args, "--ckpt_path", ckpt, "--model.eval_crf", "false"])
    assert scores(ckpt, key)["with_crf"] is None and scores(ckpt, key)["crf"] is None


def test_predict_uses_the_given_inference_settings(trained, tmp_path):
    root, args, ckpt = trained
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (33, 41, 3), dtype=np.uint8)).save(images / "x.png")
    saved = {}
    for flip in ("false", "true"):
        out = tmp_path / f"flip-{flip}"
        DeepLabCLI(
            args=[
                "predict",
                *args,
                "--ckpt_path",
                ckpt,
                "--data.predict_path",
                str(images),
                "--model.inference.flip",
                flip,
                "--trainer.callbacks+=lightning_deeplab.callbacks.prediction_writer.SegmentationWriter",
                "--trainer.callbacks.output_dir",
                str(out),
                "--trainer.callbacks.save_probabilities",
                "true",
            ]
        )
        saved[flip] = np.load(out / "probabilities" / "x.npy")
    assert saved["false"].shape == saved["true"].shape and not np.allclose(saved["false"], saved["true"])


def test_crf_search_uses_the_given_settings(trained, tmp_path, capsys):
    _, args, ckpt = trained
    grid = ["--bi_w", "4", "--bi_xy_std", "30", "--bi_rgb_std", "13", "--num_images", "2", "--device", "cpu"]
    results = {}
    for name, extra in (("saved", []), ("given", ["--model.crf.iterations", "1", "--model.inference.flip", "true"])):
        output = tmp_path / f"{name}.json"
        assert main(["crf-search", *args, "--ckpt_path", ckpt, *grid, "--output", str(output), *extra]) == 0
        results[name] = json.loads(output.read_text())
    assert results["saved"]["crf"]["iterations"] == 10 and results["given"]["crf"]["iterations"] == 1
    assert results["given"]["source"] == f"checkpoint {ckpt}"
    assert results["given"]["baseline"] != results["saved"]["baseline"]  # flip changed the network's output


def test_the_architecture_comes_from_the_checkpoint_unless_the_config_contradicts_it(trained, tmp_path, capsys):
    root, args, ckpt = trained
    import yaml

    settings = yaml.safe_load(Path(args[args.index("--config") + 1]).read_text())
    del settings["model"]["model"]["init_args"]  # the network named, its architecture not
    config = tmp_path / "bare.yaml"
    config.write_text(yaml.safe_dump(settings))
    bare = [str(config) if a == args[args.index("--config") + 1] else a for a in args]
    cli = DeepLabCLI(args=bare, run=False, ckpt_path=ckpt)
    network = cli.model.model  # DeepLabV2's defaults would be resnet101 + aspp-l + MSC + frozen, caffe
    assert (network.backbone_name, network.head_name, network.msc_scales, network.norm, network.style) == (
        "resnet18",
        "aspp-s",
        (1.0,),
        "bn",
        "pytorch",
    )
    data = tmp_path / "never-generated"
    with pytest.raises(SystemExit) as exit_info:
        DeepLabCLI(
            args=[
                "validate",
                *args,
                "--data.source.root",
                str(data),
                "--ckpt_path",
                ckpt,
                "--model.model.init_args.head",
                "aspp-l",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "model.model.init_args.head" in err and "aspp-s" in err and "aspp-l" in err
    assert not data.exists()  # the error came before any data was read or generated


def test_best_and_last_resolve_in_a_new_process(tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny_args(str(tmp_path / "data"), str(run), "--trainer.logger", "false", "--model.eval_crf", "false")
    DeepLabCLI(args=["fit", *args, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"])
    best = next((run / "checkpoints").glob("best-step*.ckpt"))
    for name, expected in (("best", best), ("last", run / "checkpoints" / "last.ckpt")):
        validated = DeepLabCLI(args=["validate", *args, "--ckpt_path", name])  # a new CLI: no callback state
        assert validated.trainer.ckpt_path == str(expected)
        assert scores(str(expected), "val")["checkpoint"] == str(expected)

    empty = tiny_args(str(tmp_path / "data"), str(tmp_path / "empty"), "--trainer.logger", "false")
    for name in ("best", "last"):
        with pytest.raises(SystemExit) as exit_info:
            DeepLabCLI(args=["validate", *empty, "--ckpt_path", name])
        assert exit_info.value.code == 2
        assert f"--ckpt_path {name}: no {name} checkpoint" in capsys.readouterr().err


def test_best_is_the_highest_saved_score(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step, score in ((100, 0.4), (200, 0.6), (300, 0.5)):
        state = {"ModelCheckpoint{'monitor': 'val/mIoU'}": {"current_score": torch.tensor(score)}}
        torch.save({"state_dict": {"model.w": torch.zeros(1)}, "callbacks": state}, folder / f"best-step{step}.ckpt")
    assert resolve_ckpt_path("best", str(tmp_path)) == str(folder / "best-step200.ckpt")
    with pytest.raises(CheckpointConfigError, match="no-such.ckpt"):
        resolve_ckpt_path(str(tmp_path / "no-such.ckpt"), str(tmp_path))


@pytest.mark.parametrize(
    "content, problem",
    [
        ({"state_dict": {"model.backbone.w": torch.zeros(2)}, "global_step": 3}, None),
        ({"model.backbone.w": torch.zeros(2)}, r"holds no state_dict \(network weights alone.*--model.pretrained\)"),
        (
            {"state_dict": {"encoder.w": torch.zeros(2)}},
            r"its weights \('encoder.w', ...\) are not a DeepLabV2Module's",
        ),
        (
            {"state_dict": {"model.w": torch.zeros(2)}, "config": argparse.Namespace(lr=1)},
            "Python objects beyond tensors",
        ),
        ([1, 2, 3], "holds no state_dict"),
    ],
)
def test_foreign_files_given_as_checkpoints_are_named_with_what_they_are(tmp_path, content, problem):
    path = tmp_path / "given.ckpt"
    torch.save(content, path)
    if problem is None:
        assert read_checkpoint(str(path))["global_step"] == 3
    else:
        with pytest.raises(DamagedCheckpoint, match=rf"^--ckpt_path {path}: .*{problem}"):
            read_checkpoint(str(path))
