"""The LightningModule: DeepLab v2's training step (loss, SGD with the poly schedule) and its
evaluation step (scores with and without the dense CRF). Reporting lives in :mod:`lightning_deeplab.callbacks`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal, Optional

import pytorch_lightning as pl
import torch.nn.functional as F
from torch import Tensor, nn

from ..constants import IGNORE_INDEX
from ..crf import DenseCRF, unary_from_softmax
from .crf_loss import CRFTraining, crf_parameter_group, reconcile_crf_state
from ..evaluation.inference import InferenceConfig, infer_probabilities, scores_report
from ..evaluation.metrics import DEFAULT_MIOU_OVER, MIOU_OVER, confusion_matrix_metric, scores_from_confusion
from ..models import load_pretrained
from ..models.arguments import part_config
from .optimization import sgd_with_poly
from ..viz import image_to_uint8

#: The stages that are scored, each without and with the CRF.
EVALUATION_STAGES = ("val", "test")
#: How a score is logged: every process holds the same value (from the confusion matrix summed
#: over all of them), and a "max" over the processes keeps it bit for bit, where a mean may
#: round; saying sync_dist also tells Lightning the value is synchronised (it warns otherwise).
SYNCED_SCORE = {"sync_dist": True, "reduce_fx": "max"}


def resize_labels(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of an integer label map [B, H, W] (ignore labels stay ignore labels)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].long()


class DeepLabV2Module(pl.LightningModule):
    """DeepLab v2 training and evaluation of ``model`` (e.g. :class:`~lightning_deeplab.models.DeepLabV2`
    or a factory's network: RGB 0-255 in, scores at output stride 8 out, ``num_classes`` and
    ``parameter_groups()`` as DeepLabV2 has them).

    Args:
        model: the network, built with random weights.
        crf: the dense CRF of evaluation and prediction (default: :class:`DenseCRF`'s defaults,
            the paper's ResNet-101 setting).
        inference: how validation, test and predict run the network on whole images
            (:class:`~lightning_deeplab.evaluation.inference.InferenceConfig`); training is unaffected.
        pretrained: initial weights (``"imagenet"`` or a path, see
            :func:`~lightning_deeplab.models.load_pretrained`), loaded when fitting starts from
            scratch only (at ``on_fit_start``): a resumed or evaluated checkpoint brings its own.
        lr, momentum, weight_decay, poly_power: SGD and the poly schedule (the paper: 2.5e-4,
            0.9, 5e-4, 0.9).
        head_lr_mult, head_bias_lr_mult: LR multipliers of the classifier's weights and biases.
        loss_resolution: ``"logits"`` resizes the labels (nearest) to every output as the paper
            does; ``"image"`` upsamples the logits to the labels.
        eval_crf: validation and test also score the CRF-refined prediction.
        class_names: one per class (the CLI links the dataset's).
        miou_over: the classes mIoU and mean accuracy average over (see
            :mod:`~lightning_deeplab.evaluation.metrics`): ``"all"`` as DeepLab's official evaluation.
        crf_training: train through ``crf`` too (CRF-as-RNN, :class:`CRFTraining`: the loss
            weight, iterations, LR multiplier of the learned CRF values, per-scale); None: not.

    Checkpoints hold the CRF's learned parameters, which validate, test, predict and
    ``deeplab crf`` then use; the CRF's fixed settings (iterations, standard deviations,
    normalization, whether it learns) always come from the configuration, never from a
    checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        crf: Optional[DenseCRF] = None,
        inference: Optional[InferenceConfig] = None,
        pretrained: Optional[str] = None,
        lr: float = 2.5e-4,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        poly_power: float = 0.9,
        head_lr_mult: float = 10.0,
        head_bias_lr_mult: float = 20.0,
        loss_resolution: Literal["logits", "image"] = "logits",
        eval_crf: bool = True,
        class_names: Optional[list[str]] = None,
        miou_over: Literal[MIOU_OVER] = DEFAULT_MIOU_OVER,  # type: ignore[valid-type]
        crf_training: Optional[CRFTraining] = None,
    ) -> None:
        super().__init__()
        num_classes = getattr(model, "num_classes", None)
        if not isinstance(model, nn.Module) or not isinstance(num_classes, int):
            raise TypeError(f"model must be an nn.Module with an int num_classes, got {type(model).__name__}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but the model has {num_classes} classes")
        if loss_resolution not in ("logits", "image"):
            raise ValueError(f"loss_resolution must be 'logits' or 'image', got {loss_resolution!r}")
        if crf_training is not None and not isinstance(crf_training, CRFTraining):
            raise TypeError(f"crf_training must be a CRFTraining or None, got {type(crf_training).__name__}")
        # Plain values only, however the module is built (from Python or by LightningCLI), so a
        # checkpoint loads without unpickling classes: each part as the class_path/init_args that
        # rebuild it, and load_from_checkpoint rebuilds them as LightningCLI does.
        self.save_hyperparameters(ignore=["model", "crf", "inference", "crf_training"])
        self.inference = InferenceConfig.from_value(inference)
        self.hparams.update(model=part_config(model), inference=self.inference.to_dict())
        self.hparams["crf_training"] = asdict(crf_training) if crf_training is not None else None
        if crf is not None:
            self.hparams["crf"] = part_config(crf)
        self.hparams["_instantiator"] = "pytorch_lightning.cli.instantiate_module"
        self.model = model
        self.crf = crf if crf is not None else DenseCRF()
        self.crf.set_num_classes(num_classes)  # makes a "potts" compatibility, checks a matrix
        self.crf_training = crf_training
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        # One confusion matrix per stage and per refinement, summed over the whole split.
        keys = [f"{stage}{kind}" for stage in EVALUATION_STAGES for kind in ("", "_crf")]
        self.confusion = nn.ModuleDict({key: confusion_matrix_metric(num_classes, IGNORE_INDEX) for key in keys})
        #: The scores report of the last evaluation of each stage (read by the reporting callbacks).
        self.scores: dict[str, dict[str, Any]] = {}
        self._weights_restored = False

    # Initial weights, when fitting from scratch only. Lightning restores a checkpoint after
    # setup() and before on_fit_start(), calling on_load_checkpoint(): a run that restored one
    # (resumed, or a module from load_from_checkpoint) keeps its weights and fetches nothing.
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._weights_restored = True
        reconcile_crf_state(checkpoint["state_dict"], self.crf)  # learned CRF values only

    def on_fit_start(self) -> None:
        if self.hparams.pretrained and not self._weights_restored:
            load_pretrained(self.model, self.hparams.pretrained)
            self._weights_restored = True  # a second fit() goes on from the trained weights

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
                logits = F.interpolate(logits, size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
                target = mask
            losses[name] = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
        return losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        outputs = self.model.forward_multi(batch["image"])
        losses = self.training_losses(outputs, batch["mask"])
        if self.crf_training is not None:
            losses.update(self.crf_training.losses(self.crf, outputs, list(losses), batch["image"], batch["mask"]))
        loss = sum(losses.values())
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if len(losses) > 1:
            for name, value in losses.items():
                self.log(f"train/loss_{name}", value, batch_size=batch_size)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self.model.parameter_groups()
        settings = {
            "backbone": (hp.lr, hp.weight_decay),
            "head_weight": (hp.lr * hp.head_lr_mult, hp.weight_decay),
            "head_bias": (hp.lr * hp.head_bias_lr_mult, 0.0),
        }
        param_groups = [
            {"name": name, "params": groups[name], "lr": lr, "weight_decay": wd} for name, (lr, wd) in settings.items()
        ]
        crf_group = crf_parameter_group(self.crf, self.crf_training, hp.lr)
        param_groups += [crf_group] if crf_group is not None else []
        max_steps = self.trainer.estimated_stepping_batches
        return sgd_with_poly(param_groups, hp.lr, hp.momentum, hp.weight_decay, max_steps, hp.poly_power)

    # --------------------------------------------------------------------------- evaluation
    def predict_probabilities(self, image: Tensor) -> Tensor:
        """Class probabilities [B, C, H, W] at the image size, as :attr:`inference` says
        (whole image or sliding window, averaged over the test-time scales and flips)."""
        return infer_probabilities(self.model, image, self.inference)

    def refine_probabilities(self, probs: Tensor, image: Tensor) -> Tensor:
        """Dense-CRF marginals from class probabilities at the image size and the batch's RGB image."""
        return self.crf(unary_from_softmax(probs.float()), image_to_uint8(image))

    def _evaluate(self, stage: str, batch: dict[str, Any]) -> dict[str, Optional[Tensor]]:
        image, mask = batch["image"], batch["mask"]
        probs = self.predict_probabilities(image)
        pred = probs.argmax(dim=1)
        self.confusion[stage].update(pred, mask)
        crf_pred = None
        if self.hparams.eval_crf:
            crf_pred = self.refine_probabilities(probs, image).argmax(dim=1)
            self.confusion[f"{stage}_crf"].update(crf_pred, mask)
        return {"prediction": pred, "crf_prediction": crf_pred}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Optional[Tensor]]:
        return self._evaluate("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Optional[Tensor]]:
        return self._evaluate("test", batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Probabilities of a batch, with what a prediction writer needs to save them: the
        image, the names, each image's own size (the batch is padded to its largest) and the
        files that could not be read."""
        image = batch["image"]
        sizes = batch.get("size") or [tuple(image.shape[-2:])] * image.shape[0]
        if image.shape[0]:
            probs = self.predict_probabilities(image)
        else:  # every file of the batch was unreadable: nothing to run, only skips to report
            probs = image.new_zeros((0, self.num_classes, *image.shape[-2:]))
        return {
            "probabilities": probs,
            "image": image,
            "name": list(batch["name"]),
            "size": [tuple(int(v) for v in s) for s in sizes],
            "skipped": list(batch.get("skipped", [])),
        }

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_end(self) -> None:
        self._score("test")

    def _score(self, stage: str) -> None:
        """Log the split's scores and keep its report in :attr:`scores`."""
        confusions = {}
        for key in (stage, f"{stage}_crf") if self.hparams.eval_crf else (stage,):
            # compute() sums the matrix over all processes, so every rank logs the same numbers.
            confusions[key] = self.confusion[key].compute().cpu()
            self.confusion[key].reset()
            scores = scores_from_confusion(confusions[key], self.hparams.miou_over)
            for name in ("mIoU", "pixel_acc", "mean_acc", "fw_iou"):
                self.log(f"{key}/{name}", scores[name].float(), prog_bar=name == "mIoU", **SYNCED_SCORE)
            for class_name, iou in zip(self.class_names, scores["iou"]):
                self.log(f"{key}/iou_{class_name}", iou.float(), **SYNCED_SCORE)
        if not self.trainer.sanity_checking:
            self.scores[stage] = scores_report(
                self.class_names, confusions[stage], confusions.get(f"{stage}_crf"), miou_over=self.hparams.miou_over
            )
