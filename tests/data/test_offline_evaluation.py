"""`deeplab validate` with the VOC config (pretrained: imagenet) and a checkpoint never fetches
weights: the checkpoint brings them, and initial weights load only when fitting from scratch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.hub
import torchvision.models

from lightning_deeplab.commands.cli import DeepLabCLI
from tiny_run import save_untrained_checkpoint

REPO = Path(__file__).resolve().parents[2]
VOC_CONFIGS = [
    word
    for name in ("deeplabv2_resnet101", "voc12aug")
    for word in ("--config", str(REPO / "configs" / f"{name}.yaml"))
]


def test_validate_with_the_voc_config_and_a_checkpoint_fetches_nothing(make_voc, tmp_path, monkeypatch):
    root = make_voc(sizes={"a": (40, 48), "b": (36, 52)}, splits={"val": ["a", "b"]})

    def no_network(*args, **kwargs):
        raise AssertionError("a weight download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_network)
    # the VOC recipe on a network small enough for a test (the checkpoint says the same)
    args = [
        *VOC_CONFIGS,
        "--data.source.root",
        str(root),
        "--data.num_workers",
        "0",
        "--model.model.init_args.backbone",
        "resnet18",
        "--model.model.init_args.msc_scales",
        "null",
        "--model.eval_crf",
        "false",
        "--model.inference.pad_to",
        "null",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
    ]
    ckpt = tmp_path / "voc.ckpt"
    cli = save_untrained_checkpoint(args, ckpt)
    assert cli.model.hparams.pretrained == "imagenet"  # configured, and never loaded below

    validated = DeepLabCLI(args=["validate", *args, "--ckpt_path", str(ckpt)])
    assert "val/mIoU" in validated.trainer.callback_metrics
    saved = json.loads((tmp_path / "voc.val-scores.json").read_text())
    assert saved["checkpoint"] == str(ckpt) and len(saved["classes"]) == 21

    with pytest.raises(AssertionError, match="download was attempted"):  # fitting from scratch would fetch
        DeepLabCLI(
            args=[
                "fit",
                *args,
                "--trainer.max_steps",
                "1",
                "--data.train_split",
                "val",
                "--data.crop_size",
                "33",
                "--data.batch_size",
                "2",
            ]
        )
