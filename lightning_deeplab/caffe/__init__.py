"""The released DeepLab Caffe models: a ``.caffemodel`` reader that needs neither Caffe nor
protobuf, and the converter to a DeepLabV2 checkpoint (style ``"caffe"``; ResNet ASPP-L, VGG-16
LargeFOV and ASPP-L).

Command line: ``python -m lightning_deeplab.caffe.convert IN.caffemodel OUT.pth [--num-classes N]``.
"""

from typing import Any

from .caffemodel import CaffeBlob, CaffeLayer, parse_net_parameter, read_caffemodel
from .names import CAFFE_BACKBONES, ConvUnit, resnet_units

_CONVERT_EXPORTS = ("ConversionReport", "convert_caffemodel", "convert_layers", "save_state_dict")


def __getattr__(name: str) -> Any:
    # Imported on first use, so `python -m lightning_deeplab.caffe.convert` does not find the
    # module already imported by its package (runpy warns about that).
    if name in _CONVERT_EXPORTS:
        from . import convert

        return getattr(convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAFFE_BACKBONES",
    "CaffeBlob",
    "CaffeLayer",
    "ConvUnit",
    "parse_net_parameter",
    "read_caffemodel",
    "resnet_units",
    *_CONVERT_EXPORTS,
]
