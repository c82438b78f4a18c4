"""`deeplab fit|validate|test|predict`: LightningCLI over the module and the DataModule, plus
the commands that are not a Trainer method (`deeplab crf-search`, `deeplab convert-caffe`).

This is the only place where configuration is wired to objects.
"""
from __future__ import annotations

import os
import sys
import warnings
from argparse import RawDescriptionHelpFormatter
from typing import Any, Callable, Optional, Sequence

from pytorch_lightning.callbacks import (
    BasePredictionWriter,
    LearningRateMonitor,
    ThroughputMonitor,
)
from jsonargparse import DefaultHelpFormatter
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from .checkpointing import (
    DEFAULT_CHECKPOINT_EVERY_N_STEPS, DeepLabCheckpoint, check_ckpt_path, exit_code_of, read_wandb_run_id,
    validation_interval_in_batches,
)  # fmt: skip
from .command import EXTRA_COMMANDS
from .data import SegmentationDataModule
from .loggers import default_logger
from .module import DeepLabV2Module
from .predict import SegmentationWriter

#: The start of Lightning's warning that a checkpoint's callbacks are missing from the Trainer.
PREDICT_CALLBACKS_WARNING = "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint"

#: The validation score that picks the best checkpoint.
MONITOR = "val/mIoU"

HELP_DESCRIPTION = (
    "DeepLab v2: train, evaluate and predict with a YAML config.\n\nOther commands "
    "(`deeplab <command> --help` for their options):\n"
    + "\n".join(f"  deeplab {name:<14} {summary}" for name, (_, summary) in EXTRA_COMMANDS.items())
)


class _HelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description's line breaks kept (the command list)."""


def batch_size_of(batch: dict[str, Any]) -> int:
    return batch["image"].shape[0]


def default_callbacks(
    root_dir: str, with_logger: bool = True, checkpoint_every_n_steps: int = DEFAULT_CHECKPOINT_EVERY_N_STEPS
) -> list:
    """Checkpoints in a fixed folder under the run's root (so `--ckpt_path last` finds them),
    and, when there is a logger, the LR of every parameter group and the training throughput."""
    callbacks = [
        DeepLabCheckpoint(
            every_n_train_steps=checkpoint_every_n_steps,
            dirpath=os.path.join(root_dir, "checkpoints"),
            filename="best-step{step}",
            auto_insert_metric_name=False,
            monitor=MONITOR,
            mode="max",
            save_last=True,
            save_top_k=1,
        )
    ]
    if with_logger:
        callbacks += [LearningRateMonitor(logging_interval="step"), ThroughputMonitor(batch_size_fn=batch_size_of)]
    return callbacks


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class DeepLabCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)  # the module owns the paper's SGD + poly
        kwargs["parser_kwargs"] = {
            "description": HELP_DESCRIPTION,
            "formatter_class": _HelpFormatter,
            **(kwargs.get("parser_kwargs") or {}),
        }
        super().__init__(DeepLabV2Module, SegmentationDataModule, *args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # jsonargparse would take `--model.head_lr` for `--model.head_lr_mult`: no prefixes, on
        # the main parser and on every subcommand's
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Arguments given by code (the demo, crf-search) are the whole command line; Lightning's
        # version warns whenever the process itself had arguments too.
        if args is None:
            self.config = parser.parse_args()
        elif isinstance(args, dict):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # the module prints its own scores table; Lightning's raw one would repeat it
            parser.set_defaults(verbose=False)
        return parser

    def before_instantiate_classes(self) -> None:
        # before the data is generated and the logger starts
        if self.subcommand is not None:
            check_ckpt_path(self._get(self.config, "ckpt_path", default=None))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The dataset decides the classes; the model follows it.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.add_argument(
            "--checkpoint_every_n_steps", type=int, default=DEFAULT_CHECKPOINT_EVERY_N_STEPS,
            help="fit: write checkpoints/last.ckpt every N training steps (0: only at validation and at the end)",
        )  # fmt: skip

    def instantiate_trainer(self, **kwargs: Any):
        config = self._get(self.config_init, "trainer", default={})
        root_dir = config.get("default_root_dir") or os.getcwd()
        if config.get("logger") in (None, True):
            kwargs["logger"] = default_logger(root_dir, run_id=self._resumed_wandb_run_id(root_dir))
        callbacks = _as_list(config.get("callbacks"))
        val_check_batches = validation_interval_in_batches(config)
        if val_check_batches is not None:
            kwargs["val_check_interval"] = val_check_batches
        if self.subcommand in (None, "fit", "validate", "test"):
            every_n = self._get(self.config_init, "checkpoint_every_n_steps", default=DEFAULT_CHECKPOINT_EVERY_N_STEPS)
            kwargs["callbacks"] = callbacks + default_callbacks(root_dir, config.get("logger") is not False, every_n)
        elif self.subcommand == "predict":
            # Without a writer of its own, predict saves label maps and overlays under the run's root.
            defaults = _as_list(self.trainer_defaults.get("callbacks"))
            if not any(isinstance(cb, BasePredictionWriter) for cb in callbacks + defaults):
                kwargs["callbacks"] = callbacks + [SegmentationWriter(os.path.join(root_dir, "predictions"))]
        return super().instantiate_trainer(**kwargs)

    def _resumed_wandb_run_id(self, root_dir: str) -> Optional[str]:
        """A fit resumed from a checkpoint goes on logging into the wandb run that wrote it."""
        if self.subcommand != "fit":
            return None
        ckpt_path = self._get(self.config, "ckpt_path", default=None)
        if ckpt_path == "last":
            ckpt_path = os.path.join(root_dir, "checkpoints", "last.ckpt")
        return read_wandb_run_id(ckpt_path) if isinstance(ckpt_path, str) else None

    def fit(self, **kwargs: Any) -> Any:
        """`deeplab fit`: a run stopped by SIGTERM (checkpoint saved) exits with status 143, not
        with the status 0 of Lightning's `SIGTERMException`."""
        try:
            return self.trainer.fit(**kwargs)
        except SystemExit as stop:
            code = exit_code_of(stop)
            if code is None:
                raise
            raise SystemExit(code) from stop

    def predict(self, **kwargs: Any) -> Any:
        """`deeplab predict`: the writer saves each batch as it comes, so the predictions are not
        also kept in memory (unless ``--return_predictions true``)."""
        if kwargs.get("return_predictions") is None:
            kwargs["return_predictions"] = False
        with warnings.catch_warnings():
            # Lightning asks for the training callbacks (checkpointing) whose state the checkpoint
            # holds; prediction has no use for it.
            warnings.filterwarnings("ignore", message=PREDICT_CALLBACKS_WARNING)
            return self.trainer.predict(**kwargs)


def _extra_command(name: str) -> Callable[[Optional[Sequence[str]]], Any]:
    from importlib import import_module

    return import_module(EXTRA_COMMANDS[name][0]).main


def main(args: Any = None) -> Any:
    """The `deeplab` command: `crf-search` and `convert-caffe` go to their own parsers,
    everything else to :class:`DeepLabCLI`. Returns the extra command's exit status."""
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, (list, tuple)) and argv and argv[0] in EXTRA_COMMANDS:
        status = _extra_command(argv[0])(list(argv[1:]))
        if args is None:
            sys.exit(status)
        return status
    DeepLabCLI(args=args)
    return None


if __name__ == "__main__":
    main()
