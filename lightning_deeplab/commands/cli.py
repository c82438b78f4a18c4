"""`deeplab fit|validate|test|predict`: LightningCLI over the module and the DataModule (the
other commands have parsers of their own; :mod:`.main` dispatches).

This is the only place where configuration is wired to objects.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from argparse import RawDescriptionHelpFormatter
from typing import Any, Optional

from pytorch_lightning.callbacks import (
    BasePredictionWriter,
    LearningRateMonitor,
    ProgressBar,
    ThroughputMonitor,
)
from jsonargparse import DefaultHelpFormatter, Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.plugins.io import CheckpointIO

from ..runs import folder as run_folder
from ..runs.checkpoint_config import (
    CHECKPOINT_DIR,
    CheckpointConfigError,
    DamagedCheckpoint,
    MissingCheckpoint,
    merge_architecture,
    read_checkpoint,
    resolve_ckpt_path,
    saved_model_config,
)
from ..runs.checkpointing import (
    DEFAULT_CHECKPOINT_EVERY_N_STEPS,
    AtomicCheckpointIO,
    DeepLabCheckpoint,
    exit_code_of,
    saved_wandb_run_id,
    validation_interval_in_batches,
)
from .cli_parser import DeepLabArgumentParser
from .config_files import config_problem, config_values, shipped_configs_help, with_shipped_configs
from .registry import command_list
from ..data import SegmentationDataModule

# The shipped sources, imported so that jsonargparse knows their short names
# (`--data.source VOCSource`) and lists them in `--data.source.help`.
from ..data import (  # noqa: F401
    CityscapesSource,
    CocoStuff10kSource,
    CocoStuff164kSource,
    FolderSource,
    SyntheticSource,
    VOCSource,
)
from ..fileio import atomic_output
from ..runs.launch_check import check_launch, first_process
from ..runs.loggers import QuietShutdownOnFullDisk, default_logger
from ..training.module import DeepLabV2Module
from ..training.trainer import DeepLabTrainer
from ..callbacks.prediction_writer import SegmentationWriter
from ..callbacks.progress import StepProgressBar
from ..callbacks.reporting import default_reporting
from ..quiet import silence_library_noise

#: The start of Lightning's warning that a checkpoint's callbacks are missing from the Trainer.
PREDICT_CALLBACKS_WARNING = "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint"

#: The key of predict's parser_kwargs that asks `init_parser` for the prediction writer's options.
WRITER_OPTIONS_KEY = "with_prediction_writer_options"

#: The validation score that picks the best checkpoint.
MONITOR = "val/mIoU"

HELP_DESCRIPTION = (
    "DeepLab v2: train, evaluate and predict with a YAML config.\n\nCommands "
    "(`deeplab <command> --help` for their options):\n" + "\n".join(command_list())
)


class _HelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description's line breaks kept (the command list)."""


