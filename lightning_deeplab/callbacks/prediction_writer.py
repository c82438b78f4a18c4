"""Writing predictions to disk: a Lightning prediction writer for ``deeplab predict``.

For every image, under ``output_dir``:

    labels/<name>.png          palette PNG, pixel values = class indices (the VOC format)
    overlays/<name>.jpg        the label colours blended over the image (the background left as it
                               is), or image | labels; a legend of the classes shown above
    labels_crf/<name>.png      (with ``crf``) the same from the dense-CRF-refined probabilities
    overlays_crf/<name>.jpg    (with ``crf``)
    probabilities/<name>.npy   (optional) float16 [C, H, W] softmax of the network, for later CRF
                               runs (``deeplab crf``)

Every file has its image's own size (an overlay's legend adds rows above it) and appears
complete or not at all. Outputs of an earlier run are never replaced silently: an output
folder that already holds predictions is refused unless ``overwrite`` is set.
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

from ..data.palette import VOC_PALETTE
from ..fileio import atomic_output
from ..viz import blend, colorize, image_to_uint8, save_atomically, save_label_png
from ..legend import background_classes, legend_entries, sheet

OVERLAY_KINDS = ("blend", "side_by_side", "none")
#: Output folder (below ``output_dir``) -> file extension.
OUTPUT_KINDS = {
    "labels": ".png",
    "overlays": ".jpg",
    "labels_crf": ".png",
    "overlays_crf": ".jpg",
    "probabilities": ".npy",
}
#: Where predictions go when no ``output_dir`` is given: this folder under the run's root.
DEFAULT_FOLDER = "predictions"


class SegmentationWriter(BasePredictionWriter):
    """Saves label maps, overlays and (optionally) probabilities of every predicted image.

    Args:
        output_dir: folder of the outputs (created); ``labels/``, ``overlays/``,
            ``labels_crf/``, ``overlays_crf/`` and ``probabilities/`` go below it. None:
            ``predictions/`` under the trainer's ``default_root_dir``.
        overlay: ``"blend"`` (label colours laid over the image), ``"side_by_side"`` (the image
            and the colour labels next to each other) or ``"none"``.
        overlay_alpha: weight of the label colours in a blend, in [0, 1].
        paint_background: a blend also colours the pixels of the class named "background"
            (off: they stay as in the photo). Every overlay carries a legend of the classes
            it shows, above the picture.
        save_probabilities: also save the network's class probabilities (before any CRF) as
            float16 ``.npy`` arrays [C, H, W].
        crf: also write label maps and overlays of the dense-CRF-refined probabilities (the
            model's ``crf`` settings) to ``labels_crf/`` and ``overlays_crf/``, beside the
            network's in ``labels/`` and ``overlays/``.
        overwrite: replace the outputs of an earlier run in ``output_dir``; off: a folder that
            already holds predictions is refused before anything is predicted.
    """

    def __init__(
        self,
        output_dir: Optional[str] = None,
        overlay: Literal["blend", "side_by_side", "none"] = "blend",
        overlay_alpha: float = 0.5,
        paint_background: bool = False,
        save_probabilities: bool = False,
        crf: bool = False,
        overwrite: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        if overlay not in OVERLAY_KINDS:
            raise ValueError(f"overlay must be one of {OVERLAY_KINDS}, got {overlay!r}")
        if not 0.0 <= overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must lie in [0, 1], got {overlay_alpha}")
        if output_dir is not None and not os.fspath(output_dir):
            raise ValueError("output_dir must name a folder (or be None: predictions/ under the run's root)")
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.overlay = overlay
        self.overlay_alpha = overlay_alpha
        self.paint_background = paint_background
        self.save_probabilities = save_probabilities
        self.crf = crf
        self.overwrite = overwrite
        self.written: list[str] = []
        self.skipped: list[tuple[str, str]] = []

    def path_of(self, kind: str, name: str) -> str:
        """Output file of ``kind`` (a key of :data:`OUTPUT_KINDS`) for image ``name``."""
        return os.path.join(self.output_dir, kind, name + OUTPUT_KINDS[kind])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if self.output_dir is None:
            self.output_dir = os.path.join(trainer.default_root_dir, DEFAULT_FOLDER)
        if not self.overwrite:
            # one look, by the first process, shared with all: the others must not see its new files
            earlier = trainer.strategy.broadcast(existing_outputs(self.output_dir) if trainer.is_global_zero else None)
            if earlier:
                raise FileExistsError(
                    f"output_dir {self.output_dir} already holds {len(earlier)} prediction file(s) (e.g. "
                    f"{earlier[0]}); choose another folder or pass --overwrite true to replace them"
                )

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
        names = getattr(pl_module, "class_names", None)
        for i, (name, (height, width)) in enumerate(zip(prediction["name"], prediction["size"])):
            image_probs = probs[i : i + 1, :, :height, :width]
            image = images[i : i + 1, :, :height, :width]
            if self.save_probabilities:
                with atomic_output(self.path_of("probabilities", name)) as handle:
                    np.save(handle, image_probs[0].to(torch.float16).cpu().numpy())
            pixels = image_to_uint8(image[0]).permute(1, 2, 0).cpu().numpy() if self.overlay != "none" else None
            self._write_labels(name, image_probs[0].argmax(dim=0).cpu().numpy(), pixels, palette, names, "")
            if self.crf:
                with torch.no_grad():
                    refined = pl_module.refine_probabilities(image_probs, image)
                self._write_labels(name, refined[0].argmax(dim=0).cpu().numpy(), pixels, palette, names, "_crf")
            self.written.append(name)

    def _write_labels(
        self,
        name: str,
        labels: np.ndarray,
        pixels: Optional[np.ndarray],
        palette,
        class_names: Optional[Sequence[str]],
        suffix: str,
    ) -> None:
        save_label_png(labels, palette, self.path_of("labels" + suffix, name))
        if pixels is not None:
            picture = self.overlay_sheet(pixels, labels, palette, class_names)
            # full-resolution colour: subsampled, the legend's white and the class edges would bleed
            save_atomically(Image.fromarray(picture), self.path_of("overlays" + suffix, name), subsampling=0)

    def overlay_sheet(
        self, pixels: np.ndarray, labels: np.ndarray, palette, class_names: Optional[Sequence[str]]
    ) -> np.ndarray:
        """The overlay of ``labels`` on the image ``pixels``, below the legend of the classes it shows."""
        if self.overlay == "blend":
            kept = () if self.paint_background else background_classes(class_names)
            panels = [blend(pixels, labels, palette, self.overlay_alpha, keep=kept)]
        else:
            kept, panels = (), [pixels, colorize(labels, palette)]
        return sheet(panels, legend_entries([labels], palette, class_names, leave_out=kept))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        where = f" (process {trainer.global_rank})" if trainer.world_size > 1 else ""
        message = f"predictions of {len(self.written)} image(s) written to {self.output_dir}{where}"
        if self.skipped:
            message += f"; {len(self.skipped)} file(s) skipped: " + ", ".join(path for path, _ in self.skipped)
        renamed = getattr(trainer.datamodule, "predict_renamed", []) if trainer.datamodule is not None else []
        if renamed and getattr(trainer, "is_global_zero", True):
            message += f"; {len(renamed)} image(s) share a name with another, so their outputs are named: " + ", ".join(
                f"{path} -> {name}" for path, name in renamed
            )
        _say(message)


def existing_outputs(output_dir: str) -> list[str]:
    """Prediction files an earlier run left in ``output_dir`` (in the folders this writer fills)."""
    found = []
    for kind, extension in OUTPUT_KINDS.items():
        folder = os.path.join(output_dir, kind)
        if os.path.isdir(folder):
            for parent, _, files in os.walk(folder):
                found += [os.path.join(parent, f) for f in sorted(files) if f.endswith(extension)]
    return found


def _say(message: str) -> None:
    # tqdm.write clears and redraws any open progress bar, so its line is not torn
    tqdm.write(message, file=sys.stderr)
