"""Command-line arguments that shrink the demo config to a run of seconds (tests only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "synthetic.yaml")


def tiny_args(data_root: str, run_dir: str, *extra: str) -> list[str]:
    """The demo config shrunk to seconds: 8 train / 5 val images of 48x64."""
    return [
        "--config",
        CONFIG,
        "--data.source.root",
        data_root,
        "--data.source.num_train",
        "8",
        "--data.source.num_val",
        "5",
        "--data.source.image_size",
        "[48, 64]",
        "--data.crop_size",
        "48",
        "--data.batch_size",
        "4",
        "--data.val_batch_size",
        "2",
        "--data.num_workers",
        "0",
        "--trainer.default_root_dir",
        run_dir,
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.log_every_n_steps",
        "1",
        *extra,
    ]


def quiet_args(data_root: str, *extra: str) -> list[str]:
    """The demo config on ``data_root``, in this process: no loader workers, no logger, no
    progress bar."""
    return [
        "--config",
        CONFIG,
        "--data.source.root",
        data_root,
        "--data.num_workers",
        "0",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def save_untrained_checkpoint(args: list[str], path) -> "DeepLabCLI":  # noqa: F821
    """Build the module and data the CLI arguments ``args`` describe and save an (untrained)
    checkpoint of it at ``path``, as fit saves one (the CLI's hyperparameters); returns the CLI."""
    import pytorch_lightning as pl

    from lightning_deeplab.commands.cli import DeepLabCLI

    cli = DeepLabCLI(args=args, run=False)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(cli.model)
    trainer.save_checkpoint(path)
    return cli


def deeplab(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`deeplab ARGS` in a subprocess of its own process group (so a test can kill it and all it
    started), output and errors together on its stdout, wandb offline."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "WANDB_MODE": "offline"}
    # A wandb run started earlier in this test process left its service's address here; a
    # command launched on its own starts its own service (else a stopped fit's run may still be
    # registered in the shared one when its resume starts: "run ID ... is in use").
    full_env.pop("WANDB_SERVICE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "lightning_deeplab.commands.main", *args],
        cwd=str(REPO),
        env={**full_env, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
