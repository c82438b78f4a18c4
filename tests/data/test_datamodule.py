from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

from lightning_deeplab.constants import IGNORE_INDEX, PAD_VALUE
from lightning_deeplab.data import (
    SYNTHETIC_CLASSES,
    VOC_CLASSES,
    VOC_PALETTE,
    SegmentationDataModule,
    SyntheticSource,
    VOCSource,
)
from lightning_deeplab.data import datamodule as datamodule_module

SYNTHETIC = {"num_train": 9, "num_val": 5, "image_size": (40, 56), "seed": 0}


def synthetic_dm(root: Path, num_train: int = SYNTHETIC["num_train"], **kwargs) -> SegmentationDataModule:
    source = SyntheticSource(root, **{**SYNTHETIC, "num_train": num_train})
    options = {"crop_size": 48, "batch_size": 4, "val_batch_size": 3, "num_workers": 0, **kwargs}
    return SegmentationDataModule(source, **options)


def test_synthetic_end_to_end(tmp_path):
    dm = synthetic_dm(tmp_path / "synthetic")
    assert dm.num_classes == len(SYNTHETIC_CLASSES) == 6 and dm.class_names == list(SYNTHETIC_CLASSES)
    assert dm.ignore_index == IGNORE_INDEX and np.array_equal(dm.palette, VOC_PALETTE)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.train_dataloader()
    assert len(train) == 2  # 9 samples, batches of 4, the incomplete one dropped
    batch = next(iter(train))
    assert set(batch) == {"image", "mask", "name"}
    assert batch["image"].shape == (4, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 48, 48) and batch["mask"].dtype == torch.int64
    pixels = batch["image"][batch["image"] != PAD_VALUE]  # crops of small images hold padding
    assert 0 <= pixels.min() and pixels.max() <= 255 and pixels.max() > 1  # 0-255, raw
    assert set(batch["mask"].unique().tolist()) <= set(range(6)) | {IGNORE_INDEX}
    assert len(batch["name"]) == 4 and all(n.startswith("train_") for n in batch["name"])

    val_batches = list(dm.val_dataloader())
    assert [len(b["name"]) for b in val_batches] == [3, 2]
    assert val_batches[0]["image"].shape == (3, 3, 40, 56)  # original size: no augmentation
    assert [n for b in val_batches for n in b["name"]] == [f"val_{i:05d}" for i in range(5)]

    dm.setup("test")  # test_split None -> the val split
    assert [n for b in dm.test_dataloader() for n in b["name"]] == [f"val_{i:05d}" for i in range(5)]


def test_train_aug_default_split_works_on_the_synthetic_set(tmp_path):
    dm = synthetic_dm(tmp_path, crop_size=32)
    assert dm.hparams.train_split == "train_aug"
    dm.setup("fit")
    assert len(dm.dataset("train")) == 9


def test_voc_end_to_end_pads_evaluation_batches(make_voc):
    sizes = {"a": (30, 40), "b": (36, 28), "c": (20, 20)}
    root = make_voc(sizes, {"train_aug": list(sizes), "val": list(sizes)})
    dm = SegmentationDataModule(
        VOCSource(root / "VOCdevkit"), crop_size=32, batch_size=2, val_batch_size=3, num_workers=0
    )
    assert dm.num_classes == 21 and dm.class_names == list(VOC_CLASSES)
    dm.prepare_data()
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 3, 32, 32)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (3, 3, 36, 40) and batch["name"] == ["a", "b", "c"]
    # c is 20x20: everything outside is padding, never counted
    assert torch.all(batch["mask"][2, 20:] == IGNORE_INDEX) and torch.all(batch["mask"][2, :, 20:] == IGNORE_INDEX)
    assert bool((batch["image"][2, :, 20:, :] == PAD_VALUE).all())
    assert set(batch["mask"][2, :20, :20].unique().tolist()) == {0, 15, IGNORE_INDEX}


