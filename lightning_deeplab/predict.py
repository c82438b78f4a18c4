"""Writing predictions to disk: a Lightning prediction writer for ``deeplab predict``.

For every image, under ``output_dir``:

    labels/<name>.png          palette PNG, pixel values = class indices (the VOC format)
    overlays/<name>.jpg        the label colours blended over the image, or image | labels
    probabilities/<name>.npy   (optional) float16 [C, H, W] softmax of the network, for later CRF runs

Every file has its image's own size and appears complete or not at all.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Literal, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from tqdm import tqdm
from pytorch_lightning.callbacks import BasePredictionWriter

from .data.palette import VOC_PALETTE
from .fileio import atomic_output
from .viz import blend, colorize, save_atomically, save_label_png

OVERLAY_KINDS = ("blend", "side_by_side", "none")


class SegmentationWriter(BasePredictionWriter):
    """Saves label maps, overlays and (optionally) probabilities of every predicted image.

    Args:
        output_dir: folder of the outputs (created); ``labels/``, ``overlays/`` and
            ``probabilities/`` go below it.
        overlay: ``"blend"`` (label colours laid over the image), ``"side_by_side"`` (the image
            and the colour labels next to each other) or ``"none"``.
        overlay_alpha: weight of the label colours in a blend, in [0, 1].
        save_probabilities: also save the network's class probabilities (before any CRF) as
            float16 ``.npy`` arrays [C, H, W].
        crf: label maps and overlays from the dense-CRF-refined probabilities (the model's
            ``crf`` settings) instead of the network's.
    """

    def __init__(
        self,
        output_dir: str = "predictions",
        overlay: Literal["blend", "side_by_side", "none"] = "blend",
        overlay_alpha: float = 0.5,
        save_probabilities: bool = False,
        crf: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        if overlay not in OVERLAY_KINDS:
            raise ValueError(f"overlay must be one of {OVERLAY_KINDS}, got {overlay!r}")
        if not 0.0 <= overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must lie in [0, 1], got {overlay_alpha}")
        if not output_dir:
            raise ValueError("output_dir must name a folder")
        self.output_dir = os.fspath(output_dir)
        self.overlay = overlay
        self.overlay_alpha = overlay_alpha
        self.save_probabilities = save_probabilities
        self.crf = crf
        self.written: list[str] = []
        self.skipped: list[tuple[str, str]] = []

    def path_of(self, kind: str, name: str) -> str:
        """Output file of ``kind`` ("labels", "overlays" or "probabilities") for image ``name``."""
        extension = {"labels": ".png", "overlays": ".jpg", "probabilities": ".npy"}[kind]
        return os.path.join(self.output_dir, kind, name + extension)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.written, self.skipped = [], []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Optional[Sequence[int]],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for path, reason in prediction.get("skipped", []):
            self.skipped.append((path, reason))
            _say(f"skipped {path}: {reason}")
        probs, images = prediction["probabilities"], prediction["image"]
        palette = getattr(trainer.datamodule, "palette", None) if trainer.datamodule is not None else None
        palette = VOC_PALETTE if palette is None else palette
        for i, (name, (height, width)) in enumerate(zip(prediction["name"], prediction["size"])):
            image_probs = probs[i : i + 1, :, :height, :width]
            image = images[i : i + 1, :, :height, :width]
            if self.save_probabilities:
                with atomic_output(self.path_of("probabilities", name)) as handle:
                    np.save(handle, image_probs[0].to(torch.float16).cpu().numpy())
            if self.crf:
                with torch.no_grad():
                    image_probs = pl_module.refine_probabilities(image_probs, image)
            labels = image_probs[0].argmax(dim=0).cpu().numpy()
            save_label_png(labels, palette, self.path_of("labels", name))
            if self.overlay != "none":
                pixels = image[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                if self.overlay == "blend":
                    picture = blend(pixels, labels, palette, self.overlay_alpha)
                else:
                    picture = np.concatenate([pixels, colorize(labels, palette)], axis=1)
                save_atomically(Image.fromarray(picture), self.path_of("overlays", name))
            self.written.append(name)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        where = f" (process {trainer.global_rank})" if trainer.world_size > 1 else ""
        message = f"predictions of {len(self.written)} image(s) written to {self.output_dir}{where}"
        if self.skipped:
            message += f"; {len(self.skipped)} file(s) skipped: " + ", ".join(path for path, _ in self.skipped)
        _say(message)


def _say(message: str) -> None:
    # tqdm.write clears and redraws any open progress bar, so its line is not torn
    tqdm.write(message, file=sys.stderr)
