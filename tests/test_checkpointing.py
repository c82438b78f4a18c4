"""Checkpoints that lose nothing (issue 16, issue 9 item 5): `last.ckpt` at the final step under
DDP and after a resume, validation every N global steps, a checkpoint and a non-zero exit on
SIGTERM, and a resume that continues the same wandb run."""

from __future__ import annotations

import glob
import os
import signal
import tempfile
import time

import pytest
import torch
from pytorch_lightning import Callback

from lightning_deeplab.runs.checkpointing import (
    SIGTERM_EXIT_CODE,
    VALIDATION_SCORES_KEY,
    WANDB_RUN_ID_KEY,
    AtomicCheckpointIO,
)
from lightning_deeplab.commands.cli import DeepLabCLI
from lightning_deeplab.fileio import partial_files
from step_log import StepLog, read_steps
from tiny_run import deeplab, tiny_args

VALIDATE_EVERY_2 = (
    "--trainer.limit_val_batches",
    "2",
    "--trainer.val_check_interval",
    "2",
    "--trainer.check_val_every_n_epoch",
    "null",
    "--model.eval_crf",
    "false",
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("synthetic"))


def load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_last_checkpoint_holds_the_final_step_under_ddp_and_after_a_resume(data_root, tmp_path):
    run, log = str(tmp_path / "run"), str(tmp_path / "validated")
    args = tiny_args(data_root, run, *VALIDATE_EVERY_2, "--trainer.logger", "false")
    last = os.path.join(run, "checkpoints", "last.ckpt")
    recorder = {"callbacks": [StepLog(log, "validate")]}
    DeepLabCLI(
        args=["fit", *args, "--trainer.devices", "2", "--trainer.strategy", "ddp_spawn", "--trainer.max_steps", "4"],
        trainer_defaults=recorder,
    )
    assert load(last)["global_step"] == 4
    assert read_steps(log) == [2, 4]

    DeepLabCLI(args=["fit", *args, "--trainer.max_steps", "6", "--ckpt_path", last], trainer_defaults=recorder)
    final = load(last)
    assert final["global_step"] == 6
    assert read_steps(log) == [2, 4, 6]
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
        DeepLabCLI(args=["fit", *args], trainer_defaults={"callbacks": [StepLog(log, "validate"), *callbacks]})
        return read_steps(log)

    whole = str(tmp_path / "whole")
    assert fit(whole, "--trainer.max_steps", "6") == [2, 4, 6]

    killed = str(tmp_path / "killed")
    # 8 images in batches of 4: step 3 is the first batch of the second epoch
    with pytest.raises(SystemExit) as stop:
        fit(killed, "--trainer.max_steps", "6", callbacks=[SigtermAt(3)])
    assert stop.value.code == SIGTERM_EXIT_CODE
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


