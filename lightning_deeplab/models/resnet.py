"""ResNet backbones at output stride 8, in the paper's dilation scheme.

Module names follow torchvision's ResNet for both styles, so torchvision state dicts load
as they are. The released Caffe weights map onto the same names::

    conv1 / bn_conv1              -> conv1 / bn1
    res2a_branch2a / bn2a_branch2a -> layer1.0.conv1 / layer1.0.bn1   (2b -> conv2, 2c -> conv3)
    res2a_branch1 / bn2a_branch1   -> layer1.0.downsample.0 / layer1.0.downsample.1
    res3b1, res3b2, ...            -> layer2.1, layer2.2, ...  (res4 -> layer3, res5 -> layer4)

(a Caffe ``scale*`` layer holds the BN affine: it maps to the ``weight``/``bias`` of the same bn).
"""

from typing import Union

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .norm import norm_layer
from .registry import RESNETS, STYLES

#: Block type and blocks per stage of each ResNet backbone (in the order of ``RESNETS``).
RESNET_SPECS: dict[str, tuple[type[Union[BasicBlock, Bottleneck]], tuple[int, int, int, int]]] = dict(
    zip(
        RESNETS,
        (
            (Bottleneck, (3, 4, 23, 3)),
            (Bottleneck, (3, 4, 6, 3)),
            (BasicBlock, (3, 4, 6, 3)),
            (BasicBlock, (2, 2, 2, 2)),
        ),
        strict=True,
    )
)

#: The dilation of every block of the two stages that keep stride 1 (res4, res5).
STAGE_DILATIONS = {"layer3": 2, "layer4": 4}


class ResNetBackbone(nn.Module):
    """A ResNet without its classifier, output stride 8, returning the ``layer4`` features.

    ``layer3`` (res4) and ``layer4`` (res5) run at stride 1 with dilation 2 and 4 on *every*
    block, padding equal to the dilation (torchvision's ``replace_stride_with_dilation`` would
    give the first block of each stage the previous dilation instead).

    Args:
        name: one of :data:`RESNET_SPECS`.
        style: ``"caffe"``: the layout of the released DeepLab weights (the stride of a
            bottleneck on its first 1x1 conv, 3x3/2 max-pool in ceil mode); ``"pytorch"``:
            torchvision's layout (stride on the 3x3 conv, floor-mode max-pool).
        norm: a name from :data:`~lightning_deeplab.models.norm.NORMS`.
    """

    def __init__(self, name: str = "resnet101", style: str = "caffe", norm: str = "frozen") -> None:
        super().__init__()
        if name not in RESNET_SPECS:
            raise ValueError(f"unknown ResNet {name!r}; valid names: {', '.join(RESNET_SPECS)}")
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; valid names: {', '.join(STYLES)}")
        block, layers = RESNET_SPECS[name]
        # Build torchvision's network and keep everything up to layer4.
        net = ResNet(block, list(layers), norm_layer=norm_layer(norm))
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = 512 * block.expansion
        self.style = style

        if style == "caffe":
            # ceil mode: 321 -> 161 -> 81 here, hence 41 at the output (and 513 -> 65).
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
            if block is Bottleneck:
                _move_stride_to_first_conv(self.layer2[0])
        for stage, dilation in STAGE_DILATIONS.items():
            _dilate_stage(getattr(self, stage), dilation)

    def forward(self, x: Tensor) -> Tensor:
        """Features of ``x`` (normalised image, [B, 3, H, W]) at output stride 8."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _move_stride_to_first_conv(block: Bottleneck) -> None:
    """Put a bottleneck's stride on its first 1x1 conv (Caffe) instead of the 3x3 (torchvision)."""
    block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


def _dilate_stage(stage: nn.Sequential, dilation: int) -> None:
    """Run every block of ``stage`` at stride 1 with its 3x3 convs dilated by ``dilation``.

    torchvision's BasicBlock refuses dilation in its constructor, so the convs are changed after
    construction; a conv reads stride/padding/dilation at call time.
    """
    for block in stage:
        block.stride = 1
        for conv in block.modules():
            if isinstance(conv, nn.Conv2d):
                conv.stride = (1, 1)
                if conv.kernel_size == (3, 3):
                    conv.dilation = (dilation, dilation)
                    conv.padding = (dilation, dilation)
