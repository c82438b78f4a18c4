"""Layer names of the released DeepLab v2 Caffe ResNets, and the DeepLabV2 modules they fill.

The backbone follows He et al.'s Caffe ResNets::

    conv1 / bn_conv1 / scale_conv1                    -> backbone.conv1 / backbone.bn1
    res{s}{b}_branch1 / bn{s}{b}_branch1 / scale...   -> backbone.layer{s-1}.{i}.downsample.0 / .1
    res{s}{b}_branch2a, 2b, 2c (bn..., scale...)      -> backbone.layer{s-1}.{i}.conv1, conv2, conv3
                                                         (bn1, bn2, bn3)

for stages s = 2..5. A BatchNorm layer holds the statistics and the Scale layer after it the
affine; both land in the same FrozenBatchNorm2d. Block ``i`` of a stage is called ``{b}``:
``a, b, c, ...`` in every stage of ResNet-50 (res4a..res4f) and in res2/res5 of ResNet-101;
ResNet-101's res3 and res4 number the blocks after the first: ``a, b1, b2, ...``
(res3b3, res4b22).

The ASPP-L classifier is ``fc1_{tag}_c{j}`` -> ``head.branches.{j}`` (j = 0..3, rates 6, 12, 18,
24); the VOC model's tag is ``voc12``.
"""

import re
from dataclasses import dataclass


#: The backbones whose Caffe layer names are known (He et al.'s ResNet-50 / ResNet-101; DeepLab v2
#: released ResNet-101), and the stages whose blocks after the first are numbered (b1, b2, ...).
CAFFE_BACKBONES: dict[str, tuple[int, ...]] = {"resnet101": (3, 4), "resnet50": ()}

#: The classifier branches of ASPP-L in the released train/test prototxts.
CLASSIFIER_PATTERN = re.compile(r"^fc1_(?:(?P<tag>.+)_)?c(?P<branch>\d+)$")

#: Layers of the extra MSC inputs in the released train nets (names with ``res075`` or ``res05``,
#: the 0.75x and 0.5x inputs): they share the full-scale layers' weights, so their blobs are copies.
#: No backbone layer name contains ``res0`` followed by a digit (stages are res2..res5).
MSC_COPY_PATTERN = re.compile(r"res0\d")

_BRANCH2 = ("a", "b", "c")


@dataclass(frozen=True)
class ConvUnit:
    """A bias-free conv and the BatchNorm + Scale after it, by Caffe layer name and module name."""

    conv: str
    batch_norm: str
    scale: str
    conv_module: str  # e.g. "backbone.layer1.0.conv1"
    norm_module: str  # e.g. "backbone.layer1.0.bn1"


def block_name(index: int, numbered: bool) -> str:
    """The Caffe name of block ``index`` (0-based) of a stage: ``a``, then ``b1, b2, ...`` or ``b, c, ...``."""
    if index == 0:
        return "a"
    if numbered:
        return f"b{index}"
    if index >= 26:
        raise ValueError(f"block {index} has no letter name; lettered stages hold at most 26 blocks")
    return chr(ord("a") + index)


def resnet_units(backbone: str) -> list[ConvUnit]:
    """Every conv + BN + Scale unit of ``backbone`` in network order, with its Caffe and module names."""
    if backbone not in CAFFE_BACKBONES:
        raise ValueError(
            f"no Caffe layer names for backbone {backbone!r}; the released DeepLab v2 models are "
            f"{', '.join(CAFFE_BACKBONES)}"
        )
    from ..models import RESNET_SPECS  # imports torch: not at import time, for `--help`

    units = [ConvUnit("conv1", "bn_conv1", "scale_conv1", "backbone.conv1", "backbone.bn1")]
    _, blocks_per_stage = RESNET_SPECS[backbone]
    for stage, blocks in enumerate(blocks_per_stage, start=2):
        numbered = stage in CAFFE_BACKBONES[backbone]
        for index in range(blocks):
            block = f"{stage}{block_name(index, numbered)}"
            prefix = f"backbone.layer{stage - 1}.{index}"
            for branch, letter in enumerate(_BRANCH2, start=1):
                units.append(_unit(f"{block}_branch2{letter}", f"{prefix}.conv{branch}", f"{prefix}.bn{branch}"))
            if index == 0:
                units.append(_unit(f"{block}_branch1", f"{prefix}.downsample.0", f"{prefix}.downsample.1"))
    return units


def _unit(suffix: str, conv_module: str, norm_module: str) -> ConvUnit:
    return ConvUnit(f"res{suffix}", f"bn{suffix}", f"scale{suffix}", conv_module, norm_module)


# ------------------------------------------------------------------------------ VGG-16
#: The first conv layer of every DeepLab VGG-16 net; its presence marks a VGG-16 caffemodel.
VGG_MARKER = "conv1_1"
#: The conv layers of VGG-16 in network order (conv1_1 .. conv5_3), as every DeepLab VGG prototxt names them.
VGG_CONV_NAMES = tuple(
    f"conv{stage}_{index}" for stage, count in enumerate((2, 2, 3, 3, 3), start=1) for index in range(1, count + 1)
)
#: DeepLab-LargeFOV's single branch (v1 and v2 prototxts): fc6 (rate 12), fc7, fc8_<tag> (VOC: fc8_voc12).
LARGEFOV_FC6, LARGEFOV_FC7 = "fc6", "fc7"
LARGEFOV_CLASSIFIER_PATTERN = re.compile(r"^fc8(?:_(?P<tag>.+))?$")
#: The branches of the v2 VGG-16 ASPP nets: fc6_{i}, fc7_{i}, fc8_<tag>_{i} for i = 1..4.
ASPP_FC6_PATTERN = re.compile(r"^fc6_(?P<branch>\d+)$")
ASPP_CLASSIFIER_PATTERN = re.compile(r"^fc8_(?P<tag>.+)_(?P<branch>\d+)$")
