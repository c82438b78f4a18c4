"""The default experiment logger: Weights & Biases, offline unless the user has an API key."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning import Callback
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from ..fileio import disk_full_code

WANDB_PROJECT = "lightning-deeplab"


def wandb_api_key_configured() -> bool:
    """True when wandb could log in without asking: WANDB_API_KEY, or a key saved by `wandb login`."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def default_logger(save_dir: str, name: str | None = None, run_id: str | None = None) -> Logger:
    """WandbLogger that never blocks on a missing key; a CSVLogger when WANDB_MODE=disabled.

    WANDB_MODE, when set, decides (online / offline / disabled); otherwise the run is online
    only if an API key is configured, so a machine without one still trains and keeps its logs
    under ``<save_dir>/wandb/offline-run-*`` for a later `wandb sync`. With ``run_id`` (a resumed
    fit) the run of that id is continued: one run, one loss curve.
    """
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled":
        return CSVLogger(save_dir=save_dir, name=name or "csv")
    offline = mode in ("offline", "dryrun") or (mode == "" and not wandb_api_key_configured())
    os.makedirs(save_dir, exist_ok=True)
    resume = {"id": run_id, "resume": "allow"} if run_id else {}
    return WandbLogger(project=WANDB_PROJECT, name=name, save_dir=save_dir, offline=offline, **resume)


class QuietShutdownOnFullDisk(Callback):
    """A run stopped by a full disk ends with its one error line: the wandb run is finished
    quietly here (its exit handler would otherwise print sync hints and the tracebacks of its own
    failed writes to the same disk), and the logging module no longer prints tracebacks of
    handlers that cannot write."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if disk_full_code(exception) is None:
            return
        logging.raiseExceptions = False  # the process is ending: a log file that cannot grow stays quiet
        if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            import wandb

            with contextlib.suppress(Exception):
                wandb.finish(exit_code=1, quiet=True)
