"""The training progress bar shows optimizer steps out of max_steps, also after a resume
mid-epoch (Lightning's own bar counts the current epoch's batches)."""

from __future__ import annotations

import os

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


def _fit(data_root: str, run: str, max_steps: int, ckpt_path: str | None = None) -> list[tuple[int, int]]:
    args = tiny_args(data_root, run, "--trainer.enable_progress_bar", "true", "--trainer.max_steps", str(max_steps),
                     "--trainer.limit_val_batches", "0", "--model.eval_crf", "false", "--trainer.logger", "false")  # fmt: skip
    cli = DeepLabCLI(args=args, run=False)
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
