"""The LightningDataModule: one dataset (a :class:`SegmentationSource`), the training
augmentation, and loaders whose evaluation side is exact under DDP."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .check import BadSamples, split_problems
from .collate import pad_collate
from .files import LabelledImage
from .images import PredictImages, predict_collate
from .listing import MissingFiles
from .source import SegmentationSource
from .transforms import build_train_transform, seed_transform
from ..crf.values import is_integer

_ROLES = ("train", "val", "test")


def _distributed() -> tuple[int, int]:
    """(world size, rank) of the initialised process group, or (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _mix_seed(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


def _seed_worker_transform(worker_id: int, rank: int) -> None:
    # Forked workers start with copies of one augmentation stream; give each its own, derived
    # from the per-worker seed that torch draws (it changes every epoch) and the process rank.
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None:
        seed_transform(transform, _mix_seed(info.seed, rank))


class SegmentationDataModule(pl.LightningDataModule):
    """Loaders for semantic segmentation.

    Every loader yields ``{"image": float32 [B, 3, H, W] RGB 0-255 (not normalised),
    "mask": int64 [B, H, W] (255 = ignore), "name": list[str]}``. Training samples are scaled,
    padded, cropped to ``crop_size`` and flipped; evaluation samples keep their size and are
    padded to the largest in the batch (mean colour / ignore index), so the padding never counts.

    Args:
        source: the dataset, with its root and its own options: ``VOCSource(root)``,
            ``CityscapesSource``, ``CocoStuff164kSource``, ``CocoStuff10kSource``,
            ``FolderSource``, ``SyntheticSource(root, num_train=..., ...)`` or another
            :class:`SegmentationSource` subclass. In YAML: ``source: {class_path:
            lightning_deeplab.data.VOCSource, init_args: {root: data/VOCdevkit}}``; on the
            command line ``--data.source.root DIR``.
        train_split, val_split: split names (VOC: ``ImageSets/Segmentation/<split>.txt``;
            ``train_aug`` reads ``SegmentationClassAug``, others ``SegmentationClass``).
        test_split: split of ``test``/``predict``; None: the ``val_split``.
        crop_size: side of the square training crops.
        scale_range: (low, high) of the random training rescale.
        hflip: random horizontal flips in training.
        batch_size: training batch size (per process).
        val_batch_size: validation/test batch size (per process).
        num_workers: loader worker processes.
        predict_path: what ``predict`` reads: an image, a folder of images or a list file (see
            :func:`~lightning_deeplab.data.images.find_predict_images`), at their own sizes,
            unreadable files skipped and reported. None: the ``test_split``.
        check_files: at ``setup``, open the header of every image and label of the splits the
            stage uses (in parallel) and report every unreadable file, colour label or label
            whose size differs from its image's, with its list line, in one error. Off: only
            missing files are found before the samples are read (for huge trusted datasets).
    """

    def __init__(
        self,
        source: SegmentationSource,
        train_split: str = "train_aug",
        val_split: str = "val",
        test_split: Optional[str] = None,
        crop_size: int = 321,
        scale_range: tuple[float, float] = (0.5, 1.5),
        hflip: bool = True,
        batch_size: int = 10,
        val_batch_size: int = 1,
        num_workers: int = 4,
        predict_path: Optional[Union[str, Path]] = None,
        check_files: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(source, SegmentationSource):
            raise TypeError(f"source must be a SegmentationSource, got {type(source).__name__}")
        # Plain values only, so a checkpoint loads without unpickling classes: the source as the
        # class_path/init_args that rebuild it.
        self.save_hyperparameters(ignore=["source"])
        self.hparams["source"] = source.config()
        for arg, value, low in (
            ("batch_size", batch_size, 1),
            ("val_batch_size", val_batch_size, 1),
            ("num_workers", num_workers, 0),
        ):
            if not is_integer(value) or value < low:
                raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
        for arg, value in (("train_split", train_split), ("val_split", val_split)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{arg} must be a non-empty split name, got {value!r}")
        self.splits = {"train": train_split, "val": val_split, "test": test_split or val_split}
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.check_files = check_files
        self.train_transform = build_train_transform(crop_size, scale_range, hflip)
        self.source = source
        self._datasets: dict[str, Dataset] = {}
        self.predict_path = predict_path
        self._predict_images: Optional[PredictImages] = None

    # -- what the model and the logger need to know -------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset."""
        return self.source.num_classes

    @property
    def class_names(self) -> list[str]:
        """Class names, indexed by label value."""
        return list(self.source.class_names)

    @property
    def palette(self) -> np.ndarray:
        """[256, 3] uint8 RGB colour of every label value (255 included)."""
        return self.source.palette

    @property
    def ignore_index(self) -> int:
        """Label value of pixels left out of the loss and the metrics."""
        return self.source.ignore_index

    # -- Lightning hooks -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate or check the data on disk (Lightning runs this once per node)."""
        if self._predicting_images():
            return  # only the images at predict_path are read
        self.source.prepare()

    def setup(self, stage: Optional[str] = None) -> None:
        """Open the splits ``stage`` uses, so bad data lists fail before training starts."""
        if stage == "predict" and self.predict_path is not None:
            self.predict_images()
            return
        roles = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(
            stage, _ROLES
        )
        problems: list[str] = []
        checked: set[str] = set()
        for role in roles:
            if role in self._datasets or self.splits[role] in checked:
                continue
            checked.add(self.splits[role])
            problems += self._open_checked(role)
        if problems:
            raise BadSamples(problems)

    def check_data(self, stage: str) -> None:
        """The cheap checks of the data ``stage`` reads (the root, the split lists, the files'
        headers: those of :meth:`setup`), for a caller that must know before it creates anything
        (the CLI: before the run folder and the logger). A dataset that ``prepare_data`` generates
        is left to it. The splits opened here are kept: ``setup`` does not open them again."""
        if stage == "predict" and self.predict_path is not None:
            self.predict_images()
            return
        if self.source.generates_data:
            return
        self.source.prepare()  # checks the root: nothing to prepare for a dataset that is not generated
        self.setup(stage)

    def _open_checked(self, role: str) -> list[str]:
        """Open the dataset of ``role`` and, with ``check_files``, check its files' headers;
        the problems found (the dataset is kept only when there are none)."""
        split = self.splits[role]
        try:
            dataset = self.source.dataset(split, self.train_transform if role == "train" else None)
        except MissingFiles as err:
            if not self.check_files or not err.samples:
                raise
            return split_problems(err.samples, f"{role} split {split!r}")
        samples = getattr(dataset, "samples", None)
        if self.check_files and samples and isinstance(samples[0], LabelledImage):
            problems = split_problems(samples, f"{role} split {split!r}", getattr(dataset, "labelled", True))
            if problems:
                return problems
        self._datasets[role] = dataset
        return []

    def dataset(self, role: str) -> Dataset:
        """The dataset of ``role`` ("train", "val" or "test"), opened on first use."""
        if role not in _ROLES:
            raise ValueError(f"role must be one of {_ROLES}, got {role!r}")
        if role not in self._datasets:
            transform = self.train_transform if role == "train" else None
            self._datasets[role] = self.source.dataset(self.splits[role], transform)
        return self._datasets[role]

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        world_size, rank = _distributed()
        if len(dataset) < self.batch_size * world_size:
            raise ValueError(
                f"train split {self.splits['train']!r} has {len(dataset)} samples, fewer than "
                f"batch_size {self.batch_size} x {world_size} process(es): no full batch"
            )
        # seeded from torch's generator, so seed_everything makes the augmentation repeatable
        seed_transform(self.train_transform, _mix_seed(torch.randint(2**31 - 1, ()).item(), rank))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,  # under DDP Lightning swaps in its DistributedSampler
            drop_last=True,
            collate_fn=pad_collate,
            worker_init_fn=partial(_seed_worker_transform, rank=rank) if self.num_workers else None,
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        if self.predict_path is None:
            return self._eval_dataloader("test")
        return self._eval_dataloader("predict", self.predict_images(), predict_collate)

    def predict_images(self) -> PredictImages:
        """The images at ``predict_path``, listed on first use."""
        if self.predict_path is None:
            raise ValueError("predict_path is not set: give an image, a folder or a list file")
        if self._predict_images is None:
            self._predict_images = PredictImages(self.predict_path)
        return self._predict_images

    @property
    def predict_renamed(self) -> list[tuple[Path, str]]:
        """``(path, output name)`` of the images at ``predict_path`` whose name was made distinct
        from another image's (``x.jpg`` -> ``x``, ``x.png`` -> ``x.png``)."""
        return list(self._predict_images.renamed) if self._predict_images is not None else []

    def _predicting_images(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return self.predict_path is not None and trainer is not None and trainer.state.fn == "predict"

    # -- helpers -------------------------------------------------------------------------------
    def _loader_options(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }

    def _eval_dataloader(self, role: str, dataset: Optional[Dataset] = None, collate_fn=None) -> DataLoader:
        dataset = self.dataset(role) if dataset is None else dataset
        collate_fn = collate_fn or pad_collate
        world_size, rank = _distributed()
        sampler = None
        if world_size > 1:
            if len(dataset) < world_size:
                raise ValueError(
                    f"{role} split {self.splits.get(role, self.predict_path)!r} has {len(dataset)} samples, fewer than "
                    f"the {world_size} processes evaluating it"
                )
            # Every sample exactly once over all ranks (Lightning's default sampler repeats
            # samples to even out the shards, which skews the metrics). Lightning keeps a
            # DistributedSampler subclass in place.
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.val_batch_size,
            shuffle=False,
            sampler=sampler,
            collate_fn=collate_fn,
            **self._loader_options(),
        )
