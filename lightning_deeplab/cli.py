"""`deeplab fit|validate|test|predict`: LightningCLI over the module and the DataModule.

This is the only place where configuration is wired to objects.
"""
from __future__ import annotations

import os
from typing import Any

from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ThroughputMonitor
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from .data import SegmentationDataModule
from .loggers import default_logger
from .module import DeepLabV2Module

#: The validation score that picks the best checkpoint.
MONITOR = "val/mIoU"


def batch_size_of(batch: dict[str, Any]) -> int:
    return batch["image"].shape[0]


def default_callbacks(root_dir: str, with_logger: bool = True) -> list:
    """Checkpoints in a fixed folder under the run's root (so `--ckpt_path last` finds them),
    and, when there is a logger, the LR of every parameter group and the training throughput."""
    callbacks = [
        ModelCheckpoint(
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


class DeepLabCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)  # the module owns the paper's SGD + poly
        super().__init__(DeepLabV2Module, SegmentationDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The dataset decides the classes; the model follows it.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any):
        config = self._get(self.config_init, "trainer", default={})
        root_dir = config.get("default_root_dir") or os.getcwd()
        if config.get("logger") in (None, True):
            kwargs["logger"] = default_logger(root_dir)
        if self.subcommand in (None, "fit", "validate", "test") and config.get("callbacks") is not False:
            user_callbacks = config.get("callbacks") or []
            if not isinstance(user_callbacks, list):
                user_callbacks = [user_callbacks]
            kwargs["callbacks"] = user_callbacks + default_callbacks(root_dir, config.get("logger") is not False)
        return super().instantiate_trainer(**kwargs)


def main(args: Any = None) -> None:
    DeepLabCLI(args=args)


if __name__ == "__main__":
    main()
