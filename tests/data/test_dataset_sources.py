"""Every dataset source through the DataModule, and one through `deeplab validate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from dataset_layouts import (
    cityscapes_stem,
    write_cityscapes,
    write_cocostuff10k,
    write_cocostuff164k,
    write_gray,
    write_rgb,
)
from tiny_run import quiet_args

from lightning_deeplab.commands.cli import DeepLabCLI
from lightning_deeplab.constants import IGNORE_INDEX
import lightning_deeplab.data as data
from lightning_deeplab.data import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    COCO_STUFF_CLASSES,
    VOC_PALETTE,
    CityscapesSource,
    CocoStuff10kSource,
    CocoStuff164kSource,
    FolderSource,
    SegmentationDataModule,
    SegmentationSource,
    SyntheticSource,
    VOCSource,
)

REPO = Path(__file__).resolve().parents[2]
H, W = 20, 24


def label_with(values: list[int], fill: int) -> np.ndarray:
    label = np.full((H, W), fill, np.uint8)
    label[: H // 2, : W // 2] = values[0]
    label[H // 2 :, W // 2 :] = values[1]
    return label


def cityscapes_tree(root: Path) -> dict:
    for split in ("train", "val"):
        labels = {cityscapes_stem("aachen", i): label_with([7, 26], 0) for i in range(2)}
        write_cityscapes(root, split, {"aachen": labels})
    return {
        "source": CityscapesSource,
        "train_split": "train",
        "val_split": "val",
        "classes": CITYSCAPES_CLASSES,
        "palette": CITYSCAPES_PALETTE,
        "values": {0, 13, IGNORE_INDEX},
    }


def cocostuff164k_tree(root: Path) -> dict:
    for split in ("train2017", "val2017"):
        write_cocostuff164k(root, split, {f"{i:012d}": label_with([0, 181], 255) for i in range(2)})
    return {
        "source": CocoStuff164kSource,
        "train_split": "train2017",
        "val_split": "val2017",
        "classes": COCO_STUFF_CLASSES,
        "palette": VOC_PALETTE,
        "values": {0, 170, IGNORE_INDEX},
    }


def cocostuff10k_tree(root: Path) -> dict:
    names = [f"COCO_train2014_{i:012d}" for i in range(4)]
    write_cocostuff10k(root, {n: label_with([1, 182], 0) for n in names}, {"train": names[:2], "test": names[2:]})
    return {
        "source": CocoStuff10kSource,
        "train_split": "train",
        "val_split": "test",
        "classes": COCO_STUFF_CLASSES,
        "palette": VOC_PALETTE,
        "values": {0, 170, IGNORE_INDEX},
    }


def folder_tree(root: Path) -> dict:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\nleaf 10 200 30\n")
    for split in ("train", "val"):
        for i in range(2):
            write_rgb(root / "images" / split / f"img{i}.png", H, W, seed=i)
            write_gray(root / "masks" / split / f"img{i}.png", label_with([1, 255], 0))
    palette = VOC_PALETTE.copy()
    palette[1] = (10, 200, 30)
    return {
        "source": FolderSource,
        "train_split": "train",
        "val_split": "val",
        "classes": ("background", "leaf"),
        "palette": palette,
        "values": {0, 1, IGNORE_INDEX},
    }


TREES = {
    "cityscapes": cityscapes_tree,
    "cocostuff164k": cocostuff164k_tree,
    "cocostuff10k": cocostuff10k_tree,
    "folder": folder_tree,
}


def test_every_exported_source_is_read_here_or_elsewhere(tmp_path):
    exported = {getattr(data, name) for name in data.__all__ if name.endswith("Source")} - {SegmentationSource}
    covered = {tree(tmp_path / name)["source"] for name, tree in TREES.items()}
    assert covered | {VOCSource, SyntheticSource} == exported  # those two have test files of their own


@pytest.mark.parametrize("name", sorted(TREES))
def test_datamodule_reads_each_dataset(tmp_path, name):
    tree = TREES[name](tmp_path)
    dm = SegmentationDataModule(
        tree["source"](tmp_path),
        train_split=tree["train_split"],
        val_split=tree["val_split"],
        crop_size=16,
        batch_size=2,
        val_batch_size=2,
        num_workers=0,
    )
    assert dm.num_classes == len(tree["classes"]) and dm.class_names == list(tree["classes"])
    assert np.array_equal(dm.palette, tree["palette"])
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["mask"].shape == (2, 16, 16)
    assert set(batch["mask"].unique().tolist()) <= tree["values"]
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, H, W) and val["mask"].dtype == torch.int64
    assert set(val["mask"].unique().tolist()) == tree["values"]  # every value, mapped, in full images


def test_datamodule_setup_fails_on_a_missing_split_before_training(tmp_path):
    cityscapes_tree(tmp_path)
    dm = SegmentationDataModule(CityscapesSource(tmp_path), train_split="train_extra", val_split="val", num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/train_extra .*splits present: \['train', 'val'\]"):
        dm.setup("fit")


def test_validate_through_the_cli_links_the_dataset_classes(tmp_path):
    cityscapes_tree(tmp_path / "data")
    cli = DeepLabCLI(
        args=[
            "validate",
            *quiet_args(
                str(tmp_path / "data"),
                "--data.source",
                "CityscapesSource",
                "--data.val_batch_size",
                "2",
                "--model.eval_crf",
                "false",
                "--trainer.default_root_dir",
                str(tmp_path / "run"),
            ),
        ]
    )
    assert cli.model.num_classes == cli.model.model.num_classes == 19
    assert cli.model.hparams.model["init_args"]["num_classes"] == 19  # what the checkpoint says
    assert cli.model.class_names == list(CITYSCAPES_CLASSES)
    assert "val/mIoU" in cli.trainer.callback_metrics


@pytest.mark.parametrize("config", ["cocostuff164k.yaml", "cityscapes.yaml"])
def test_dataset_configs(config, capsys):
    path = REPO / "configs" / config
    assert path.is_file(), f"{config} is missing"
    settings = yaml.safe_load(path.read_text())
    assert issubclass(getattr(data, settings["data"]["source"]["class_path"].rsplit(".", 1)[1]), SegmentationSource)
    base = REPO / "configs" / "deeplabv2_resnet101.yaml"
    with pytest.raises(SystemExit) as exit_info:  # parsing checks every key against the classes
        DeepLabCLI(args=["fit", "--config", str(base), "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    parsed = yaml.safe_load(capsys.readouterr().out)
    assert parsed["data"]["source"] == settings["data"]["source"]
    network = parsed["model"]["model"]["init_args"]
    assert network["backbone"] == "resnet101" and network["head"] == "aspp-l"
