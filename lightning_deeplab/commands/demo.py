"""The offline demo: train DeepLab v2 on a synthetic VOC-layout dataset on the CPU, evaluate it
with and without the dense CRF, and write colour predictions, a results table and a plot.

    python -m lightning_deeplab.commands.demo --output outputs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch
from PIL import Image
from pytorch_lightning.loggers import WandbLogger

from ..runs.checkpoint_config import CHECKPOINT_DIR, LAST_NAME
from .cli import DeepLabCLI
from ..crf._build import packaged_folder
from ..evaluation.inference import format_scores_table
from ..fileio import atomic_output, write_json
from ..callbacks.reporting import scores_path
from ..viz import colorize, image_to_uint8, save_atomically, save_label_png
from ..legend import legend_entries, sheet


def shipped_config(name: str) -> str:
    """The path of a shipped config (wheels carry ``configs/`` as ``lightning_deeplab/configs``)."""
    path = os.path.join(packaged_folder("configs"), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {name} is not among the shipped configs in {os.path.dirname(path)}")
    return path


DEFAULT_CONFIG = "synthetic.yaml"


def plot_per_class(report: dict[str, Any], path: str) -> None:
    """Bars of the per-class IoU of a scores report, without and with the CRF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = {"DeepLab v2": report["without_crf"]}
    if report.get("with_crf") is not None:
        scores["DeepLab v2 + CRF"] = report["with_crf"]
    names = report["classes"]
    x = np.arange(len(names))
    width = 0.8 / len(scores)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    for k, (label, s) in enumerate(scores.items()):
        iou = [100 * (s["iou"][name] or 0.0) for name in names]
        ax.bar(x + k * width, iou, width, label=f"{label} (mIoU {100 * s['mIoU']:.1f})")
    ax.set_xticks(x + width * (len(scores) - 1) / 2, names)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def write_predictions(module, datamodule, output: str, limit: int) -> list[str]:
    """Palette PNGs of the prediction and the CRF prediction, and a strip per image
    (image | ground truth | prediction | CRF prediction, in the dataset's colours, titled, with
    a legend of the classes shown)."""
    module.eval()
    palette = datamodule.palette
    written = []
    for batch in datamodule.val_dataloader():
        probs = module.predict_probabilities(batch["image"])
        refined = module.refine_probabilities(probs, batch["image"]) if module.hparams.eval_crf else None
        for i, name in enumerate(batch["name"]):
            if len(written) >= limit:
                return written
            image = image_to_uint8(batch["image"][i]).permute(1, 2, 0).numpy()
            pred = probs[i].argmax(0).numpy()
            panels = [image, colorize(batch["mask"][i].numpy(), palette), colorize(pred, palette)]
            save_label_png(pred, palette, os.path.join(output, "predictions", f"{name}.png"))
            if refined is not None:
                crf_pred = refined[i].argmax(0).numpy()
                save_label_png(crf_pred, palette, os.path.join(output, "predictions_crf", f"{name}.png"))
                panels.append(colorize(crf_pred, palette))
            strip = comparison_strip(
                panels,
                batch["mask"][i].numpy(),
                pred,
                crf_pred if refined is not None else None,
                palette,
                getattr(datamodule, "class_names", None),
            )
            path = os.path.join(output, "comparisons", f"{name}.png")
            save_atomically(Image.fromarray(strip), path)
            written.append(path)
    return written


#: The panels of a comparison strip, left to right.
PANEL_TITLES = ("image", "ground truth", "prediction", "with CRF")


def comparison_strip(
    panels: list[np.ndarray], truth: np.ndarray, pred: np.ndarray, crf_pred: np.ndarray | None, palette, class_names
) -> np.ndarray:
    """The panels side by side, titled, with the legend of the classes the label panels show."""
    shown = [truth, pred] + ([crf_pred] if crf_pred is not None else [])
    return sheet(panels, legend_entries(shown, palette, class_names), titles=PANEL_TITLES[: len(panels)])


def run(output: str, config: str = DEFAULT_CONFIG, extra_args: list[str] | None = None, num_examples: int = 8) -> dict:
    """Train with ``config`` (a path, or the name of a shipped config), validate the best
    checkpoint, and write the results under ``output``."""
    if not os.path.isfile(config):
        config = shipped_config(config)
    start = time.perf_counter()
    args = ["fit", "--config", config, "--trainer.default_root_dir", output, *(extra_args or [])]
    if os.path.isfile(os.path.join(output, CHECKPOINT_DIR, LAST_NAME)) and "--ckpt_path" not in args:
        # a run folder holds one run: an earlier demo's run goes on (or, finished, is re-scored)
        print(f"resuming the earlier demo run in {output} (--ckpt_path last)")
        args += ["--ckpt_path", "last"]
    cli = DeepLabCLI(args=args)
    train_seconds = time.perf_counter() - start
    # ScoresReport prints the table; Lightning's own (verbose) would print the scores a second time
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    with open(scores_path(cli.trainer, "val")) as f:
        report = json.load(f)  # written by ScoresReport after validation: the protocol's scores
    write_predictions(cli.model.cpu(), cli.datamodule, output, num_examples)
    table = format_scores_table(report, title="validation scores (%)")
    summary = {
        "config": os.path.relpath(config),
        "train_seconds": round(train_seconds, 1),
        "steps": cli.trainer.global_step,
        "scores": report,
    }
    write_json(os.path.join(output, "results.json"), summary)
    with atomic_output(os.path.join(output, "results.md"), "w") as f:
        f.write(
            f"Synthetic VOC-layout validation set, {summary['steps']} training steps in {train_seconds:.0f} s, "
            f"checkpoint {report['checkpoint']}.\n\n```\n{table}\n```\n"
        )
    plot_per_class(report, os.path.join(output, "per_class_iou.png"))
    if isinstance(cli.trainer.logger, WandbLogger):
        cli.trainer.logger.experiment.finish()  # the run is complete: close its files
    print(f"\nwrote {output}/results.md, results.json, per_class_iou.png, predictions/, predictions_crf/, comparisons/")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/demo", help="folder for checkpoints, logs and results")
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="the LightningCLI YAML to train with: a path or a shipped config's name",
    )
    parser.add_argument("--examples", type=int, default=8, help="how many validation images to draw")
    args, extra = parser.parse_known_args()
    run(args.output, args.config, extra, args.examples)


if __name__ == "__main__":
    main()
