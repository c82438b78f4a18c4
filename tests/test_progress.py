"""The training progress bar shows optimizer steps out of max_steps, also after a resume
mid-epoch (Lightning's own bar counts the current epoch's batches)."""

from __future__ import annotations

import os
import re

from pytorch_lightning import Callback

from lightning_deeplab.commands.cli import DeepLabCLI
from lightning_deeplab.callbacks.progress import StepProgressBar
from tiny_run import tiny_args


class BarLog(Callback):
    """Records (n, total) of the training bar after every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        bar = trainer.progress_bar_callback.train_progress_bar
        self.seen.append((bar.n, bar.total))


def _bar_cli(data_root: str, run: str, max_steps: int) -> DeepLabCLI:
    """A tiny fit to ``max_steps`` with the progress bar on and nothing else to show."""
    bar_on = ("--trainer.enable_progress_bar", "true", "--trainer.max_steps", str(max_steps))
    quiet = ("--trainer.limit_val_batches", "0", "--model.eval_crf", "false", "--trainer.logger", "false")
    return DeepLabCLI(args=tiny_args(data_root, run, *bar_on, *quiet), run=False)


def _fit(data_root: str, run: str, max_steps: int, ckpt_path: str | None = None) -> list[tuple[int, int]]:
    cli = _bar_cli(data_root, run, max_steps)
    log = BarLog()
    cli.trainer.callbacks.append(log)
    assert isinstance(cli.trainer.progress_bar_callback, StepProgressBar)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return log.seen


def test_the_bar_counts_steps_to_max_steps_across_epochs_and_a_resume(tmp_path):
    data, run = str(tmp_path / "data"), str(tmp_path / "run")
    # 8 training images in batches of 4: 2 batches an epoch, so 3 steps cross an epoch boundary
    assert _fit(data, run, 3) == [(1, 3), (2, 3), (3, 3)]
    last = os.path.join(run, "checkpoints", "last.ckpt")
    # resumed after step 3 (mid-epoch), to 5: the bar goes on from 3 of 5, not from the epoch's batch
    assert _fit(data, run, 5, ckpt_path=last) == [(4, 5), (5, 5)]


class FakeClock:
    """A clock that moves only when told: one second per training step here."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class OneSecondPerStep(Callback):
    """Advances the fake clock by a second per training batch and records the bar as drawn."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.drawn: list[tuple[int, str]] = []

    def on_train_batch_start(self, *args) -> None:
        self.clock.now += 1.0

    def on_train_batch_end(self, trainer, *args) -> None:
        self.drawn.append((trainer.current_epoch, str(trainer.progress_bar_callback.train_progress_bar)))


def _timed_fit(data_root: str, run: str, max_steps: int, ckpt_path: str | None = None) -> list[tuple[int, str]]:
    cli = _bar_cli(data_root, run, max_steps)
    clock = FakeClock()
    cli.trainer.progress_bar_callback.clock = clock
    log = OneSecondPerStep(clock)
    cli.trainer.callbacks.append(log)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return log.drawn


def drawn_totals(printed: str) -> set[str]:
    """The totals of every frame the bars printed ("n/total [" ...)."""
    return set(re.findall(r"\d+/(\S+) \[", printed))


def test_rate_and_time_left_hold_across_epochs_and_after_a_resume(tmp_path, capsys):
    data, run = str(tmp_path / "data"), str(tmp_path / "run")
    # 2 steps an epoch at one (fake) second a step: 1 it/s throughout, time left = steps left
    drawn = _timed_fit(data, run, 5)
    assert [epoch for epoch, _ in drawn] == [0, 0, 1, 1, 2]
    for step, (epoch, line) in enumerate(drawn, start=1):
        shown = rf"{step}/5 \[00:0{step}<00:0{5 - step}, +1\.00it/s"  # n/total [elapsed<left, rate
        assert line.startswith(f"Epoch {epoch}:") and re.search(shown, line), line
    printed = capsys.readouterr().out
    assert drawn_totals(printed) == {"5"} and "Training" not in printed  # never 0/2 (an epoch's batches) first
    # resumed after step 5 (mid-epoch 2) up to 8: the earlier steps took no time in this process
    drawn = _timed_fit(data, run, 8, ckpt_path=os.path.join(run, "checkpoints", "last.ckpt"))
    for step, (epoch, line) in zip((6, 7, 8), drawn):
        done = step - 5
        shown = rf"{step}/8 \[00:0{done}<00:0{8 - step}, +1\.00it/s"
        assert line.startswith(f"Epoch {epoch}:") and re.search(shown, line), line
    assert len(drawn) == 3
    printed = capsys.readouterr().out
    assert drawn_totals(printed) == {"8"} and "Training" not in printed  # not "Training: 5/?"