class SigtermDuringValidation(Callback):
    """Sends this process a real SIGTERM after the first batch of the validation at a global step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.parametrize("stopped_at", [4, 6], ids=["mid-run-validation", "final-validation"])
def test_a_validation_stopped_by_sigterm_is_run_on_resume(data_root, tmp_path, stopped_at):
    # every validation step is also a periodic-save step, as in every shipped config
    run, log = str(tmp_path / "run"), str(tmp_path / "validated")
    args = tiny_args(data_root, run, *VALIDATE_EVERY_2, "--trainer.logger", "false", "--checkpoint_every_n_steps", "2")
    last = os.path.join(run, "checkpoints", "last.ckpt")
    recorder = StepLog(log, "validate")
    with pytest.raises(SystemExit) as stop:
        DeepLabCLI(
            args=["fit", *args, "--trainer.max_steps", "6"],
            trainer_defaults={"callbacks": [recorder, SigtermDuringValidation(stopped_at)]},
        )
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert stop.value.code == SIGTERM_EXIT_CODE
    assert read_steps(log) == list(range(2, stopped_at, 2))  # the stopped validation never ended
    assert load(last)["global_step"] == stopped_at - 2  # not a checkpoint that claims it did

    DeepLabCLI(
        args=["fit", *args, "--trainer.max_steps", "6", "--ckpt_path", "last"],
        trainer_defaults={"callbacks": [recorder]},
    )
    assert read_steps(log) == [2, 4, 6]  # the validations of an uninterrupted run
    final = load(last)
    assert final["global_step"] == 6 and "val/mIoU" in final[VALIDATION_SCORES_KEY]


def wandb_run_ids(run: str) -> list[str]:
    return sorted(p.rsplit("-", 1)[-1] for p in glob.glob(os.path.join(run, "wandb", "offline-run-*")))


@pytest.mark.slow
def test_sigterm_during_fit_saves_a_checkpoint_exits_nonzero_and_resume_continues_the_wandb_run(data_root, tmp_path):
    run, steps = str(tmp_path / "run"), str(tmp_path / "steps")
    last = os.path.join(run, "checkpoints", "last.ckpt")
    args = [
        *tiny_args(data_root, run, "--model.eval_crf", "false", "--trainer.limit_val_batches", "1"),
        "--checkpoint_every_n_steps",
        "2",
        "--trainer.callbacks+=step_log.StepLog",
        "--trainer.callbacks.path",
        steps,
    ]
    proc = deeplab("fit", *args, "--trainer.max_steps", "100000")
    deadline = time.monotonic() + 300
    while len(read_steps(steps)) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == SIGTERM_EXIT_CODE, output[-3000:]
    saved = load(last)
    killed_at = saved["global_step"]
    assert killed_at >= 3 and killed_at in (read_steps(steps)[-1], read_steps(steps)[-1] + 1)
    run_id = saved[WANDB_RUN_ID_KEY]
    assert wandb_run_ids(run) == [run_id]

    os.remove(steps)
    resumed = deeplab("fit", *args, "--trainer.max_steps", str(killed_at + 2), "--ckpt_path", "last")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert read_steps(steps) == [killed_at, killed_at + 1]
    assert load(last)["global_step"] == killed_at + 2
    # one wandb run: the resumed process wrote into a run of the same id
    assert wandb_run_ids(run) == [run_id, run_id]
    assert load(last)[WANDB_RUN_ID_KEY] == run_id


@pytest.mark.parametrize("accumulate, every_n_epochs, batches", [(1, "null", 2), (3, "null", 6), (3, "1", 2)])
def test_val_check_interval_counts_optimizer_steps_under_gradient_accumulation(
    accumulate, every_n_epochs, batches, data_root, tmp_path
):
    args = tiny_args(data_root, str(tmp_path / "run"), "--trainer.logger", "false")
    cli = DeepLabCLI(
        args=[
            *args,
            "--trainer.val_check_interval",
            "2",
            "--trainer.accumulate_grad_batches",
            str(accumulate),
            "--trainer.check_val_every_n_epoch",
            every_n_epochs,
        ],
        run=False,
    )
    # per epoch (check_val_every_n_epoch: 1) Lightning's count is the batch within the epoch: left alone
    assert cli.trainer.val_check_interval == batches


def test_checkpoint_period_is_validated():
    from lightning_deeplab.runs.checkpointing import DeepLabCheckpoint

    with pytest.raises(ValueError, match="checkpoint_every_n_steps"):
        DeepLabCheckpoint(every_n_train_steps=-1)


def test_a_resume_refused_before_training_leaves_last_checkpoint_alone(data_root, tmp_path):
    run = str(tmp_path / "run")
    args = tiny_args(data_root, run, "--trainer.logger", "false", "--model.eval_crf", "false")
    DeepLabCLI(args=["fit", *args, "--trainer.max_steps", "2"])
    last = os.path.join(run, "checkpoints", "last.ckpt")
    before = open(last, "rb").read()
    # a trainable CRF that nothing would train: configure_optimizers refuses it, after the
    # checkpoint's weights were restored but before its loops and optimizer were
    with pytest.raises(ValueError, match="crf_training is not set"):
        DeepLabCLI(
            args=["fit", *args, "--trainer.max_steps", "4", "--model.crf.trainable", "true", "--ckpt_path", last]
        )
    assert open(last, "rb").read() == before
    assert load(last)["global_step"] == 2


class _SeesTheWrite:
    """A checkpoint value that records, while it is being written, the partial files beside the target."""

    seen: list = []

    def __init__(self, folder) -> None:
        self.folder = folder

    def __reduce__(self):
        _SeesTheWrite.seen.append([p.name for p in partial_files(self.folder)])
        return (str, ("written",))


def test_checkpoints_are_written_beside_their_target_never_through_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmpdir"))
    (tmp_path / "tmpdir").mkdir()
    folder = tmp_path / "run" / "checkpoints"
    for target in (str(folder / "last.ckpt"), f"file://{folder / 'best-step2.ckpt'}"):
        _SeesTheWrite.seen.clear()
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "probe": _SeesTheWrite(folder)}, target)
        name = os.path.basename(target)
        assert len(_SeesTheWrite.seen) == 1 and _SeesTheWrite.seen[0][0].startswith(f".{name}.")
        assert torch.load(folder / name, weights_only=False)["probe"] == "written"
    assert sorted(p.name for p in folder.iterdir()) == ["best-step2.ckpt", "last.ckpt"]
    assert list((tmp_path / "tmpdir").iterdir()) == []
