"""`deeplab` end to end on a tiny synthetic VOC-layout set: fit, checkpoints, wandb offline run,
resume, exact metrics under DDP, and clear errors for bad configuration."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
from pytorch_lightning import Callback

from lightning_deeplab.commands.cli import DeepLabCLI
from lightning_deeplab.commands.main import main
from tiny_run import save_untrained_checkpoint, tiny_args


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("synthetic"))


class StepRecorder(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)


@pytest.mark.slow
def test_fit_writes_checkpoints_and_an_offline_wandb_run_then_resumes(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = str(tmp_path / "run")
    args = tiny_args(data_root, run, "--trainer.val_check_interval", "3", "--model.eval_crf", "false")
    wandb.finish()  # a run left open by an earlier test in this process would be reused
    cli = DeepLabCLI(args=["fit", *args, "--trainer.max_steps", "3"])
    assert cli.trainer.global_step == 3
    assert os.path.isfile(os.path.join(run, "checkpoints", "last.ckpt"))
    assert glob.glob(os.path.join(run, "checkpoints", "best-step*.ckpt"))
    assert "val/mIoU" in cli.trainer.callback_metrics
    assert "train/loss" in cli.trainer.callback_metrics
    runs = glob.glob(os.path.join(run, "wandb", "offline-run-*"))
    assert runs and glob.glob(os.path.join(runs[0], "*.wandb"))

    recorder = StepRecorder()
    resumed = DeepLabCLI(
        args=["fit", *args, "--trainer.max_steps", "5", "--ckpt_path", "last"],
        trainer_defaults={"callbacks": [recorder]},
    )
    # it went on from the saved step instead of starting again
    assert recorder.steps == [3, 4]
    assert resumed.trainer.global_step == 5


@pytest.mark.slow
def test_validation_under_ddp_counts_every_image_exactly_once(data_root, tmp_path):
    run = str(tmp_path / "run")
    common = tiny_args(data_root, run, "--model.eval_crf", "false", "--trainer.logger", "false")
    fit = DeepLabCLI(args=["fit", *common, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"])
    ckpt = os.path.join(run, "checkpoints", "last.ckpt")
    single = DeepLabCLI(args=["validate", *common, "--ckpt_path", ckpt])
    single_scores = {k: float(v) for k, v in single.trainer.callback_metrics.items()}
    ddp = DeepLabCLI(
        args=[
            "validate",
            *common,
            "--ckpt_path",
            ckpt,
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp_spawn",
        ]
    )
    ddp_scores = {k: float(v) for k, v in ddp.trainer.callback_metrics.items()}
    assert fit.trainer.global_step == 2
    # 5 images over 2 processes: a padding sampler would score one image twice
    for key in ("val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fw_iou"):
        assert ddp_scores[key] == pytest.approx(single_scores[key], abs=1e-7), key


def test_bad_configuration_is_reported_by_name(data_root, tmp_path, capsys):
    run = str(tmp_path / "run")
    with pytest.raises(SystemExit):
        DeepLabCLI(args=["fit", *tiny_args(data_root, run), "--model.model.init_args.backbonee", "resnet18"])
    assert "backbonee" in capsys.readouterr().err

    with pytest.raises(SystemExit):  # refused by the parser: not one of the registry's backbones
        DeepLabCLI(args=["fit", *tiny_args(data_root, run), "--model.model.init_args.backbone", "resnet1O1"])
    assert "resnet1O1" in capsys.readouterr().err

    missing = str(tmp_path / "no-such-voc")
    with pytest.raises(FileNotFoundError, match="no-such-voc"):
        DeepLabCLI(
            args=["validate", *tiny_args(data_root, run), "--data.source", "VOCSource", "--data.source.root", missing]
        )


def test_print_config_shows_the_recipe(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        DeepLabCLI(args=["fit", *tiny_args(data_root, str(tmp_path)), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert (
        "backbone: resnet18" in out
        and "class_path: lightning_deeplab.data.SyntheticSource" in out
        and "max_steps:" in out
    )


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "deeplab"
    if not script.exists():
        pytest.fail(f"the console script {script} is missing: install the package with `make install`")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for sub in ("fit", "validate", "test", "predict", "crf-search", "convert-caffe"):
        assert sub in result.stdout


def test_extra_commands_have_their_own_parsers(capsys):
    for command, expected in (("convert-caffe", "caffemodel"), ("crf-search", "bi_rgb_std")):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert expected in capsys.readouterr().out, command


def test_validate_prints_the_scores_table_and_saves_it_beside_the_checkpoint(data_root, tmp_path, capsys, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.finish()  # a run left open by an earlier test would receive this one's logs
    run = str(tmp_path / "run")
    args = tiny_args(data_root, run)
    ckpt = tmp_path / "model.ckpt"
    cli = save_untrained_checkpoint([*args, "--trainer.logger", "false"], ckpt)
    class_names = cli.datamodule.class_names
    validated = DeepLabCLI(args=["validate", *args, "--ckpt_path", str(ckpt)])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("class"))
    assert header.split() == ["class", "IoU", "IoU", "with", "CRF"]
    for name in class_names:
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    saved = json.loads((tmp_path / "model.val-scores.json").read_text())
    assert saved["stage"] == "val" and saved["checkpoint"] == str(ckpt)
    assert saved["classes"] == class_names and saved["inference"]["mode"] == "whole"
    metrics = validated.trainer.callback_metrics
    assert saved["without_crf"]["mIoU"] == pytest.approx(float(metrics["val/mIoU"]), abs=1e-6)
    assert saved["with_crf"]["mIoU"] == pytest.approx(float(metrics["val_crf/mIoU"]), abs=1e-6)
    # one confusion matrix over the split: every labelled pixel of the 5 images counted once
    labelled = sum(int((cli.datamodule.dataset("val")[i]["mask"] != 255).sum()) for i in range(5))
    assert saved["num_pixels"] == labelled == sum(map(sum, saved["without_crf"]["confusion"]))
    # the per-class table went to wandb as well
    tables = glob.glob(
        os.path.join(run, "wandb", "offline-run-*", "files", "media", "table", "val", "per_class_iou*.json")
    )
    assert len(tables) == 1
    with open(tables[0]) as f:
        table = json.load(f)
    assert table["columns"] == ["class", "IoU", "IoU with CRF"]
    assert [row[0] for row in table["data"]] == class_names
    assert table["data"][0][1] == pytest.approx(saved["without_crf"]["iou"][class_names[0]])

    # no checkpoint: the run's root folder; no CRF: no CRF column
    DeepLabCLI(args=["test", *args, "--model.eval_crf", "false", "--trainer.logger", "false"])
    saved = json.loads((tmp_path / "run" / "test-scores.json").read_text())
    assert saved["stage"] == "test" and saved["checkpoint"] is None and saved["with_crf"] is None


def test_inference_settings_from_the_command_line(data_root, tmp_path, capsys):
    args = tiny_args(data_root, str(tmp_path), "--trainer.logger", "false")
    cli = DeepLabCLI(
        args=[
            *args,
            "--model.inference.mode",
            "slide",
            "--model.inference.window",
            "33",
            "--model.inference.scales",
            "[1.0, 0.5]",
        ],
        run=False,
    )
    inference = cli.model.inference
    assert (inference.mode, inference.window, inference.stride, inference.scales) == (
        "slide",
        (33, 33),
        (22, 22),
        (1.0, 0.5),
    )
    with pytest.raises(SystemExit):  # refused by the parser: not one of the modes
        DeepLabCLI(args=[*args, "--model.inference.mode=slyde"], run=False)
    assert "slyde" in capsys.readouterr().err
    with pytest.raises(ValueError, match="inference.window must be >= 8"):
        DeepLabCLI(args=[*args, "--model.inference.window=7"], run=False)


def test_an_integer_batch_limit_is_a_count_and_a_float_a_fraction(data_root, tmp_path):
    overlay = tmp_path / "limits.yaml"
    overlay.write_text("trainer:\n  limit_train_batches: 2\n  limit_test_batches: 1.0\n")
    args = tiny_args(
        data_root,
        str(tmp_path / "run"),
        "--config",
        str(overlay),
        "--trainer.logger",
        "false",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_predict_batches",
        "0.5",
        "--trainer.val_check_interval",
        "1",
    )
    trainer = DeepLabCLI(args=args, run=False).trainer
    limits = [
        trainer.limit_train_batches,
        trainer.limit_val_batches,
        trainer.limit_test_batches,
        trainer.limit_predict_batches,
        trainer.val_check_interval,
    ]
    assert [(type(value), value) for value in limits] == [(int, 2), (int, 1), (float, 1.0), (float, 0.5), (int, 1)]
    trainer = DeepLabCLI(args=[*args, "--trainer.limit_val_batches", "1.0"], run=False).trainer
    assert type(trainer.limit_val_batches) is float and trainer.limit_val_batches == 1.0


def test_a_class_count_that_contradicts_the_data_is_an_error_naming_both(data_root, tmp_path, capsys):
    args = tiny_args(data_root, str(tmp_path / "run"), "--trainer.logger", "false")
    with pytest.raises(SystemExit) as stop:
        DeepLabCLI(args=["fit", *args, "--model.model.init_args.num_classes", "5"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    source = "lightning_deeplab.data.SyntheticSource"
    assert f"num_classes: the configuration says 5, but the data (--data.source {source}) has 6 classes" in err
    assert not (tmp_path / "run").exists()
    # the data's own count, or none: the data decides
    assert DeepLabCLI(args=[*args, "--model.model.init_args.num_classes", "6"], run=False).model.num_classes == 6
    assert DeepLabCLI(args=args, run=False).model.num_classes == 6
