"""One factory per named network of the paper (:data:`.registry.NAMED_MODELS`), each returning
a randomly initialised :class:`~.deeplab.DeepLabV2`; keyword arguments override the defaults
(``style``, ``norm``, ``msc_scales``, ``atrous_rates``). Weights: :func:`.deeplab.load_pretrained`."""

from typing import Any

from .deeplab import DeepLabV2
from .registry import NAMED_MODELS


def build_named(name: str, num_classes: int = 21, **kwargs: Any) -> DeepLabV2:
    """The network called ``name`` in :data:`NAMED_MODELS`."""
    if name not in NAMED_MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(NAMED_MODELS)}")
    backbone, head, msc_scales = NAMED_MODELS[name]
    kwargs.setdefault("msc_scales", msc_scales)
    return DeepLabV2(backbone, head, num_classes=num_classes, **kwargs)


def deeplabv2_resnet101(num_classes: int = 21, **kwargs: Any) -> DeepLabV2:
    """ResNet-101 + ASPP-L + MSC (1, 0.75, 0.5): the paper's best model."""
    return build_named("deeplabv2_resnet101", num_classes, **kwargs)


def deeplabv2_resnet50(num_classes: int = 21, **kwargs: Any) -> DeepLabV2:
    """ResNet-50 + ASPP-L + MSC."""
    return build_named("deeplabv2_resnet50", num_classes, **kwargs)


def deeplabv2_vgg16_largefov(num_classes: int = 21, **kwargs: Any) -> DeepLabV2:
    """VGG-16 DeepLab-LargeFOV (one rate-12 branch), single scale."""
    return build_named("deeplabv2_vgg16_largefov", num_classes, **kwargs)


def deeplabv2_vgg16_aspp_s(num_classes: int = 21, **kwargs: Any) -> DeepLabV2:
    """VGG-16 + ASPP-S (rates 2, 4, 8, 12), single scale."""
    return build_named("deeplabv2_vgg16_aspp_s", num_classes, **kwargs)


def deeplabv2_vgg16_aspp_l(num_classes: int = 21, **kwargs: Any) -> DeepLabV2:
    """VGG-16 + ASPP-L (rates 6, 12, 18, 24), single scale."""
    return build_named("deeplabv2_vgg16_aspp_l", num_classes, **kwargs)


#: name -> factory, for every name of :data:`NAMED_MODELS`.
FACTORIES = {
    factory.__name__: factory
    for factory in (
        deeplabv2_resnet101,
        deeplabv2_resnet50,
        deeplabv2_vgg16_largefov,
        deeplabv2_vgg16_aspp_s,
        deeplabv2_vgg16_aspp_l,
    )
}
