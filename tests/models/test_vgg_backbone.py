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
