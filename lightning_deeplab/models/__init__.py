"""DeepLab v2 networks: plain ``nn.Module``s, no Lightning inside.

``DeepLabV2`` is the model (random weights; :func:`load_pretrained` loads initial ones); the
factories (``deeplabv2_resnet101``, ...) build the paper's named networks; :mod:`.registry`
holds every name (``BACKBONES``, ``HEADS``, ``STYLES``, ``NORMS``, ``NAMED_MODELS``).
"""

from .aspp import ASPP, VGGASPP, VGGBranch
from .deeplab import DeepLabV2, build_backbone, build_head, load_pretrained
from .factories import (
    FACTORIES,
    build_named,
    deeplabv2_resnet50,
    deeplabv2_resnet101,
    deeplabv2_vgg16_aspp_l,
    deeplabv2_vgg16_aspp_s,
    deeplabv2_vgg16_largefov,
)
from .msc import fuse_max, scaled_size, validate_scales
from .registry import BACKBONES, HEADS, NAMED_MODELS, NORMS, RESNETS, STYLES
from .resnet import RESNET_SPECS, STAGE_DILATIONS, ResNetBackbone
from .vgg import VGG16Backbone, decimate_vgg_classifier
from .weights import IMAGENET_WEIGHTS

__all__ = [
    "ASPP",
    "BACKBONES",
    "FACTORIES",
    "HEADS",
    "IMAGENET_WEIGHTS",
    "NAMED_MODELS",
    "NORMS",
    "RESNETS",
    "RESNET_SPECS",
    "STAGE_DILATIONS",
    "STYLES",
    "DeepLabV2",
    "ResNetBackbone",
    "VGG16Backbone",
    "VGGASPP",
    "VGGBranch",
    "build_backbone",
    "build_head",
    "build_named",
    "decimate_vgg_classifier",
    "deeplabv2_resnet101",
    "deeplabv2_resnet50",
    "deeplabv2_vgg16_aspp_l",
    "deeplabv2_vgg16_aspp_s",
    "deeplabv2_vgg16_largefov",
    "fuse_max",
    "load_pretrained",
    "scaled_size",
    "validate_scales",
]
