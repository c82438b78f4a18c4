"""VGG-16 DeepLab-LargeFOV: pooling, dilation, output stride 8, parameter count, fc decimation."""

import pytest
import torch
import torchvision
from torch import nn

from lightning_deeplab.models import DeepLabV2, VGG16Backbone, decimate_vgg_classifier


def test_pools_and_conv5_follow_largefov() -> None:
    with torch.device("meta"):
        features = VGG16Backbone().features
    pools = [m for m in features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1)] * 3 + [(3, 1, 1)] * 2
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert [c.dilation for c in convs] == [(1, 1)] * 10 + [(2, 2)] * 3  # conv5_1..3
    assert all(c.padding == c.dilation for c in convs)


@pytest.mark.parametrize(("side", "expected"), [(321, 41), (513, 65)])
def test_vgg_output_sizes(side: int, expected: int) -> None:
    with torch.device("meta"):
        model = DeepLabV2("vgg16", "largefov", msc_scales=None)
        assert model(torch.zeros(1, 3, side, side)).shape == (1, 21, expected, expected)


def test_largefov_and_aspp_parameter_counts() -> None:
    with torch.device("meta"):
        reference = torchvision.models.vgg16()
        largefov = DeepLabV2("vgg16", "largefov", num_classes=21)
        aspp = DeepLabV2("vgg16", "aspp-l", num_classes=21)
    features = sum(p.numel() for p in reference.features.parameters())
    branch = (512 * 9 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 21 + 21)  # fc6 + fc7 + fc8
    assert largefov.num_parameters() == features + branch
    assert abs(largefov.num_parameters() / 1e6 - 20.5) < 0.01  # paper, Table 1
    assert aspp.num_parameters() == features + 4 * branch
    assert [b.fc6.dilation for b in aspp.head.branches] == [(r, r) for r in (6, 12, 18, 24)]


def test_vgg_runs_for_real_and_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = DeepLabV2("vgg16", "largefov", num_classes=3, msc_scales=None).eval()
    x = torch.rand(1, 3, 41, 41) * 255
    with torch.no_grad():
        first, second = model(x), model(x)
        assert first.shape == (1, 3, 6, 6)
        assert torch.equal(first, second)
        model.train()
        assert not torch.equal(model(x), model(x))


def test_decimation_keeps_every_4th_channel_and_taps_0_3_6() -> None:
    outputs, channels = 8, 2
    state = {
        "classifier.0.weight": torch.randn(outputs, 512 * 7 * 7),
        "classifier.0.bias": torch.randn(outputs),
        "classifier.3.weight": torch.randn(outputs, outputs),
        "classifier.3.bias": torch.randn(outputs),
    }
    fc = decimate_vgg_classifier(state, fc_channels=channels)
    fc6 = state["classifier.0.weight"].view(outputs, 512, 7, 7)
    assert fc["fc6.weight"].shape == (channels, 512, 3, 3)
    for out, source in enumerate((0, 4)):
        for i, row in enumerate((0, 3, 6)):
            for j, col in enumerate((0, 3, 6)):
                assert torch.equal(fc["fc6.weight"][out, :, i, j], fc6[source, :, row, col])
        assert fc["fc6.bias"][out] == state["classifier.0.bias"][source]
        assert fc["fc7.bias"][out] == state["classifier.3.bias"][source]
    assert fc["fc7.weight"].shape == (channels, channels, 1, 1)
    assert fc["fc7.weight"][1, 0, 0, 0] == state["classifier.3.weight"][4, 0]
    assert fc["fc7.weight"][0, 1, 0, 0] == state["classifier.3.weight"][0, 4]


def test_decimation_refuses_a_classifier_of_the_wrong_shape() -> None:
    state = {
        "classifier.0.weight": torch.zeros(6, 512 * 49),
        "classifier.0.bias": torch.zeros(6),
        "classifier.3.weight": torch.zeros(6, 6),
        "classifier.3.bias": torch.zeros(6),
    }
    with pytest.raises(ValueError, match="cannot decimate"):
        decimate_vgg_classifier(state, fc_channels=4)


def test_fc6_fc7_weights_go_into_every_branch() -> None:
    model = DeepLabV2("vgg16", "aspp-s", num_classes=2, msc_scales=None)
    weights = {
        "fc6.weight": torch.randn(1024, 512, 3, 3),
        "fc6.bias": torch.randn(1024),
        "fc7.weight": torch.randn(1024, 1024, 1, 1),
        "fc7.bias": torch.randn(1024),
    }
    model.head.load_fc6_fc7(weights)
    for branch in model.head.branches:
        assert torch.equal(branch.fc6.weight, weights["fc6.weight"])
        assert torch.equal(branch.fc7.bias, weights["fc7.bias"])


