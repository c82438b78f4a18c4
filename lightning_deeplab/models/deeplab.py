"""DeepLabV2: backbone at output stride 8, ASPP head, multi-scale inputs fused by max."""

import os
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from ..constants import CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, PAD_VALUE
from .arguments import check_choices, given_arguments
from .aspp import ASPP, VGGASPP
from .msc import fuse_max, resize_input, validate_caffe_scales, validate_scales
from .registry import (
    HEADS,
    RESNETS,
    BackboneName,
    HeadName,
    MscResizeName,
    NormName,
    StyleName,
)
from .resnet import ResNetBackbone
from .vgg import VGG16Backbone
from .weights import imagenet_state_dict, load_into, read_checkpoint, vgg_fc_weights
from ..crf.values import is_integer


def build_backbone(name: str, style: str, norm: str, pool5a: bool = False) -> nn.Module:
    """The backbone named ``name`` (a ResNet in ``style`` with ``norm`` layers, or VGG-16, with
    the official LargeFOV net's ``pool5a`` when ``pool5a``)."""
    if name in RESNETS:
        return ResNetBackbone(name, style=style, norm=norm)
    return VGG16Backbone(pool5a=pool5a)


def build_head(backbone: nn.Module, num_classes: int, rates: Sequence[int]) -> nn.Module:
    """The ASPP head that fits ``backbone``: 3x3 classifier branches on a ResNet, fc6-fc7-fc8
    branches on VGG-16."""
    head = VGGASPP if isinstance(backbone, VGG16Backbone) else ASPP
    return head(backbone.out_channels, num_classes, tuple(rates))


class DeepLabV2(nn.Module):
    """DeepLab v2 (Chen et al., TPAMI 2017): a plain ``nn.Module``.

    Input: float [B, 3, H, W], RGB, 0-255, not normalised: the model normalises it itself with
    :attr:`input_mean` / :attr:`input_std` (style ``"caffe"``: flipped to BGR, minus the Caffe
    mean, std 1; style ``"pytorch"``: RGB, ImageNet mean and std scaled to 0-255, which equals
    torchvision's normalisation of ``x / 255``). Output: class scores at output stride 8
    (321 -> 41, 513 -> 65), the max-fusion over the MSC scales.

    Args:
        backbone: one of :data:`BACKBONES`.
        head: one of :data:`HEADS`. On ResNet each branch is a 3x3 conv to the classes; on VGG-16
            each branch is fc6 (3x3, the rate) -> fc7 -> fc8.
        num_classes: number of output classes.
        msc_scales: input scales, or None (or ``(1.0,)``) for a single scale. Each scale's input
            is resized as ``msc_resize`` says; the score maps are bilinearly resized to the first
            scale's map and fused by element-wise max. 1.0, when present, must come first.
        atrous_rates: rates that replace the head's own (one branch per rate).
        style: one of :data:`STYLES`. ``"caffe"``: ResNet stride on a bottleneck's first 1x1
            conv and ceil-mode max-pool, BGR input minus the Caffe mean. ``"pytorch"``:
            torchvision's layout and normalisation. (VGG-16 has the same layout in both styles.)
        norm: one of :data:`~lightning_deeplab.models.norm.NORMS`; ResNet only (VGG-16 has no
            normalisation layers).
        msc_resize: one of :data:`~lightning_deeplab.models.registry.MSC_RESIZES`, or None: the
            ``style``'s. ``"caffe"``: Caffe's Interp layer as in the official MSC nets (sides
            ``((side - 1) // shrink) * zoom + 1``, 500 -> 373 at 0.75; corner-aligned bilinear
            weights, also for resizing the score maps back). ``"pytorch"``: sides
            ``ceil(side * scale)``, ``align_corners=False``. Loss-time label resizing does not
            depend on it.

    The network starts from random weights; :func:`load_pretrained` loads initial ones.
    :attr:`init_args` holds the constructor's arguments (what rebuilds the same network).

    The first forward call checks the input's range once (one host sync in the model's
    lifetime, none after): a float input whose values all lie in [0, 1] warns, because the
    model expects 0-255 (a 0-1 image is nearly flat after the mean subtraction).
    """

    def __init__(
        self,
        backbone: BackboneName = "resnet101",
        head: HeadName = "aspp-l",
        num_classes: int = 21,
        msc_scales: Optional[Sequence[float]] = (1.0, 0.75, 0.5),
        atrous_rates: Optional[Sequence[int]] = None,
        style: StyleName = "caffe",
        norm: NormName = "frozen",
        msc_resize: Optional[MscResizeName] = None,
    ) -> None:
        arguments = given_arguments(DeepLabV2.__init__, locals())
        super().__init__()
        check_choices(DeepLabV2.__init__, arguments)
        msc_resize = style if msc_resize is None else msc_resize
        if not is_integer(num_classes) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        rates = HEADS[head] if atrous_rates is None else _check_rates(atrous_rates)

        self.backbone_name, self.head_name, self.style, self.norm = backbone, head, style, norm
        self.num_classes = int(num_classes)
        self.msc_scales = validate_scales(msc_scales)
        if msc_resize == "caffe":
            validate_caffe_scales(self.msc_scales)
        self.msc_resize = msc_resize
        self._input_range_checked = False
        self.atrous_rates = rates
        #: The constructor's arguments as given, plain values (a checkpoint rebuilds the network from them).
        self.init_args: dict[str, Any] = arguments

        self.backbone: nn.Module = build_backbone(backbone, style, norm, pool5a=head == "largefov")
        self.head: nn.Module = build_head(self.backbone, self.num_classes, rates)

        if style == "caffe":
            mean, std = CAFFE_MEAN_BGR, (1.0, 1.0, 1.0)
        else:
            mean = tuple(255.0 * m for m in IMAGENET_MEAN_RGB)
            std = tuple(255.0 * s for s in IMAGENET_STD_RGB)
        #: Channel order the backbone sees ("BGR": the input is flipped first).
        self.input_channel_order = "BGR" if style == "caffe" else "RGB"
        # Not persistent: they follow from ``style``, and keep state dicts free of them.
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize_input(self, x: Tensor) -> Tensor:
        """RGB 0-255 -> what the backbone expects (channel order, mean, std of :attr:`style`);
        padded pixels (:data:`~lightning_deeplab.constants.PAD_VALUE`) become 0, the mean."""
        padding = (x == PAD_VALUE).all(dim=1, keepdim=True)
        if self.input_channel_order == "BGR":
            x = x.flip(1)
        return ((x - self.input_mean) / self.input_std).masked_fill(padding, 0.0)

    def forward_multi(self, x: Tensor) -> list[Tensor]:
        """Score maps at each MSC scale (in ``msc_scales`` order, each its own size), then the fused map.

        Without MSC, a one-element list. The training loss uses every entry.
        """
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"input must be a float tensor [B, 3, H, W] (RGB, 0-255), got {x.dtype} {tuple(x.shape)}")
        if not self._input_range_checked:
            self._warn_if_unit_range(x)
        x = self.normalize_input(x)
        scores = [self.head(self.backbone(resize_input(x, s, self.msc_resize))) for s in self.msc_scales]
        if len(scores) > 1:
            scores.append(fuse_max(scores, self.msc_resize))
        return scores

    def _warn_if_unit_range(self, x: Tensor) -> None:
        """Warn when ``x`` holds values only in [0, 1]; done on the first call only (it syncs on CUDA)."""
        if x.device.type == "meta" or x.numel() == 0:
            return  # nothing to look at; check a later, real input
        self._input_range_checked = True
        values = x.detach()
        values = values[values != PAD_VALUE]  # the padding is not part of the image
        if values.numel() == 0:
            return
        low, high = torch.aminmax(values)
        if float(low) >= 0.0 and float(high) <= 1.0:
            warnings.warn(
                f"DeepLabV2 got an input with values only in [{float(low):.3g}, {float(high):.3g}]; it expects RGB "
                "images in 0-255 (multiply a 0-1 image by 255). Checked on the first call only.",
                UserWarning,
                stacklevel=3,
            )

    def forward(self, x: Tensor) -> Tensor:
        """Fused class scores [B, num_classes, h, w] at output stride 8 for RGB 0-255 images ``x``."""
        return self.forward_multi(x)[-1]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split into the paper's learning-rate groups.

        ``head_weight`` (10x) and ``head_bias`` (20x, no weight decay) hold the final classifier
        convs (the ASPP branches on ResNet, fc8 on VGG-16); ``backbone`` (1x) holds everything
        else, VGG's fc6/fc7 included. Parameters with ``requires_grad=False`` are left out.
        """
        classifier = self.head.classifier_convs()
        head_weight = [c.weight for c in classifier if c.weight.requires_grad]
        head_bias = [c.bias for c in classifier if c.bias is not None and c.bias.requires_grad]
        in_head = {id(p) for p in head_weight + head_bias}
        backbone = [p for p in self.parameters() if p.requires_grad and id(p) not in in_head]
        return {"backbone": backbone, "head_weight": head_weight, "head_bias": head_bias}

    def num_parameters(self) -> int:
        """Parameter count as the paper counts it: frozen BatchNorm's weight and bias included."""
        frozen_affine = sum(
            m.weight.numel() + m.bias.numel() for m in self.modules() if isinstance(m, FrozenBatchNorm2d)
        )
        return sum(p.numel() for p in self.parameters()) + frozen_affine


