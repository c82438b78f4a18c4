"""ResNet backbones: the paper's dilation on every block, both styles, sizes, parameter counts."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from lightning_deeplab.models import DeepLabV2, ResNetBackbone

# The paper: res4 (layer3) dilation 2 and res5 (layer4) dilation 4 on every block, stride 1.
PAPER_DILATION = {"layer1": 1, "layer2": 1, "layer3": 2, "layer4": 4}


def _meta_backbone(name: str, style: str) -> ResNetBackbone:
    with torch.device("meta"):  # no weight init: ResNet-101 builds in milliseconds
        return ResNetBackbone(name, style=style)


@pytest.mark.parametrize("style", ["caffe", "pytorch"])
@pytest.mark.parametrize("name", ["resnet101", "resnet18"])
def test_every_block_has_the_paper_dilation_and_stride(name: str, style: str) -> None:
    backbone = _meta_backbone(name, style)
    for stage, dilation in PAPER_DILATION.items():
        for index, block in enumerate(getattr(backbone, stage)):
            where = f"{stage}.{index}"
            convs = {n: m for n, m in block.named_modules() if isinstance(m, nn.Conv2d)}
            for conv_name, conv in convs.items():
                if conv.kernel_size == (3, 3):
                    assert conv.dilation == (dilation, dilation), f"{where}.{conv_name}"
                    assert conv.padding == (dilation, dilation), f"{where}.{conv_name}"
                else:
                    assert conv.dilation == (1, 1) and conv.padding == (0, 0), f"{where}.{conv_name}"
            strides = {n: conv.stride[0] for n, conv in convs.items()}
            if stage == "layer2" and index == 0:
                # The only downsampling block left: where its stride sits is the style.
                bottleneck = "conv3" in convs
                on_first_conv = style == "caffe" or not bottleneck
                assert strides["conv1"] == (2 if on_first_conv else 1), where
                assert strides["conv2"] == (1 if on_first_conv else 2), where
                assert strides["downsample.0"] == 2, where
            else:
                assert set(strides.values()) == {1}, f"{where}: {strides}"


def test_caffe_style_pools_in_ceil_mode_and_pytorch_style_in_floor_mode() -> None:
    assert _meta_backbone("resnet50", "caffe").maxpool.ceil_mode is True
    assert _meta_backbone("resnet50", "pytorch").maxpool.ceil_mode is False


@pytest.mark.parametrize(
    ("style", "side", "expected"),
    [
        ("caffe", 321, 41),
        ("caffe", 513, 65),
        ("pytorch", 321, 41),
        ("pytorch", 513, 65),
        # An even side tells the pools apart: 320 -> conv1 160 -> pool 81 (ceil) or 80 (floor).
        ("caffe", 320, 41),
        ("pytorch", 320, 40),
    ],
)
def test_resnet101_output_sizes(style: str, side: int, expected: int) -> None:
    with torch.device("meta"):
        model = DeepLabV2("resnet101", msc_scales=None, style=style)
        logits = model(torch.zeros(2, 3, side, side))
    assert logits.shape == (2, 21, expected, expected)


def test_small_resnet_runs_for_real_at_output_stride_8() -> None:
    model = DeepLabV2("resnet18", num_classes=5, msc_scales=None, style="caffe").eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 81, 57) * 255)
    assert logits.shape == (1, 5, 11, 8)
    assert torch.isfinite(logits).all()


def test_resnet101_aspp_l_parameter_count() -> None:
    with torch.device("meta"):
        reference = torchvision.models.resnet101()
        frozen = DeepLabV2("resnet101", "aspp-l", num_classes=21)
        trainable_bn = DeepLabV2("resnet101", "aspp-l", num_classes=21, norm="bn")
    backbone = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    branch = 2048 * 3 * 3 * 21 + 21
    assert branch == 387_093
    expected = backbone + 4 * branch
    assert sum(p.numel() for p in trainable_bn.parameters()) == expected
    assert trainable_bn.num_parameters() == expected
    assert frozen.num_parameters() == expected  # frozen BN affine counted although it is buffers
    assert abs(expected / 1e6 - 44.05) < 0.005
    assert abs(backbone / 1e6 - 42.50) < 0.005


@pytest.mark.parametrize("norm", ["frozen", "bn"])
def test_pytorch_style_keys_are_torchvision_keys(norm: str) -> None:
    with torch.device("meta"):
        reference = torchvision.models.resnet50()
        backbone = ResNetBackbone("resnet50", style="pytorch", norm=norm)
    expected = {k for k in reference.state_dict() if not k.startswith("fc.")}
    if norm == "frozen":
        expected = {k for k in expected if not k.endswith("num_batches_tracked")}
    assert set(backbone.state_dict()) == expected


@pytest.mark.parametrize(
    ("norm", "layer"), [("frozen", FrozenBatchNorm2d), ("bn", nn.BatchNorm2d), ("syncbn", nn.SyncBatchNorm)]
)
def test_norm_choice_builds_that_layer_with_eps_1e5(norm: str, layer: type) -> None:
    with torch.device("meta"):
        backbone = ResNetBackbone("resnet18", norm=norm)
    norms = [m for m in backbone.modules() if "Norm" in type(m).__name__]
    assert norms and all(type(m) is layer for m in norms)
    assert all(m.eps == 1e-5 for m in norms)
