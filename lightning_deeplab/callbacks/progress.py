"""The training progress bar counts optimizer steps towards ``max_steps``.

Lightning's bar counts the batches of the current epoch, and a run resumed mid-epoch starts it
again from that epoch's restored batch: for DeepLab's step-based schedules (20k steps, the poly
LR over ``max_steps``) neither says how far the run is.

One bar serves the whole run: its clock starts with the training of this process and its rate
counts only the steps this process made (a resumed run's earlier steps took no time here), so
the rate and the time left hold across epochs and after a resume.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm


class StepTqdm(Tqdm):
    """A tqdm bar whose elapsed time comes from ``clock`` (seconds), counted from its creation:
    tqdm derives the rate, (n - initial) / elapsed, and the time left from it."""

    def __init__(self, *args: Any, clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        self.clock = clock
        self.started = clock()
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict:
        values = super().format_dict
        values["elapsed"] = self.clock() - self.started
        return values


class StepProgressBar(TQDMProgressBar):
    """TQDM bar of ``global_step`` out of ``max_steps``, titled with the epoch (an epoch-based
    run keeps Lightning's per-epoch bar). ``clock``: the time source of its rate and time left."""

    def __init__(self, *args: Any, clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_start(trainer, *args)
        self.train_progress_bar = self.step_bar(trainer)

    def step_bar(self, trainer: pl.Trainer) -> StepTqdm:
        """The run's bar: where a resumed run stands (its initial step) out of ``max_steps``."""
        return StepTqdm(
            desc=f"Epoch {trainer.current_epoch}",
            total=trainer.max_steps,
            initial=trainer.global_step,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,  # the mean rate over the run, not a recent burst
            bar_format=self.BAR_FORMAT,
            clock=self.clock,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_epoch_start(trainer, *args)
        # Lightning's version resets the bar (its count and its clock) to the epoch's batches
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if self.train_progress_bar is not None and self._should_update(step, self.train_progress_bar.total):
            self.train_progress_bar.n = step
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))  # also redraws the bar