def load_pretrained(model: DeepLabV2, pretrained: "str | os.PathLike[str]") -> None:
    """Load initial weights into ``model``: ``"imagenet"`` (torchvision's weights, style
    ``"pytorch"`` only; VGG's fc6/fc7 are decimated from its classifier) or the path of a
    checkpoint (a state dict of the backbone, with torchvision's keys, or of the whole model, or
    a Lightning .ckpt)."""
    if pretrained == "imagenet":
        if model.style != "pytorch":
            raise ValueError(
                "pretrained='imagenet' loads torchvision weights, which expect style='pytorch' "
                f"(got style={model.style!r}); caffe-style weights come from a converted checkpoint path"
            )
        state = imagenet_state_dict(model.backbone_name)
        source = f"torchvision ImageNet weights of {model.backbone_name}"
    else:
        if not isinstance(pretrained, (str, os.PathLike)):
            raise TypeError(f"pretrained must be 'imagenet' or a path, got {pretrained!r}")
        state, source = read_checkpoint(pretrained), f"checkpoint {os.fspath(pretrained)!r}"
    unused = load_into(model, model.backbone, state, source)
    fc_weights = vgg_fc_weights(state, unused) if isinstance(model.head, VGGASPP) else None
    if fc_weights is not None:
        model.head.load_fc6_fc7(fc_weights)


def _check_rates(rates: Sequence[int]) -> tuple[int, ...]:
    if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence) or len(rates) == 0:
        raise ValueError(f"atrous_rates must be a non-empty sequence of positive integers, got {rates!r}")
    for rate in rates:
        if not is_integer(rate) or rate < 1:
            raise ValueError(f"atrous_rates must hold positive integers, got {rate!r} in {rates!r}")
    return tuple(int(rate) for rate in rates)