# ------------------------------------------------------------------ against the official prototxts
# Each entry: (type, kernel, stride, pad, dilation, out channels or None), as the official
# prototxt states it. Convolutions: "conv"; Pooling: "max" / "ave"; ReLU and Dropout are left out.
def _vgg16_trunk() -> list[tuple]:
    """conv1_1 .. pool5 of every DeepLab VGG-16 net (LargeFOV v1/v2 and v2 VGG-16 ASPP)."""
    layers: list[tuple] = []
    for stage, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), start=1):
        dilation = 2 if stage == 5 else 1  # conv5_*: pad 2, dilation 2
        layers += [("conv", 3, 1, dilation, dilation, width)] * convs
        layers.append(("max", 3, 2 if stage <= 3 else 1, 1, 1, None))  # pool1-3 stride 2, pool4/5 stride 1
    return layers


def _fc_branch(rate: int, classes: int) -> list[tuple]:
    """fc6 (3x3, pad = dilation = rate, 1024), fc7 (1x1, 1024), fc8 (1x1, classes)."""
    return [("conv", 3, 1, rate, rate, 1024), ("conv", 1, 1, 0, 1, 1024), ("conv", 1, 1, 0, 1, classes)]


#: DeepLab-LargeFOV (v1 deeplab_largeFOV and v2 DeepLab-LargeFOV train/test.prototxt):
#: pool5 -> pool5a (AVE, 3x3, stride 1, pad 1) -> fc6 (rate 12) -> fc7 -> fc8_voc12.
LARGEFOV_LAYERS = _vgg16_trunk() + [("ave", 3, 1, 1, 1, None)] + _fc_branch(12, 21)
#: v2 VGG-16 ASPP-L (exper/voc12/config/vgg16 test_val.prototxt): no pool5a; fc6_1..4 with
#: rates 6, 12, 18, 24, each -> fc7_i -> fc8_voc12_i, summed.
ASPP_L_LAYERS = _vgg16_trunk() + [layer for rate in (6, 12, 18, 24) for layer in _fc_branch(rate, 21)]
#: v2 VGG-16 ASPP-S: the same with rates 2, 4, 8, 12.
ASPP_S_LAYERS = _vgg16_trunk() + [layer for rate in (2, 4, 8, 12) for layer in _fc_branch(rate, 21)]


def _executed_layers(model: nn.Module, side: int = 65) -> list[tuple]:
    """(type, kernel, stride, pad, dilation, out channels) of every conv / pool, in the order the forward runs them."""
    calls: list[tuple] = []

    def describe(module: nn.Module, *_):
        if isinstance(module, nn.Conv2d):
            calls.append(
                (
                    "conv",
                    module.kernel_size[0],
                    module.stride[0],
                    module.padding[0],
                    module.dilation[0],
                    module.out_channels,
                )
            )
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            kind = "max" if isinstance(module, nn.MaxPool2d) else "ave"
            calls.append((kind, module.kernel_size, module.stride, module.padding, 1, None))

    handles = [m.register_forward_hook(describe) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.full((1, 3, side, side), 100.0, device="meta"))
    for handle in handles:
        handle.remove()
    return calls


@pytest.mark.parametrize(
    ("head", "official"),
    [("largefov", LARGEFOV_LAYERS), ("aspp-l", ASPP_L_LAYERS), ("aspp-s", ASPP_S_LAYERS)],
)
def test_each_vgg_variant_runs_the_official_layer_sequence(head: str, official: list[tuple]) -> None:
    with torch.device("meta"):
        model = DeepLabV2("vgg16", head, num_classes=21, msc_scales=None).eval()
    assert _executed_layers(model) == official


def test_pool5a_is_caffe_average_pooling_at_the_borders_too() -> None:
    """Caffe's AVE pooling divides by the window clipped to the *padded* input (pooling_layer.cpp)."""
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64)
    height, width, kernel, stride, pad = 5, 7, 3, 1, 1
    expected = torch.zeros(1, 2, height, width, dtype=torch.float64)
    for ph in range(height):
        for pw in range(width):
            hstart, wstart = ph * stride - pad, pw * stride - pad
            hend, wend = min(hstart + kernel, height + pad), min(wstart + kernel, width + pad)
            pool_size = (hend - hstart) * (wend - wstart)
            hstart, wstart, hend, wend = max(hstart, 0), max(wstart, 0), min(hend, height), min(wend, width)
            expected[..., ph, pw] = x[..., hstart:hend, wstart:wend].sum(dim=(-1, -2)) / pool_size
    pool5a = VGG16Backbone(pool5a=True).features[-1]
    assert isinstance(pool5a, nn.AvgPool2d)
    torch.testing.assert_close(pool5a(x), expected, rtol=1e-12, atol=1e-12)
    assert not isinstance(VGG16Backbone().features[-1], nn.AvgPool2d)


def test_parameter_counts_of_every_vgg_variant() -> None:
    """LargeFOV: 20.5 M (paper, Table 1; the paper states no count for the VGG-16 ASPP nets).

    The ASPP variants hold the 14.7 M conv layers and four fc6/fc7/fc8 branches of 5.8 M: 37.9 M.
    """
    with torch.device("meta"):
        counts = {
            head: DeepLabV2("vgg16", head, num_classes=21).num_parameters() for head in ("largefov", "aspp-l", "aspp-s")
        }
    assert round(counts["largefov"] / 1e6, 1) == 20.5
    assert counts["aspp-l"] == counts["aspp-s"]
    assert round(counts["aspp-l"] / 1e6, 1) == 37.9
