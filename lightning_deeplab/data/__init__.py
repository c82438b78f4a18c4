"""Datasets, augmentation and the LightningDataModule."""
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CityscapesSegmentation, CityscapesSource
from .cocostuff import (
    COCO_STUFF_CLASSES, CocoStuff10k, CocoStuff10kSource, CocoStuff164k, CocoStuff164kSource,
)  # fmt: skip
from .collate import pad_collate
from .datamodule import SegmentationDataModule
from .folder import FolderSegmentation, FolderSource, read_class_list
from .palette import VOC_PALETTE, voc_colormap
from .registry import DATASETS, DatasetEntry, open_source
from .source import SegmentationSource
from .synthetic import SYNTHETIC_CLASSES, SyntheticSource, generate_synthetic_voc
from .transforms import build_train_transform
from .voc import VOC_CLASSES, VOCSegmentation, VOCSource

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
