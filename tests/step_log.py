"""Callbacks that write the global steps of a run to a file, so that a test can read them from
a `deeplab` subprocess or from ddp_spawn's processes (tests only)."""

from __future__ import annotations

import os
from pathlib import Path

from pytorch_lightning import Callback


def read_steps(path: str) -> list[int]:
    return [int(line) for line in Path(path).read_text().split()] if os.path.exists(path) else []


class StepLog(Callback):
    """Appends the global step at the start of every training batch (``stage="train"``) or at the
    end of every validation (``stage="validate"``) to ``path``, from rank 0."""

    def __init__(self, path: str, stage: str = "train") -> None:
        if stage not in ("train", "validate"):
            raise ValueError(f"stage must be 'train' or 'validate', got {stage!r}")
        self.path, self.stage = path, stage

    def _write(self, trainer) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            with open(self.path, "a") as f:
                f.write(f"{trainer.global_step}\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.stage == "train":
            self._write(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.stage == "validate":
            self._write(trainer)
