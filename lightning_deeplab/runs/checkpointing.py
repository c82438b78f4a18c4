"""Checkpoints that lose nothing: after every validation, every N training steps, at the end of
fit and when a run is stopped (SIGTERM, Ctrl-C, an exception), each written whole or not at all.

Why not Lightning's `ModelCheckpoint(save_last=True)` alone (2.6): it writes `last.ckpt` only
in the same step as a top-k save, so a validation that does not beat the best score leaves
`last.ckpt` at an older step; its end-of-training save runs only when `last.ckpt` was never
written in this process. A run to `max_steps` whose final validation did not improve (the DDP
run and the resume of issue 16) therefore ended with `last.ckpt` steps behind, and the scores of
its last validation in no file. Here `last.ckpt` is rewritten after every validation, every
`every_n_train_steps` steps and at the end of fit, whenever its step is not the current one.
Every rank calls these hooks with the same global step, so every rank takes part in
`trainer.save_checkpoint` (which ends with a barrier) under DDP.

A checkpoint saved at a step, before the validation of that step, would lose that validation
for good if the run were killed during it: Lightning restores such a checkpoint as "validated"
and goes on after it. So the periodic save never runs at a step that a validation follows (the
validation's own save, with its scores, takes its place), and a run stopped during a validation
keeps the `last.ckpt` it had: the resume trains the steps since then again and validates.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from ..fileio import DiskFullError, PathLike, atomic_output
from ..crf.values import is_integer

#: Training steps between two writes of `last.ckpt` when the configuration does not say.
DEFAULT_CHECKPOINT_EVERY_N_STEPS = 500

#: Checkpoint keys this module adds: the id of the wandb run (a resume continues it) and the
#: scores of the validation that ran last before the save.
WANDB_RUN_ID_KEY = "wandb_run_id"
VALIDATION_SCORES_KEY = "validation_scores"

#: Exit status of a run stopped by SIGTERM (the shell's 128 + signal number).
SIGTERM_EXIT_CODE = 143


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a partial file in the checkpoint's own folder, flushes it to the
    disk and renames it over the target (then flushes the folder): a kill or a full disk at any
    moment leaves the previous checkpoint complete. Lightning's own writer stages the file in
    $TMPDIR and, when that is another filesystem (a node's local /tmp, checkpoints on NFS or
    Lustre), copies it over the target in place: a kill during the copy truncated `last.ckpt`.
    Remote paths (s3://, gs://, ...) are left to Lightning's writer."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: PathLike, storage_options: Optional[Any] = None
    ) -> None:
        local_path = str(path).removeprefix("file://")
        if "://" in local_path:
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        # through a Python file: a full disk then surfaces as the OSError of the write
        with atomic_output(local_path, "wb", durable=True) as handle:
            torch.save(checkpoint, handle)


class DeepLabCheckpoint(ModelCheckpoint):
    """`best-step*.ckpt` by the monitored score (top-k, as ModelCheckpoint) and a `last.ckpt`
    that always holds the latest step a validation, a periodic save or the end of fit saw.

    ``every_n_train_steps`` here means the `last.ckpt` period only (0: never between
    validations); the best checkpoint is chosen at validation only.
    """

    def __init__(self, *args: Any, every_n_train_steps: int = DEFAULT_CHECKPOINT_EVERY_N_STEPS, **kwargs: Any) -> None:
        if not isinstance(every_n_train_steps, int) or every_n_train_steps < 0:
            raise ValueError(f"checkpoint_every_n_steps must be an integer >= 0, got {every_n_train_steps!r}")
        kwargs.setdefault("save_last", True)
        super().__init__(*args, **kwargs)
        self.last_every_n_train_steps = every_n_train_steps
        self._last_step_in_last: Optional[int] = None
        self._validated_step: Optional[int] = None
        self._validating_step: Optional[int] = None  # a validation of fit under way
        self._training_started = False

    @staticmethod
    def _fitting(trainer: pl.Trainer) -> bool:
        from pytorch_lightning.trainer.states import TrainerFn

        return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run

    def _write_last(self, trainer: pl.Trainer) -> None:
        if self._last_step_in_last == trainer.global_step:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_step_in_last = trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._training_started = True  # the loops and optimizers are restored by now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        n = self.last_every_n_train_steps
        if (
            n
            and self._fitting(trainer)
            and trainer.global_step > 0
            and trainer.global_step % n == 0
            and not validation_follows(trainer)
        ):
            self._write_last(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting(trainer):
            self._validating_step = trainer.global_step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not ModelCheckpoint's: its "already saved at this step" check would skip the top-k
        # save after a periodic save of the same step.
        self._validating_step = None
        if not self._fitting(trainer) or self._validated_step == trainer.global_step:
            return
        self._validated_step = trainer.global_step
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
        # rewritten even at a step already in last.ckpt: it now carries this validation's scores
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_step_in_last = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: saves follow steps and validations, not epochs."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting(trainer):
            self._write_last(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Before training starts (e.g. configure_optimizers refused the settings of a resumed
        # run) there is nothing new to keep, and a save would replace last.ckpt with a
        # checkpoint of step 0 holding the restored weights but no optimizer or loop state.
        if not self._training_started or not self._fitting(trainer) or self._last_step_in_last == trainer.global_step:
            return
        if isinstance(exception, DiskFullError):
            return  # the save that just failed would fail again; the last complete one stays
        if self._validating_step is not None:
            # A checkpoint of this step would be restored as validated: keep the previous one, so
            # that the resume trains up to this step again and runs this validation.
            kept = f"at step {self._last_step_in_last}" if self._last_step_in_last is not None else "as it was"
            rank_zero_info(
                f"Stopped by {type(exception).__name__} during the validation of step {self._validating_step}: "
                f"{self.last_model_path or 'last.ckpt'} stays {kept}; a resume validates step {self._validating_step}"
            )
            return
        # SIGTERM is broadcast to every rank, which all stop here; any other exception may have
        # stopped one rank only, and a collective save would then wait forever.
        if trainer.world_size > 1 and not isinstance(exception, SIGTERMException):
            rank_zero_info(f"{type(exception).__name__} under {trainer.world_size} processes: no checkpoint saved")
            return
        self._write_last(trainer)
        rank_zero_info(
            f"Stopped by {type(exception).__name__} at step {trainer.global_step}: saved {self.last_model_path}"
        )

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[VALIDATION_SCORES_KEY] = {
            key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")
        }
        run_id = wandb_run_id_of(trainer)
        if run_id is not None:
            checkpoint[WANDB_RUN_ID_KEY] = run_id


def validation_follows(trainer: pl.Trainer) -> bool:
    """Whether fit validates right after the training batch that just ended: the same schedule
    as Lightning's (`val_check_interval` batches over the run with ``check_val_every_n_epoch:
    null``, within the epoch otherwise, or at the epoch's end), read from the Trainer's settings.
    A time-based interval (`val_check_interval` as a duration) cannot be foreseen: False."""
    epoch_loop = trainer.fit_loop.epoch_loop
    every_n_epochs = trainer.check_val_every_n_epoch
    if not trainer.enable_validation or (
        every_n_epochs is not None and (trainer.current_epoch + 1) % every_n_epochs != 0
    ):
        return False
    interval = trainer.val_check_batch
    if interval is None:  # a time-based interval
        return False
    if math.isinf(interval):  # an iterable without a length: at the end of the epoch
        return bool(epoch_loop.batch_progress.is_last_batch)
    batch = epoch_loop.total_batch_idx if every_n_epochs is None else epoch_loop.batch_idx
    return (batch + 1) % int(interval) == 0


def wandb_run_id_of(trainer: pl.Trainer) -> Optional[str]:
    """The id of the trainer's wandb run, or None without a WandbLogger."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger.version
    return None


