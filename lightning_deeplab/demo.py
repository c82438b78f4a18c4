"""The offline demo: train DeepLab v2 on a synthetic VOC-layout dataset on the CPU, evaluate it
with and without the dense CRF, and write colour predictions, a results table and a plot.

    python -m lightning_deeplab.demo --output outputs/demo
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

from .cli import DeepLabCLI
from .viz import colorize, save_atomically, save_label_png

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "synthetic.yaml")


def _scores(results: dict[str, float], prefix: str, class_names: list[str]) -> dict[str, Any]:
    return {
        "mIoU": results[f"{prefix}/mIoU"],
        "pixel_acc": results[f"{prefix}/pixel_acc"],
        "mean_acc": results[f"{prefix}/mean_acc"],
        "fw_iou": results[f"{prefix}/fw_iou"],
        "iou": {name: results[f"{prefix}/iou_{name}"] for name in class_names},
    }


def results_table(scores: dict[str, dict[str, Any]]) -> str:
    names = list(next(iter(scores.values()))["iou"])
    lines = [
        "| | mIoU | pixel acc | mean acc | fw IoU | " + " | ".join(names) + " |",
        "|---" * (5 + len(names)) + "|",
    ]
    for label, s in scores.items():
        cells = [s["mIoU"], s["pixel_acc"], s["mean_acc"], s["fw_iou"], *s["iou"].values()]
        lines.append(f"| {label} | " + " | ".join(f"{100 * v:.2f}" for v in cells) + " |")
    return "\n".join(lines)


def plot_per_class(scores: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(scores.values()))["iou"])
    x = np.arange(len(names))
    width = 0.8 / len(scores)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    for k, (label, s) in enumerate(scores.items()):
        ax.bar(x + k * width, [100 * v for v in s["iou"].values()], width, label=f"{label} (mIoU {100 * s['mIoU']:.1f})")
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
    (image | ground truth | prediction | CRF prediction, in the dataset's colours)."""
    module.eval()
    palette = datamodule.palette
    written = []
    for batch in datamodule.val_dataloader():
        logits = module.predict_scores(batch["image"])
        refined = module.refine_with_crf(logits, batch["image"]) if module.crf is not None else None
        for i, name in enumerate(batch["name"]):
            if len(written) >= limit:
                return written
            image = batch["image"][i].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
            pred = logits[i].argmax(0).numpy()
            panels = [image, colorize(batch["mask"][i].numpy(), palette), colorize(pred, palette)]
            save_label_png(pred, palette, os.path.join(output, "predictions", f"{name}.png"))
            if refined is not None:
                crf_pred = refined[i].argmax(0).numpy()
                save_label_png(crf_pred, palette, os.path.join(output, "predictions_crf", f"{name}.png"))
                panels.append(colorize(crf_pred, palette))
            strip = np.concatenate(panels, axis=1)
            path = os.path.join(output, "comparisons", f"{name}.png")
            save_atomically(Image.fromarray(strip), path)
            written.append(path)
    return written


def run(output: str, config: str = DEFAULT_CONFIG, extra_args: list[str] | None = None, num_examples: int = 8) -> dict:
    start = time.perf_counter()
    args = ["fit", "--config", config, "--trainer.default_root_dir", output, *(extra_args or [])]
    cli = DeepLabCLI(args=args)
    train_seconds = time.perf_counter() - start
    results = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path="best")[0]
    class_names = cli.datamodule.class_names
    scores = {"DeepLab v2": _scores(results, "val", class_names)}
    if cli.model.crf is not None:
        scores["DeepLab v2 + CRF"] = _scores(results, "val_crf", class_names)
    write_predictions(cli.model.cpu(), cli.datamodule, output, num_examples)
    table = results_table(scores)
    summary = {
        "config": os.path.relpath(config),
        "train_seconds": round(train_seconds, 1),
        "steps": cli.trainer.global_step,
        "best_checkpoint": cli.trainer.checkpoint_callback.best_model_path,
        "scores": scores,
    }
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(output, "results.md"), "w") as f:
        f.write(f"Synthetic VOC-layout validation set, {summary['steps']} training steps in {train_seconds:.0f} s.\n\n")
        f.write(table + "\n")
    plot_per_class(scores, os.path.join(output, "per_class_iou.png"))
    print("\n" + table)
    print(f"\nwrote {output}/results.md, results.json, per_class_iou.png, predictions/, predictions_crf/, comparisons/")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/demo", help="folder for checkpoints, logs and results")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the LightningCLI YAML to train with")
    parser.add_argument("--examples", type=int, default=8, help="how many validation images to draw")
    args, extra = parser.parse_known_args()
    run(args.output, args.config, extra, args.examples)


if __name__ == "__main__":
    main()
