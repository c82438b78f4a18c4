"""Datasets, augmentation and the LightningDataModule."""

# Imported on first use (PEP 562), so that `python -m lightning_deeplab.data.sbd --help` and the
# `deeplab` command list need neither torch nor albumentations: name -> submodule defining it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "CityscapesSegmentation", "CityscapesSource"), "cityscapes"
    ),
    **dict.fromkeys(
        ("COCO_STUFF_CLASSES", "CocoStuff10k", "CocoStuff10kSource", "CocoStuff164k", "CocoStuff164kSource"),
        "cocostuff",
    ),
    "pad_collate": "collate",
    "SegmentationDataModule": "datamodule",
    **dict.fromkeys(("FolderSegmentation", "FolderSource", "read_class_list"), "folder"),
    **dict.fromkeys(("VOC_PALETTE", "voc_colormap"), "palette"),
    "SegmentationSource": "source",
    **dict.fromkeys(("SYNTHETIC_CLASSES", "SyntheticSource", "generate_synthetic_voc"), "synthetic"),
    "build_train_transform": "transforms",
    **dict.fromkeys(("VOC_CLASSES", "VOCSegmentation", "VOCSource"), "voc"),
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


# The SBD converter (lightning_deeplab.data.sbd) is left out: it runs as `python -m`, which
# warns when the package has imported the module already.
__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "COCO_STUFF_CLASSES",
    "CityscapesSegmentation",
    "CityscapesSource",
    "CocoStuff10k",
    "CocoStuff10kSource",
    "CocoStuff164k",
    "CocoStuff164kSource",
    "FolderSegmentation",
    "FolderSource",
    "SYNTHETIC_CLASSES",
    "SegmentationDataModule",
    "SegmentationSource",
    "SyntheticSource",
    "VOCSegmentation",
    "VOCSource",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "build_train_transform",
    "generate_synthetic_voc",
    "pad_collate",
    "read_class_list",
    "voc_colormap",
]
