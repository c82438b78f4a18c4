"""Checkpoints that lose nothing (issue 16, issue 9 item 5): `last.ckpt` at the final step under
DDP and after a resume, validation every N global steps, a checkpoint and a non-zero exit on
SIGTERM, and a resume that continues the same wandb run."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import wandb
from pytorch_lightning import Callback

from lightning_deeplab.checkpointing import SIGTERM_EXIT_CODE, VALIDATION_SCORES_KEY, WANDB_RUN_ID_KEY, exit_code_of
from lightning_deeplab.cli import DeepLabCLI
from tiny_run import REPO, tiny_args

VALIDATE_EVERY_2 = (
    "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "2",
    "--trainer.check_val_every_n_epoch", "null", "--model.eval_crf", "false",
)  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("synthetic"))


class ValidationSteps(Callback):
    """Appends the global step of every validation to a file (works from ddp_spawn's processes)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            with open(self.path, "a") as f:
                f.write(f"{trainer.global_step}\n")


def steps_in(path: str) -> list[int]:
    return [int(line) for line in Path(path).read_text().split()] if os.path.exists(path) else []


def load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_last_checkpoint_holds_the_final_step_under_ddp_and_after_a_resume(data_root, tmp_path):
    run, log = str(tmp_path / "run"), str(tmp_path / "validated")
    args = tiny_args(data_root, run, *VALIDATE_EVERY_2, "--trainer.logger", "false")
    last = os.path.join(run, "checkpoints", "last.ckpt")
    recorder = {"callbacks": [ValidationSteps(log)]}
    DeepLabCLI(
        args=["fit", *args, "--trainer.devices", "2", "--trainer.strategy", "ddp_spawn", "--trainer.max_steps", "4"],
        trainer_defaults=recorder,
    )
    assert load(last)["global_step"] == 4
    assert steps_in(log) == [2, 4]

    DeepLabCLI(args=["fit", *args, "--trainer.max_steps", "6", "--ckpt_path", last], trainer_defaults=recorder)
    final = load(last)
    assert final["global_step"] == 6
    assert steps_in(log) == [2, 4, 6]
    # the scores of the validation at step 6 are in last.ckpt, and best is one of the validated steps
    assert "val/mIoU" in final[VALIDATION_SCORES_KEY]
    best = glob.glob(os.path.join(run, "checkpoints", "best-step*.ckpt"))
    assert len(best) == 1 and load(best[0])["global_step"] in (2, 4, 6)


class SigtermAt(Callback):
    """Sends this process a real SIGTERM after the given global step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_resume_after_sigterm_mid_epoch_ends_like_an_uninterrupted_run(data_root, tmp_path):
    def fit(run: str, *extra: str, callbacks=()) -> list[int]:
        log = os.path.join(run, "validated")
        os.makedirs(run, exist_ok=True)
        args = tiny_args(data_root, run, *VALIDATE_EVERY_2, "--trainer.logger", "false", *extra)
        DeepLabCLI(args=["fit", *args], trainer_defaults={"callbacks": [ValidationSteps(log), *callbacks]})
        return steps_in(log)

    whole = str(tmp_path / "whole")
    assert fit(whole, "--trainer.max_steps", "6") == [2, 4, 6]

    killed = str(tmp_path / "killed")
    # 8 images in batches of 4: step 3 is the first batch of the second epoch
    with pytest.raises(SystemExit) as stop:
        fit(killed, "--trainer.max_steps", "6", callbacks=[SigtermAt(3)])
    assert exit_code_of(stop.value) == SIGTERM_EXIT_CODE
    saved = load(os.path.join(killed, "checkpoints", "last.ckpt"))
    assert saved["global_step"] == 3
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 1  # mid-epoch
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    assert fit(killed, "--trainer.max_steps", "6", "--ckpt_path", "last") == [2, 4, 6]
    names = lambda run: sorted(os.path.basename(p) for p in glob.glob(os.path.join(run, "checkpoints", "*.ckpt")))
    assert names(killed) == names(whole)
    for run in (whole, killed):
        last = load(os.path.join(run, "checkpoints", "last.ckpt"))
        assert last["global_step"] == 6 and "val/mIoU" in last[VALIDATION_SCORES_KEY]