def saved_wandb_run_id(checkpoint: dict[str, Any]) -> Optional[str]:
    """The wandb run id saved in a checkpoint's content (None when it has none)."""
    run_id = checkpoint.get(WANDB_RUN_ID_KEY)
    return str(run_id) if run_id else None


def exit_code_of(exception: BaseException) -> Optional[int]:
    """Lightning stops a SIGTERM'd run with `SIGTERMException`, a `SystemExit` without a code
    (status 0): the status such a run must exit with instead, or None for other exits."""
    if isinstance(exception, SIGTERMException):
        return SIGTERM_EXIT_CODE
    return None


def validation_interval_in_batches(trainer_config: dict[str, Any]) -> Optional[int]:
    """The batch count Lightning needs to validate every ``val_check_interval`` optimizer steps,
    or None when nothing needs changing.

    With ``check_val_every_n_epoch: null`` Lightning counts ``val_check_interval`` in training
    batches, not steps: with ``accumulate_grad_batches: k`` it would validate k times as often
    as the config says (and between two optimizer steps). Multiplying by k puts validation on
    every N-th step while each epoch's batch count is a multiple of k (Lightning also steps on
    an epoch's last batch, so a remainder shifts later validations by a step or two).
    """
    interval = trainer_config.get("val_check_interval")
    accumulate = trainer_config.get("accumulate_grad_batches") or 1
    if is_integer(interval) and accumulate > 1 and trainer_config.get("check_val_every_n_epoch") is None:
        return interval * accumulate
    return None
