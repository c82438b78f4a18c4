"""What an ordinary run prints: none of the libraries' noise (advertising, deprecations of
their own internals, a DDP warning about metrics that are exact), and under DDP the same
scores as one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from lightning_deeplab.commands.cli import DeepLabCLI
from tiny_run import REPO, tiny_args

#: Pieces of the messages that must not appear (see lightning_deeplab.quiet).
NOISE = ("litlogger", "litmodels", "anonymous setting has no effect", "LeafSpec", "sync_dist=True")


def run_deeplab(args: list[str], env: dict[str, str]) -> str:
    """`deeplab ARGS` in a subprocess (wandb's warnings not silenced); its stdout and stderr."""
    full_env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}
    full_env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), **env)
    done = subprocess.run(
        [sys.executable, "-m", "lightning_deeplab", *args],
        cwd=str(REPO),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_an_ordinary_fit_prints_no_library_noise(tmp_path):
    args = tiny_args(
        str(tmp_path / "data"),
        str(tmp_path / "run"),
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "2",
        "--model.eval_crf",
        "false",
    )
    output = run_deeplab(["fit", *args], {"WANDB_MODE": "offline"})
    assert "`Trainer.fit` stopped: `max_steps=2` reached" in output  # it ran
    for noise in NOISE:
        assert noise not in output, output


def _last_logged(metrics_csv: str, key: str) -> float:
    with open(metrics_csv) as handle:
        values = [row[key] for row in csv.DictReader(handle) if row.get(key)]
    return float(values[-1])


@pytest.mark.slow
def test_a_ddp_fit_logs_exact_scores_without_sync_warnings(tmp_path):
    data, run = str(tmp_path / "data"), str(tmp_path / "run")
    common = tiny_args(data, run, "--model.eval_crf", "false")
    output = run_deeplab(
        [
            "fit",
            *common,
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
        ],
        {"WANDB_MODE": "disabled", "PL_TORCH_DISTRIBUTED_BACKEND": "gloo"},
    )
    assert "sync_dist" not in output, output
    logged = os.path.join(run, "csv", "version_0", "metrics.csv")
    # the same weights scored by one process: the two processes' scores are those, bit for bit
    single = DeepLabCLI(
        args=[
            "validate",
            *tiny_args(data, str(tmp_path / "single"), "--model.eval_crf", "false", "--trainer.logger", "false"),
            "--ckpt_path",
            os.path.join(run, "checkpoints", "last.ckpt"),
        ]
    )
    for key in ("val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fw_iou"):
        assert _last_logged(logged, key) == float(single.trainer.callback_metrics[key]), key
