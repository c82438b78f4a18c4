"""DeepLab v2 networks: plain ``nn.Module``s, no Lightning inside.

``DeepLabV2`` is the model; ``BACKBONES``, ``HEADS``, ``STYLES`` and ``NORMS`` list the names its
constructor accepts.
"""

from .aspp import ASPP, VGGASPP, VGGBranch
from .deeplab import BACKBONES, HEADS, STYLES, DeepLabV2
from .msc import fuse_max, scaled_size, validate_scales
from .norm import NORMS
from .resnet import RESNET_SPECS, STAGE_DILATIONS, ResNetBackbone
from .vgg import VGG16Backbone, decimate_vgg_classifier
from .weights import IMAGENET_WEIGHTS

__all__ = [
    "ASPP",
    "BACKBONES",
    "HEADS",
    "IMAGENET_WEIGHTS",
    "NORMS",
    "RESNET_SPECS",
    "STAGE_DILATIONS",
    "STYLES",
    "DeepLabV2",
    "ResNetBackbone",
    "VGG16Backbone",
    "VGGASPP",
    "VGGBranch",
    "decimate_vgg_classifier",
    "fuse_max",
    "scaled_size",
    "validate_scales",
]