def test_loader_options(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dm = synthetic_dm(tmp_path, num_workers=2)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.pin_memory and loader.num_workers == 2
    assert loader.drop_last and isinstance(loader.sampler, torch.utils.data.RandomSampler)
    val = dm.val_dataloader()
    assert val.persistent_workers and isinstance(val.sampler, torch.utils.data.SequentialSampler)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dm = synthetic_dm(tmp_path, num_workers=0)
    assert not dm.train_dataloader().persistent_workers and not dm.val_dataloader().pin_memory


def test_workers_get_their_own_augmentation_streams(tmp_path):
    # without reseeding, forked workers replay one stream: the same crops in every worker
    dm = synthetic_dm(tmp_path, batch_size=1, num_workers=2, num_train=1, crop_size=24)
    dataset = dm.dataset("train")
    dataset.samples = dataset.samples * 4  # one image four times: only the augmentation differs
    loader = dm.train_dataloader()
    first, second = [batch["image"] for _, batch in zip(range(2), loader)]  # worker 0, worker 1
    assert not torch.equal(first, second)


def test_augmentation_repeats_under_seed_everything(tmp_path):
    batches = []
    for _ in range(2):
        dm = synthetic_dm(tmp_path)
        pl.seed_everything(7, verbose=False)
        batches.append(next(iter(dm.train_dataloader())))
    assert batches[0]["name"] == batches[1]["name"]
    assert torch.equal(batches[0]["image"], batches[1]["image"])


def test_evaluation_under_ddp_sees_every_sample_once(tmp_path, monkeypatch):
    dm = synthetic_dm(tmp_path, val_batch_size=2)
    names = []
    for rank in range(2):
        monkeypatch.setattr(datamodule_module, "_distributed", lambda rank=rank: (2, rank))
        loader = dm.val_dataloader()
        assert isinstance(loader.sampler, UnrepeatedDistributedSampler)
        names += [n for batch in loader for n in batch["name"]]
    assert sorted(names) == [f"val_{i:05d}" for i in range(5)]  # 3 + 2, nothing repeated


class _RecordNames(pl.LightningModule):
    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.names: list[str] = []

    def validation_step(self, batch, batch_idx):
        self.names += batch["name"]

    def on_validation_epoch_end(self):
        Path(self.out, f"rank{self.global_rank}.txt").write_text("\n".join(self.names))


@pytest.mark.slow
def test_lightning_keeps_the_unrepeated_sampler_under_ddp(tmp_path):
    root = tmp_path / "data"
    dm = synthetic_dm(root, val_batch_size=1)
    dm.prepare_data()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(_RecordNames(str(tmp_path)), datamodule=dm)
    per_rank = [Path(tmp_path, f"rank{r}.txt").read_text().split() for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == [f"val_{i:05d}" for i in range(5)]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"val_batch_size": 0}, ValueError, "val_batch_size"),
        ({"num_workers": -1}, ValueError, "num_workers"),
        ({"crop_size": 0}, ValueError, "crop_size"),
        ({"scale_range": (2.0, 1.0)}, ValueError, "scale_range"),
        ({"val_split": ""}, ValueError, "val_split"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        SegmentationDataModule(VOCSource(tmp_path), **{"num_workers": 0, **kwargs})


def test_a_source_that_is_not_one_is_refused(tmp_path):
    # a root alone, as the DataModule took it before sources were objects
    with pytest.raises(TypeError, match="source must be a SegmentationSource, got PosixPath"):
        SegmentationDataModule(tmp_path)


def test_hparams_hold_the_source_as_plain_values(tmp_path):
    # what a checkpoint saves: the class_path/init_args that rebuild the source, no pickled class
    dm = synthetic_dm(tmp_path / "s", num_train=3)
    saved = dm.hparams["source"]
    assert saved == {
        "class_path": "lightning_deeplab.data.synthetic.SyntheticSource",
        "init_args": {"root": str(tmp_path / "s"), "num_train": 3, "num_val": 5, "image_size": (40, 56), "seed": 0},
    }
    rebuilt = SyntheticSource(**saved["init_args"])
    assert rebuilt.config() == saved
    assert VOCSource(tmp_path).config()["init_args"] == {"root": str(tmp_path)}


def test_missing_voc_root_fails_before_training(tmp_path):
    dm = SegmentationDataModule(VOCSource(tmp_path / "no_such_root"), num_workers=0)
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        dm.prepare_data()
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        dm.setup("fit")


def test_missing_split_fails_at_setup(make_voc):
    root = make_voc({"a": (24, 32)}, {"val": ["a"]})
    dm = SegmentationDataModule(VOCSource(root), num_workers=0)  # train_split "train_aug" is not there
    with pytest.raises(FileNotFoundError, match=r"train_aug\.txt"):
        dm.setup("fit")


def test_train_split_smaller_than_a_batch(tmp_path):
    dm = synthetic_dm(tmp_path, batch_size=10)
    with pytest.raises(ValueError, match="fewer than batch_size 10"):
        dm.train_dataloader()
