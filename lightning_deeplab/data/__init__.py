"""Datasets, augmentation and the LightningDataModule."""
import os

# albumentations checks for updates over the network on import unless told not to
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .collate import pad_collate  # noqa: E402
from .datamodule import SegmentationDataModule  # noqa: E402
from .palette import VOC_PALETTE, voc_colormap  # noqa: E402
from .registry import DATASETS, DatasetEntry, open_source  # noqa: E402
from .source import SegmentationSource  # noqa: E402
from .synthetic import SYNTHETIC_CLASSES, SyntheticSource, generate_synthetic_voc  # noqa: E402
from .transforms import build_train_transform  # noqa: E402
from .voc import VOC_CLASSES, VOCSegmentation, VOCSource  # noqa: E402

__all__ = [
    "DATASETS", "DatasetEntry", "SYNTHETIC_CLASSES", "SegmentationDataModule", "SegmentationSource",
    "SyntheticSource", "VOCSegmentation", "VOCSource", "VOC_CLASSES", "VOC_PALETTE",
    "build_train_transform", "generate_synthetic_voc", "open_source", "pad_collate", "voc_colormap",
]  # fmt: skip
