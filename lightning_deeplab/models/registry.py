"""Every name a DeepLab v2 network is built from, in one place.

Everything else (the constructor's ``Literal`` types, hence the CLI's ``--help`` choices and its
checks; the ResNet specs; the norm layers; the named-model factories) derives from these.
"""

from typing import Literal

#: ResNet backbones (the block specs in :mod:`.resnet` are keyed by these).
RESNETS = ("resnet101", "resnet50", "resnet34", "resnet18")
#: Every backbone: the ResNets and VGG-16.
BACKBONES = (*RESNETS, "vgg16")
#: Heads and their atrous rates (one branch per rate). ``largefov`` is the single rate-12 branch.
HEADS: dict[str, tuple[int, ...]] = {
    "aspp-l": (6, 12, 18, 24),
    "aspp-s": (2, 4, 8, 12),
    "largefov": (12,),
}
#: Layout and input convention: the released Caffe weights', or torchvision's.
STYLES = ("caffe", "pytorch")
#: Normalisation layers: frozen statistics and affine (the paper's setting, for tiny per-GPU
#: batches), trainable BatchNorm2d (Lightning's ``sync_batchnorm=True`` converts it to SyncBN),
#: or SyncBatchNorm directly.
NORMS = ("frozen", "bn", "syncbn")
#: How the MSC inputs and score maps are resized: as Caffe's Interp layer (the released nets) or
#: as ``F.interpolate(align_corners=False)`` (most PyTorch ports).
MSC_RESIZES = ("caffe", "pytorch")

#: The paper's named networks: name -> (backbone, head, MSC scales). One factory function of
#: :mod:`.factories` exists per name.
NAMED_MODELS: dict[str, tuple[str, str, tuple[float, ...]]] = {
    "deeplabv2_resnet101": ("resnet101", "aspp-l", (1.0, 0.75, 0.5)),
    "deeplabv2_resnet50": ("resnet50", "aspp-l", (1.0, 0.75, 0.5)),
    "deeplabv2_vgg16_largefov": ("vgg16", "largefov", (1.0,)),
    "deeplabv2_vgg16_aspp_s": ("vgg16", "aspp-s", (1.0,)),
    "deeplabv2_vgg16_aspp_l": ("vgg16", "aspp-l", (1.0,)),
}

# Typing aliases built from the names above: jsonargparse checks them and lists them in --help.
BackboneName = Literal[BACKBONES]  # type: ignore[valid-type]
HeadName = Literal[tuple(HEADS)]  # type: ignore[valid-type]
StyleName = Literal[STYLES]  # type: ignore[valid-type]
NormName = Literal[NORMS]  # type: ignore[valid-type]
MscResizeName = Literal[MSC_RESIZES]  # type: ignore[valid-type]