class DurableSaveConfigCallback(SaveConfigCallback):
    """LightningCLI's `config.yaml` of the run, written whole or not at all and flushed to the
    disk (Lightning's writes it in place). It is rewritten by every fit of the run folder, as
    with ``overwrite=True``."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # on every rank: it broadcasts the folder
        if trainer.is_global_zero:
            text = self.parser.dump(self.config, skip_none=False)
            with atomic_output(os.path.join(log_dir, self.config_filename), "w", durable=True) as handle:
                handle.write(text)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True


def batch_size_of(batch: dict[str, Any]) -> int:
    return batch["image"].shape[0]


def default_callbacks(
    root_dir: str, with_logger: bool = True, checkpoint_every_n_steps: int = DEFAULT_CHECKPOINT_EVERY_N_STEPS
) -> list:
    """Checkpoints in a fixed folder under the run's root (so `--ckpt_path best|last` finds them;
    `last.ckpt` also every ``checkpoint_every_n_steps`` steps, on a stop and at the end of fit),
    the scores report, and, when there is a logger, the LR of every parameter group, the training
    throughput and the wandb tables and images."""
    callbacks = [
        DeepLabCheckpoint(
            every_n_train_steps=checkpoint_every_n_steps,
            dirpath=os.path.join(root_dir, CHECKPOINT_DIR),
            filename="best-step{step}",
            auto_insert_metric_name=False,
            monitor=MONITOR,
            mode="max",
            save_last=True,
            save_top_k=1,
        )
    ]
    callbacks += default_reporting(with_logger)
    if with_logger:
        callbacks += [LearningRateMonitor(logging_interval="step"), ThroughputMonitor(batch_size_fn=batch_size_of)]
    return callbacks


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class DeepLabCLI(LightningCLI):
    """LightningCLI over :class:`DeepLabV2Module` and the DataModule.

    With ``--ckpt_path`` (a file, ``best`` or ``last``) the weights come from the checkpoint and
    every setting comes from the configuration as given; the network's architecture is taken
    from the checkpoint where the configuration does not say it (a contradiction is an error).
    ``ckpt_path`` does the same without a subcommand (``run=False``, e.g. for `deeplab crf-search`).
    """

    def __init__(self, *args: Any, ckpt_path: Optional[str] = None, **kwargs: Any) -> None:
        silence_library_noise()
        self.ckpt_path = ckpt_path
        self._saved_model: Optional[dict[str, Any]] = None
        self._saved_run_id: Optional[str] = None
        self._run_folder: Optional[run_folder.RunFolderClaim] = None
        kwargs.setdefault("save_config_callback", DurableSaveConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)  # the module owns the paper's SGD + poly
        kwargs.setdefault("trainer_class", DeepLabTrainer)  # `--trainer.limit_val_batches 1` is one batch
        kwargs.setdefault("parser_class", DeepLabArgumentParser)  # one-line configuration errors
        parser_kwargs = kwargs.get("parser_kwargs") or {}
        kwargs["parser_kwargs"] = {
            "prog": "deeplab",
            "description": HELP_DESCRIPTION,
            "formatter_class": _HelpFormatter,
            **parser_kwargs,
            # predict's parser also takes the prediction writer's settings (see init_parser)
            "predict": {WRITER_OPTIONS_KEY: True, **parser_kwargs.get("predict", {})},
        }
        super().__init__(DeepLabV2Module, SegmentationDataModule, *args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # jsonargparse would take `--model.head_lr` for `--model.head_lr_mult`: no prefixes, on
        # the main parser and on every subcommand's
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs["description"] = f"{kwargs.get('description') or ''}\n\n{shipped_configs_help()}".strip()
        with_writer_options = kwargs.pop(WRITER_OPTIONS_KEY, False)
        parser = super().init_parser(**kwargs)
        if with_writer_options:
            # The writer's settings are predict's own options (`deeplab predict --crf true
            # --output_dir DIR`); `_prediction_writer` builds the writer from them.
            self._writer_options = parser.add_class_arguments(SegmentationWriter, instantiate=False)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The dataset decides the classes; the model follows it.
        parser.link_arguments("data.num_classes", "model.model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int,
            default=DEFAULT_CHECKPOINT_EVERY_N_STEPS,
            help="fit: write checkpoints/last.ckpt every N training steps (0: only at validation and at the end)",
        )

    def _prediction_writer(self, callbacks: list) -> list:
        """The predict callbacks: ``callbacks`` plus a SegmentationWriter from predict's own
        options, unless a prediction writer is configured in ``trainer.callbacks`` (then those
        options must be left unset, or they would be silently ignored)."""
        config = self.config[self.subcommand]
        options = {key: config.get(key) for key in self._writer_options}
        defaults = _as_list(self.trainer_defaults.get("callbacks"))
        if not any(isinstance(cb, BasePredictionWriter) for cb in callbacks + defaults):
            return callbacks + [SegmentationWriter(**options)]
        signature = inspect.signature(SegmentationWriter).parameters
        given = sorted(key for key, value in options.items() if value != signature[key].default)
        if given:
            raise ValueError(
                f"--{', --'.join(given)} cannot be used with a prediction writer in trainer.callbacks: "
                "set the writer's options on that callback, or drop the callback"
            )
        return callbacks

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Arguments given by code (the demo, crf-search) are the whole command line; Lightning's
        # version warns whenever the process itself had arguments too.
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
            # What the YAML files and the command line set, without the defaults: the settings
            # that a checkpoint must not override.
            self._given = parser.parse_object(args, defaults=False)
        else:
            args = with_shipped_configs(sys.argv[1:] if args is None else args)
            for problem in filter(None, map(config_problem, config_values(args))):
                parser.error(problem)  # jsonargparse's YAML errors name no file, only "<unicode string>"
            self.config = parser.parse_args(args)
            self._given = parser.parse_args(args, defaults=False)
        self._apply_checkpoint()

    def _apply_checkpoint(self) -> None:
        """``--ckpt_path``: resolve ``best``/``last``, read the checkpoint once and take from it
        only the architecture the configuration does not give.

        LightningCLI (2.x) applies all of a checkpoint's saved hyperparameters over the
        configuration when the parsed ``ckpt_path`` names a file; here the configuration wins, so
        the file is held back from the parsed configuration until `before_instantiate_classes`
        gives it back to the Trainer's command."""
        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else self.config
        given = self._given.get(subcommand) if subcommand else self._given
        root_dir = section.get("trainer.default_root_dir") or os.getcwd()
        ckpt_path = section.get("ckpt_path") if subcommand else self.ckpt_path
        try:
            ckpt_path = resolve_ckpt_path(ckpt_path, root_dir)
            # read once, before the data and the logger: only what the run needs is kept
            checkpoint = read_checkpoint(ckpt_path) if ckpt_path and os.path.isfile(ckpt_path) else None
            saved = saved_model_config(checkpoint) if checkpoint is not None else None
            if saved is not None:
                given_model = given.get("model.model") if given is not None else None
                given_model = given_model.as_dict() if isinstance(given_model, Namespace) else given_model
                merge_architecture(section.model.model, given_model, saved, ckpt_path)
        except (MissingCheckpoint, DamagedCheckpoint):
            raise  # a missing or damaged file: the command's one-line error, before data and logger
        except CheckpointConfigError as err:
            self.parser.error(str(err))
        if subcommand:
            section.ckpt_path = None if checkpoint is not None else ckpt_path
        self.ckpt_path = ckpt_path
        self._saved_model = saved
        self._saved_run_id = saved_wandb_run_id(checkpoint) if checkpoint is not None else None

    def before_instantiate_classes(self) -> None:
        """The checkpoint file back into the configuration (see `_apply_checkpoint`)."""
        if self.subcommand:
            self.config[self.subcommand].ckpt_path = self.ckpt_path

    def _check_before_the_run(self) -> None:
        """What the configuration and the data can be checked for once the model and the data
        exist, before the run folder is claimed and the logger creates its run: a user error
        leaves nothing behind."""
        self._check_class_count()
        if self.subcommand is not None:
            self.datamodule.check_data(self.subcommand)
        self._claim_run_folder()

    def _check_class_count(self) -> None:
        """A class count the configuration gives the network must be the data's (unset, the
        data's is linked in)."""
        given = self._section(self._given).get("model.model.init_args.num_classes")  # YAML + command line
        classes = self.datamodule.num_classes
        if given is not None and given != classes:
            section = self._section(self.config)
            self.parser.error(
                f"model.model.init_args.num_classes: the configuration says {given}, but the data "
                f"(--data.source {section.get('data.source.class_path')}) has {classes} classes; leave it out to "
                "follow the data"
            )

    def _claim_run_folder(self) -> None:
        """fit: claims the run folder before anything is written into it (`run_folder`): no other
        live fit holds it, and a fit that does not resume finds no earlier run's checkpoints."""
        if self.subcommand != "fit" or not first_process():
            return
        section = self.config["fit"]
        root = section.get("trainer.default_root_dir") or os.getcwd()
        self._run_folder = run_folder.claim(
            root, os.path.join(root, CHECKPOINT_DIR), resuming=section.get("ckpt_path") is not None
        )
        for notice in self._run_folder.notices:
            print(f"notice: {notice}", file=sys.stderr)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        saved_classes = (self._saved_model or {}).get("init_args", {}).get("num_classes")
        if saved_classes is not None and saved_classes != self.model.num_classes:
            self.parser.error(
                f"data.num_classes: the dataset has {self.model.num_classes} classes, checkpoint "
                f"{self.ckpt_path} was trained with {saved_classes}"
            )

    def instantiate_trainer(self, **kwargs: Any):
        self._check_before_the_run()  # the trainer creates the logger: user errors first
        config = self._section(self.config_init).get("trainer") or {}
        root_dir = config.get("default_root_dir") or os.getcwd()
        if self.subcommand == "predict":
            # predict writes under its --output_dir only: no run of the default logger, no config.yaml
            self.save_config_callback = None
            if config.get("logger") is None:
                kwargs["logger"] = False
        elif config.get("logger") in (None, True):
            kwargs["logger"] = default_logger(root_dir, run_id=self._resumed_wandb_run_id())
        # checkpoints written whole or not at all, unless the configuration brings its own writer
        plugins = _as_list(config.get("plugins"))
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = plugins + [AtomicCheckpointIO()]
        callbacks = _as_list(config.get("callbacks"))
        val_check_batches = validation_interval_in_batches(config)
        if val_check_batches is not None:
            kwargs["val_check_interval"] = val_check_batches
        if self.subcommand in (None, "fit", "validate", "test"):
            every_n = self._section(self.config_init).get("checkpoint_every_n_steps", DEFAULT_CHECKPOINT_EVERY_N_STEPS)
            kwargs["callbacks"] = callbacks + default_callbacks(root_dir, config.get("logger") is not False, every_n)
            if config.get("enable_progress_bar") is not False and not any(
                isinstance(cb, ProgressBar) for cb in callbacks
            ):
                kwargs["callbacks"].append(StepProgressBar())
        elif self.subcommand == "predict":
            kwargs["callbacks"] = self._prediction_writer(callbacks)
        kwargs["callbacks"] = kwargs.get("callbacks", callbacks) + [QuietShutdownOnFullDisk()]
        trainer = super().instantiate_trainer(**kwargs)
        check_launch(trainer.num_devices, trainer.num_nodes)  # before a mismatched launch hangs
        return trainer

    def _section(self, config: Namespace) -> Namespace:
        """The running subcommand's part of ``config`` (all of it without a subcommand)."""
        return config[self.subcommand] if self.subcommand else config

    def _resumed_wandb_run_id(self) -> Optional[str]:
        """A fit resumed from a checkpoint goes on logging into the wandb run that wrote it."""
        return self._saved_run_id if self.subcommand == "fit" else None

    def fit(self, **kwargs: Any) -> Any:
        """`deeplab fit`: a run stopped by SIGTERM (checkpoint saved) exits with status 143, not
        with the status 0 of Lightning's `SIGTERMException`; the run folder is released however
        the fit ends."""
        try:
            return self.trainer.fit(**kwargs)
        except SystemExit as stop:
            code = exit_code_of(stop)
            if code is None:
                raise
            raise SystemExit(code) from stop
        finally:
            if self._run_folder is not None:
                self._run_folder.release()

    def validate(self, **kwargs: Any) -> Any:
        return self.trainer.validate(**self._quiet_unless_asked(kwargs))

    def test(self, **kwargs: Any) -> Any:
        return self.trainer.test(**self._quiet_unless_asked(kwargs))

    def _quiet_unless_asked(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The scores report prints its own table; Lightning's raw one (``verbose``) would
        repeat it, unless the command line or the configuration asks for it."""
        given = self._given.get(self.subcommand)
        if given is None or given.get("verbose") is None:
            kwargs["verbose"] = False
        return kwargs

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
