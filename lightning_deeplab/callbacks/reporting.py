"""What an evaluation reports beyond the logged scalars, as callbacks the CLI adds by default:
the scores table and JSON (:class:`ScoresReport`), the wandb per-class table and example images
(:class:`WandbReport`), the training FLOPs that ThroughputMonitor reads (:class:`TrainingFlops`), the learned CRF
weights while they train (:class:`LearnedCRFLog`) and the release of the CPU CRF's scratch memory after an evaluation (:class:`ReleaseCRFBuffers`).

Each reads the module's :attr:`~lightning_deeplab.training.module.DeepLabV2Module.scores` after its
evaluation epoch has ended (``on_validation_end`` runs after the module's epoch-end hook).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.flop_counter import FlopCounterMode

from ..constants import IGNORE_INDEX
from ..evaluation.inference import format_scores_table
from ..fileio import write_json
from ..viz import image_to_uint8
from ..crf.values import is_integer


def evaluated_checkpoint(trainer: pl.Trainer) -> Optional[str]:
    """The checkpoint file the trainer evaluates, if any."""
    ckpt_path = trainer.ckpt_path
    return ckpt_path if ckpt_path and os.path.isfile(ckpt_path) else None


def scores_path(trainer: pl.Trainer, stage: str) -> str:
    """Where the scores of ``stage`` are saved: beside the evaluated checkpoint
    (``<checkpoint stem>.<stage>-scores.json``), or ``<stage>-scores.json`` in the trainer's
    ``default_root_dir`` when there is none."""
    checkpoint = evaluated_checkpoint(trainer)
    if checkpoint is not None:
        return f"{os.path.splitext(checkpoint)[0]}.{stage}-scores.json"
    return os.path.join(trainer.default_root_dir, f"{stage}-scores.json")


class ScoresReport(pl.Callback):
    """After ``validate`` and ``test``: print the scores (with and without the CRF) as a table
    and save them, with the inference and CRF settings used, as JSON (see :func:`scores_path`)."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._report(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        report = pl_module.scores.get(stage)
        if report is None or not trainer.is_global_zero:
            return
        checkpoint = evaluated_checkpoint(trainer)
        title = f"{stage} scores (%), {report['num_pixels']} pixels"
        title += f", checkpoint {checkpoint}" if checkpoint else ""
        print("\n" + format_scores_table(report, title=title) + "\n", flush=True)
        path = scores_path(trainer, stage)
        crf = pl_module.crf.settings() if pl_module.hparams.eval_crf else None
        write_json(
            path,
            {
                "stage": stage,
                "checkpoint": checkpoint,
                "inference": pl_module.inference.to_dict(),
                "crf": crf,
                **report,
            },
        )
        print(f"scores saved to {path}", flush=True)


class WandbReport(pl.Callback):
    """At every validation, with a wandb logger: the per-class IoU table and the first
    ``num_images`` images with their ground truth, prediction and CRF prediction."""

    def __init__(self, num_images: int = 4) -> None:
        if not is_integer(num_images) or num_images < 0:
            raise ValueError(f"num_images must be an int >= 0, got {num_images!r}")
        self.num_images = num_images
        self.examples: list[dict[str, Any]] = []

    @staticmethod
    def _wandb_loggers(trainer: pl.Trainer) -> list:
        from pytorch_lightning.loggers import WandbLogger

        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.examples = []

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        room = self.num_images - len(self.examples)
        if room <= 0 or not trainer.is_global_zero or not self._wandb_loggers(trainer):
            return
        for i in range(min(room, batch["image"].shape[0])):
            example = {
                "image": image_to_uint8(batch["image"][i].clone()).permute(1, 2, 0).cpu().numpy(),
                "ground_truth": batch["mask"][i].cpu().numpy(),
                "prediction": outputs["prediction"][i].cpu().numpy(),
            }
            if outputs.get("crf_prediction") is not None:
                example["crf_prediction"] = outputs["crf_prediction"][i].cpu().numpy()
            self.examples.append(example)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        report = pl_module.scores.get("val")
        loggers = self._wandb_loggers(trainer)
        if trainer.sanity_checking or report is None or not loggers:
            return
        with_crf = report["with_crf"] is not None
        columns = ["class", "IoU"] + (["IoU with CRF"] if with_crf else [])
        rows = [
            [name, report["without_crf"]["iou"][name]] + ([report["with_crf"]["iou"][name]] if with_crf else [])
            for name in report["classes"]
        ]
        labels = dict(enumerate(pl_module.class_names))
        labels[IGNORE_INDEX] = "ignore"
        masks = [
            {key: {"mask_data": ex[key], "class_labels": labels} for key in ex if key != "image"}
            for ex in self.examples
        ]
        for logger in loggers:
            logger.log_table(key="val/per_class_iou", columns=columns, data=rows)
            if self.examples:
                logger.log_image(key="val/examples", images=[ex["image"] for ex in self.examples], masks=masks)


class TrainingFlops(pl.Callback):
    """Counts the FLOPs of the first training batch as it runs (forward and backward, with
    ``torch.utils.flop_counter``), as ``pl_module.flops_per_batch``, what ThroughputMonitor
    reads. Operators without a FLOP formula (the CRF's) count 0."""

    def __init__(self) -> None:
        self._counter: Optional[FlopCounterMode] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # unknown until the first training batch (ThroughputMonitor warns when there is no attribute)
        if not hasattr(pl_module, "flops_per_batch"):
            pl_module.flops_per_batch = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if getattr(pl_module, "flops_per_batch", None) is None and self._counter is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._counter is not None:
            pl_module.flops_per_batch = self._stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._counter is not None:
            self._stop()

    def _stop(self) -> int:
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)
        return counter.get_total_flops()


class ReleaseCRFBuffers(pl.Callback):
    """After an evaluation with the CRF: free the CPU CRF's cached scratch buffers (kept for the
    next image while evaluating; training needs the memory)."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release(pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release(pl_module)

    @staticmethod
    def _release(pl_module: pl.LightningModule) -> None:
        if pl_module.hparams.get("eval_crf"):
            from ..crf import release_cached_buffers

            release_cached_buffers()


class LearnedCRFLog(pl.Callback):
    """While a trainable CRF learns (``model.crf_training``): its kernel weights, and the mean
    diagonal and off-diagonal of its compatibility, logged every ``log_every_n_steps``."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        crf = getattr(pl_module, "crf", None)
        if crf is None or not any(True for _ in crf.parameters()) or trainer.global_step % trainer.log_every_n_steps:
            return
        values = {"crf/pos_w": crf.pos_w.detach(), "crf/bi_w": crf.bi_w.detach()}
        matrix = crf.compatibility
        if matrix is not None:
            diagonal = matrix.detach().diagonal()
            values["crf/compatibility_diagonal"] = diagonal.mean()
            if matrix.shape[0] > 1:
                off = (matrix.detach().sum() - diagonal.sum()) / (matrix.numel() - matrix.shape[0])
                values["crf/compatibility_off_diagonal"] = off
        pl_module.log_dict({k: v.float() for k, v in values.items()}, on_step=True, on_epoch=False)


def default_reporting(with_logger: bool = True) -> list[pl.Callback]:
    """The reporting callbacks the CLI adds to fit, validate and test."""
    callbacks: list[pl.Callback] = [ScoresReport(), ReleaseCRFBuffers()]
    if with_logger:
        callbacks += [TrainingFlops(), WandbReport(), LearnedCRFLog()]
    return callbacks
