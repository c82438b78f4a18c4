"""The LightningModule: DeepLab v2's loss, optimisation schedule, metrics and CRF evaluation."""
from __future__ import annotations

import math
import os
from typing import Any, Literal, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import measure_flops
from torch import Tensor

from .constants import IGNORE_INDEX
from .evaluation import InferenceConfig, format_scores_table, infer_probabilities, scores_report
from .fileio import write_json
from .metrics import confusion_matrix_metric, scores_from_confusion
from .models import DeepLabV2


def poly_lr_factor(step: int, max_steps: int, power: float = 0.9) -> float:
    """The paper's "poly" policy: lr = base * (1 - step / max_steps) ** power, 0 after the end."""
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive for the poly schedule, got {max_steps}")
    return max(0.0, 1.0 - min(step, max_steps) / max_steps) ** power


def resize_labels(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of an integer label map [B, H, W] (ignore labels stay ignore labels)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].long()


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def image_to_uint8(image: Tensor) -> Tensor:
    """The batch's RGB 0-255 float image as the uint8 image the dense CRF's colour kernel reads."""
    return image.round().clamp_(0, 255).to(torch.uint8)


class DeepLabV2Module(pl.LightningModule):
    """DeepLab v2 training and evaluation.

    Args mirror the paper's recipe (ResNet-101, ASPP-L, MSC, frozen BN, SGD 2.5e-4 with poly 0.9,
    10x/20x LR on the classifier weights/biases). ``loss_resolution="logits"`` resizes the labels
    (nearest) to every output as the paper does; ``"image"`` upsamples the logits to the labels.
    With ``eval_crf`` validation and test also score the dense-CRF-refined prediction; ``crf``
    holds keyword arguments of :class:`lightning_deeplab.crf.DenseCRF` (its defaults are the
    paper's ResNet-101 setting). ``inference`` says how validation, test and predict run the
    network on whole images (:class:`~lightning_deeplab.evaluation.InferenceConfig`: whole or
    sliding window, test-time scales and flip; a mapping of its fields is accepted too);
    training is unaffected.

    After ``validate`` and ``test`` the scores (with and without the CRF) are printed as a table
    and saved as JSON beside the evaluated checkpoint (``<checkpoint stem>.<stage>-scores.json``),
    or as ``<stage>-scores.json`` in the trainer's ``default_root_dir`` when no checkpoint was
    given.
    """

    def __init__(
        self,
        backbone: str = "resnet101",
        head: str = "aspp-l",
        num_classes: int = 21,
        msc_scales: Optional[tuple[float, ...]] = (1.0, 0.75, 0.5),
        atrous_rates: Optional[tuple[int, ...]] = None,
        style: str = "caffe",
        norm: str = "frozen",
        pretrained: Optional[str] = None,
        lr: float = 2.5e-4,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        poly_power: float = 0.9,
        head_lr_mult: float = 10.0,
        head_bias_lr_mult: float = 20.0,
        loss_resolution: Literal["logits", "image"] = "logits",
        eval_crf: bool = True,
        crf: Optional[dict[str, Any]] = None,
        class_names: Optional[list[str]] = None,
        ignore_index: int = IGNORE_INDEX,
        num_logged_images: int = 4,
        inference: Optional[InferenceConfig] = None,
    ) -> None:
        super().__init__()
        if loss_resolution not in ("logits", "image"):
            raise ValueError(f"loss_resolution must be 'logits' or 'image', got {loss_resolution!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.inference = InferenceConfig.from_value(inference)
        # Hyperparameters hold plain values, so checkpoints load without unpickling classes.
        inference = self.inference.to_dict()  # noqa: F841 (read by save_hyperparameters)
        self.save_hyperparameters()
        self._architecture = dict(
            backbone=backbone,
            head=head,
            num_classes=num_classes,
            msc_scales=msc_scales,
            atrous_rates=atrous_rates,
            style=style,
            norm=norm,
        )
        self.model = DeepLabV2(**self._architecture, pretrained=pretrained)
        #: FLOPs of one training step, measured on the first batch (read by ThroughputMonitor).
        self.flops_per_batch: Optional[int] = None
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        # Built even when unused, so a mistake in the CRF settings surfaces at start-up.
        crf_layer = self._build_crf(crf) if (eval_crf or crf) else None
        self.crf = crf_layer if eval_crf else None
        # A CRF for prediction when evaluation does not use one (not a submodule: never saved).
        self._spare_crf: dict[torch.device, torch.nn.Module] = {}
        # One confusion matrix per stage and per refinement, summed over the whole split.
        self.confusion = torch.nn.ModuleDict(
            {
                key: confusion_matrix_metric(num_classes, ignore_index)
                for key in ("val", "val_crf", "test", "test_crf")
            }
        )
        self._logged_examples: list[dict[str, Any]] = []

    @staticmethod
    def _build_crf(params: Optional[dict[str, Any]]) -> torch.nn.Module:
        from .crf import DenseCRF

        try:
            return DenseCRF(**(params or {}))
        except TypeError as err:  # an unknown key in the config: say which section it came from
            raise TypeError(f"model.crf: {err}") from err

    # The CRF's settings come from the configuration (saved in the hyperparameters), never from
    # a checkpoint: evaluating a checkpoint with other CRF settings must use the new ones.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("crf.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("crf.")]:
            del state[key]
        if self.crf is not None:
            state.update({f"crf.{k}": v for k, v in self.crf.state_dict().items()})

    def forward(self, image: Tensor) -> Tensor:
        """Fused logits at output stride 8 for an RGB 0-255 image batch."""
        return self.model(image)

    # ----------------------------------------------------------------------------- training
    def training_losses(self, outputs: list[Tensor], mask: Tensor) -> dict[str, Tensor]:
        """Cross-entropy of every output of ``forward_multi`` (per MSC scale, then the fused map)."""
        scales = self.model.msc_scales if len(outputs) > 1 else ()
        names = [f"scale{s:g}" for s in scales] + ["fused"]
        losses = {}
        for name, logits in zip(names, outputs):
            if self.hparams.loss_resolution == "logits":
                target = resize_labels(mask, tuple(logits.shape[-2:]))
            else:
                logits, target = upsample_logits(logits, tuple(mask.shape[-2:])), mask
            losses[name] = F.cross_entropy(logits.float(), target, ignore_index=self.hparams.ignore_index)
        return losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self.training_losses(self.model.forward_multi(batch["image"]), batch["mask"])
        loss = sum(losses.values())
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if len(losses) > 1:
            for name, value in losses.items():
                self.log(f"train/loss_{name}", value, batch_size=batch_size)
        return loss

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.flops_per_batch is None:
            self.flops_per_batch = self.training_flops(tuple(batch["image"].shape))

    def training_flops(self, image_shape: tuple[int, ...]) -> int:
        """Forward + backward FLOPs of the training network for one batch, counted on a
        meta-device copy (no memory, no compute)."""
        with torch.device("meta"):
            model = DeepLabV2(**self._architecture)
            image = torch.empty(image_shape)
        return measure_flops(model, lambda: model.forward_multi(image), lambda outs: sum(o.sum() for o in outs))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self.model.parameter_groups()
        settings = {
            "backbone": (hp.lr, hp.weight_decay),
            "head_weight": (hp.lr * hp.head_lr_mult, hp.weight_decay),
            "head_bias": (hp.lr * hp.head_bias_lr_mult, 0.0),
        }
        param_groups = [
            {"name": name, "params": groups[name], "lr": lr, "weight_decay": wd}
            for name, (lr, wd) in settings.items()
            if groups[name]
        ]
        optimizer = torch.optim.SGD(param_groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        max_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(max_steps):
            raise ValueError("the poly schedule needs a finite length: set trainer.max_steps or trainer.max_epochs")
        max_steps = int(max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: poly_lr_factor(step, max_steps, hp.poly_power)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --------------------------------------------------------------------------- evaluation
    def predict_probabilities(self, image: Tensor) -> Tensor:
        """Class probabilities [B, C, H, W] at the image size, as :attr:`inference` says
        (whole image or sliding window, averaged over the test-time scales and flips)."""
        return infer_probabilities(self.model, image, self.inference)

    def refine_probabilities(self, probs: Tensor, image: Tensor) -> Tensor:
        """Dense-CRF marginals from class probabilities at the image size and the batch's RGB
        image. Uses the evaluation CRF, or one built from ``crf`` when ``eval_crf`` is off."""
        from .crf import unary_from_softmax

        return self.dense_crf(probs.device)(unary_from_softmax(probs.float()), image_to_uint8(image))

    def dense_crf(self, device: Optional[torch.device] = None) -> torch.nn.Module:
        """The CRF layer of this model's ``crf`` settings (the evaluation one when there is one)."""
        if self.crf is not None:
            return self.crf
        device = torch.device(device) if device is not None else self.device
        if device not in self._spare_crf:
            self._spare_crf[device] = self._build_crf(self.hparams.crf).to(device)
        return self._spare_crf[device]

    def _evaluate(self, stage: str, batch: dict[str, Any], batch_idx: int) -> None:
        image, mask = batch["image"], batch["mask"]
        probs = self.predict_probabilities(image)
        pred = probs.argmax(dim=1)
        self.confusion[stage].update(pred, mask)
        crf_pred = None
        if self.crf is not None:
            crf_pred = self.refine_probabilities(probs, image).argmax(dim=1)
            self.confusion[f"{stage}_crf"].update(crf_pred, mask)
        if stage == "val":
            self._keep_examples(image, mask, pred, crf_pred)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Probabilities of a batch, with what a prediction writer needs to save them: the
        image, the names, each image's own size (the batch is padded to its largest) and the
        files that could not be read."""
        image = batch["image"]
        sizes = batch.get("size") or [tuple(image.shape[-2:])] * image.shape[0]
        if image.shape[0]:
            probs = self.predict_probabilities(image)
        else:  # every file of the batch was unreadable: nothing to run, only skips to report
            probs = image.new_zeros((0, self.hparams.num_classes, *image.shape[-2:]))
        return {
            "probabilities": probs,
            "image": image,
            "name": list(batch["name"]),
            "size": [tuple(int(v) for v in s) for s in sizes],
            "skipped": list(batch.get("skipped", [])),
        }

    def _keep_examples(self, image: Tensor, mask: Tensor, pred: Tensor, crf_pred: Optional[Tensor]) -> None:
        room = self.hparams.num_logged_images - len(self._logged_examples)
        if room <= 0 or not self.trainer.is_global_zero:
            return
        for i in range(min(room, image.shape[0])):
            example = {
                "image": image_to_uint8(image[i]).permute(1, 2, 0).cpu().numpy(),
                "ground_truth": mask[i].cpu().numpy(),
                "prediction": pred[i].cpu().numpy(),
            }
            if crf_pred is not None:
                example["crf_prediction"] = crf_pred[i].cpu().numpy()
            self._logged_examples.append(example)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("val", batch, batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("test", batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        self._logged_examples = []

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")
        self._log_examples()
        self._release_crf_buffers()

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")
        self._release_crf_buffers()

    def _release_crf_buffers(self) -> None:
        # The CPU CRF keeps its large scratch buffers for the next image; training needs the memory.
        if self.crf is not None:
            from .crf import release_cached_buffers

            release_cached_buffers()

    def _log_scores(self, stage: str) -> None:
        confusions = {}
        for key in (stage, f"{stage}_crf"):
            metric = self.confusion[key]
            if key.endswith("_crf") and self.crf is None:
                continue
            # compute() sums the matrix over all processes, so every rank logs the same numbers.
            confusions[key] = metric.compute().cpu()
            metric.reset()
            scores = scores_from_confusion(confusions[key])
            for name in ("mIoU", "pixel_acc", "mean_acc", "fw_iou"):
                self.log(f"{key}/{name}", scores[name].float(), prog_bar=name == "mIoU")
            for class_name, iou in zip(self.class_names, scores["iou"]):
                self.log(f"{key}/iou_{class_name}", iou.float())
        if self.trainer.sanity_checking:
            return
        report = scores_report(self.class_names, confusions[stage], confusions.get(f"{stage}_crf"))
        self._log_scores_table(stage, report)
        if self.trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING) and self.trainer.is_global_zero:
            self._report_scores(stage, report)

    def _evaluated_checkpoint(self) -> Optional[str]:
        ckpt_path = self.trainer.ckpt_path
        return ckpt_path if ckpt_path and os.path.isfile(ckpt_path) else None

    def scores_path(self, stage: str) -> str:
        """Where the scores of ``stage`` are saved: beside the evaluated checkpoint, or in the
        trainer's ``default_root_dir`` when there is none."""
        checkpoint = self._evaluated_checkpoint()
        if checkpoint is not None:
            return f"{os.path.splitext(checkpoint)[0]}.{stage}-scores.json"
        return os.path.join(self.trainer.default_root_dir, f"{stage}-scores.json")

    def _report_scores(self, stage: str, report: dict[str, Any]) -> None:
        checkpoint = self._evaluated_checkpoint()
        title = f"{stage} scores (%), {report['num_pixels']} pixels"
        title += f", checkpoint {checkpoint}" if checkpoint else ""
        print("\n" + format_scores_table(report, title=title) + "\n", flush=True)
        path = self.scores_path(stage)
        crf = dict(self.hparams.crf or {}) if self.crf is not None else None
        write_json(path, {"stage": stage, "checkpoint": checkpoint, "inference": self.inference.to_dict(),
                          "crf": crf, **report})  # fmt: skip
        print(f"scores saved to {path}", flush=True)

    def _log_scores_table(self, stage: str, report: dict[str, Any]) -> None:
        from pytorch_lightning.loggers import WandbLogger

        loggers = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        columns = ["class", "IoU"] + (["IoU with CRF"] if report["with_crf"] is not None else [])
        rows = [
            [name, report["without_crf"]["iou"][name]]
            + ([report["with_crf"]["iou"][name]] if report["with_crf"] is not None else [])
            for name in report["classes"]
        ]
        for logger in loggers:
            logger.log_table(key=f"{stage}/per_class_iou", columns=columns, data=rows)

    def _log_examples(self) -> None:
        from pytorch_lightning.loggers import WandbLogger

        if not self._logged_examples or not isinstance(self.logger, WandbLogger):
            return
        labels = dict(enumerate(self.class_names))
        labels[self.hparams.ignore_index] = "ignore"
        masks = [
            {key: {"mask_data": ex[key], "class_labels": labels} for key in ex if key != "image"}
            for ex in self._logged_examples
        ]
        self.logger.log_image(
            key="val/examples", images=[ex["image"] for ex in self._logged_examples], masks=masks
        )
