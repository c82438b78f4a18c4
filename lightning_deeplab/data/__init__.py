"""Datasets, augmentation and the LightningDataModule."""
import os

# albumentations checks for updates over the network on import unless told not to
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CityscapesSegmentation, CityscapesSource  # noqa: E402
from .cocostuff import (  # noqa: E402
    COCO_STUFF_CLASSES, CocoStuff10k, CocoStuff10kSource, CocoStuff164k, CocoStuff164kSource,
)  # fmt: skip
from .collate import pad_collate  # noqa: E402
from .datamodule import SegmentationDataModule  # noqa: E402
from .folder import FolderSegmentation, FolderSource, read_class_list  # noqa: E402
from .palette import VOC_PALETTE, voc_colormap  # noqa: E402
from .registry import DATASETS, DatasetEntry, open_source  # noqa: E402
from .source import SegmentationSource  # noqa: E402
from .synthetic import SYNTHETIC_CLASSES, SyntheticSource, generate_synthetic_voc  # noqa: E402
from .transforms import build_train_transform  # noqa: E402
from .voc import VOC_CLASSES, VOCSegmentation, VOCSource  # noqa: E402

# The SBD converter (lightning_deeplab.data.sbd) is left out: it runs as `python -m`, which
# warns when the package has imported the module already.
__all__ = [
    "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "COCO_STUFF_CLASSES", "CityscapesSegmentation",
    "CityscapesSource", "CocoStuff10k", "CocoStuff10kSource", "CocoStuff164k", "CocoStuff164kSource",
    "DATASETS", "DatasetEntry", "FolderSegmentation", "FolderSource", "SYNTHETIC_CLASSES",
    "SegmentationDataModule", "SegmentationSource", "SyntheticSource", "VOCSegmentation",
    "VOCSource", "VOC_CLASSES", "VOC_PALETTE", "build_train_transform", "generate_synthetic_voc",
    "open_source", "pad_collate", "read_class_list", "voc_colormap",
]  # fmt: skip
