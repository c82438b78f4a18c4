"""DeepLabV2: input normalisation, MSC fusion, outputs, parameter groups, BN modes, bad arguments."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from lightning_deeplab.constants import CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from lightning_deeplab.models import BACKBONES, HEADS, NORMS, STYLES, DeepLabV2


@pytest.fixture(scope="module")
def msc_model() -> DeepLabV2:
    torch.manual_seed(0)
    return DeepLabV2("resnet18", "aspp-s", num_classes=4, msc_scales=(1.0, 0.75, 0.5), norm="bn").eval()


def test_caffe_style_flips_to_bgr_and_subtracts_the_caffe_mean() -> None:
    model = DeepLabV2("resnet18", num_classes=2, msc_scales=None, style="caffe")
    x = torch.rand(2, 3, 5, 4) * 255
    expected = torch.stack([x[:, 2 - c] - CAFFE_MEAN_BGR[c] for c in range(3)], dim=1)
    assert torch.allclose(model.normalize_input(x), expected, atol=1e-4)
    assert model.input_channel_order == "BGR"


def test_pytorch_style_normalises_like_torchvision() -> None:
    model = DeepLabV2("resnet18", num_classes=2, msc_scales=None, style="pytorch")
    x = torch.rand(2, 3, 5, 4) * 255
    expected = TF.normalize(x / 255, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)
    assert torch.allclose(model.normalize_input(x), expected, atol=1e-5)


def test_normalisation_buffers_follow_the_model_but_stay_out_of_state_dicts() -> None:
    model = DeepLabV2("resnet18", num_classes=2, msc_scales=None).to(torch.float64)
    assert model.input_mean.dtype == torch.float64 and model.input_std.shape == (1, 3, 1, 1)
    assert not any(k.startswith("input_") for k in model.state_dict())


@pytest.mark.parametrize("method", ["caffe", "pytorch"])
def test_forward_multi_is_each_scale_then_their_max(msc_model: DeepLabV2, method: str) -> None:
    model = DeepLabV2("resnet18", "aspp-s", num_classes=4, msc_scales=(1.0, 0.75, 0.5), norm="bn", msc_resize=method)
    model.load_state_dict(msc_model.state_dict())
    model.eval()
    corners = method == "caffe"  # Caffe's Interp: corner-aligned weights
    x = torch.rand(1, 3, 41, 45) * 255
    with torch.no_grad():
        outputs = model.forward_multi(x)
        fused = model(x)
        # By hand: normalise, resize (ceil(side * scale); Caffe's Interp gives the same sides
        # here), run the network, max over the maps brought to the 1x map's size.
        normalised = torch.stack([x[:, 2 - c] - CAFFE_MEAN_BGR[c] for c in range(3)], dim=1)
        sizes = {1.0: (41, 45), 0.75: (31, 34), 0.5: (21, 23)}
        expected = []
        for scale, size in sizes.items():
            scaled = normalised
            if scale != 1.0:
                scaled = F.interpolate(normalised, size, mode="bilinear", align_corners=corners)
            expected.append(model.head(model.backbone(scaled)))
    assert len(outputs) == 4
    assert [tuple(o.shape[-2:]) for o in outputs] == [(6, 6), (5, 5), (3, 4), (6, 6)]
    for got, want in zip(outputs[:3], expected):
        assert torch.allclose(got, want, atol=1e-4)
    upsampled = [F.interpolate(m, (6, 6), mode="bilinear", align_corners=corners) for m in expected[1:]]
    hand_max = torch.maximum(expected[0], torch.maximum(upsampled[0], upsampled[1]))
    assert torch.allclose(outputs[3], hand_max, atol=1e-4)
    assert torch.equal(fused, outputs[3])
    # The max really mixes scales here (otherwise the test could not tell max from the 1x map).
    assert not torch.allclose(outputs[3], outputs[0])


@pytest.mark.parametrize("scales", [None, (1.0,), [1.0]])
def test_without_msc_there_is_one_output(scales) -> None:
    model = DeepLabV2("resnet18", num_classes=3, msc_scales=scales).eval()
    x = torch.rand(2, 3, 33, 33) * 255
    with torch.no_grad():
        outputs = model.forward_multi(x)
        assert len(outputs) == 1 and outputs[0].shape == (2, 3, 5, 5)
        assert torch.equal(model(x), outputs[0])


def test_parameter_groups_partition_the_trainable_parameters() -> None:
    model = DeepLabV2("resnet18", "aspp-l", num_classes=3, norm="bn")
    model.backbone.conv1.weight.requires_grad_(False)
    groups = model.parameter_groups()
    assert set(groups) == {"backbone", "head_weight", "head_bias"}
    ids = [id(p) for group in groups.values() for p in group]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    assert id(model.backbone.conv1.weight) not in ids
    assert {id(p) for p in groups["head_weight"]} == {id(b.weight) for b in model.head.branches}
    assert {id(p) for p in groups["head_bias"]} == {id(b.bias) for b in model.head.branches}
    assert len(groups["head_weight"]) == 4
    assert id(model.backbone.bn1.weight) in {id(p) for p in groups["backbone"]}  # trainable BN: 1x


def test_vgg_fc6_fc7_are_backbone_and_fc8_is_the_head() -> None:
    with torch.device("meta"):
        model = DeepLabV2("vgg16", "largefov", num_classes=3)
    groups = model.parameter_groups()
    branch = model.head.branches[0]
    backbone = {id(p) for p in groups["backbone"]}
    assert {id(branch.fc6.weight), id(branch.fc7.weight), id(branch.fc7.bias)} <= backbone
    assert [id(p) for p in groups["head_weight"]] == [id(branch.fc8.weight)]
    assert [id(p) for p in groups["head_bias"]] == [id(branch.fc8.bias)]


def test_classifier_init_is_normal_001_with_zero_bias() -> None:
    torch.manual_seed(0)
    model = DeepLabV2("resnet18", "aspp-l", num_classes=50, msc_scales=None)
    for conv in model.head.branches:
        assert conv.dilation == conv.padding
        assert abs(conv.weight.std().item() - 0.01) < 0.001 and abs(conv.weight.mean().item()) < 0.001
        assert torch.count_nonzero(conv.bias) == 0


def test_frozen_bn_stays_frozen_through_a_training_step() -> None:
    torch.manual_seed(0)
    model = DeepLabV2("resnet18", num_classes=3, msc_scales=(1.0, 0.5)).train()
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 20  # every BN of ResNet-18: stem 1 + 8 blocks x 2 + 3 downsamples
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    conv_before = model.backbone.layer1[0].conv1.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    outputs = model.forward_multi(torch.rand(2, 3, 33, 33) * 255)
    loss = sum(F.cross_entropy(o, torch.zeros(2, *o.shape[-2:], dtype=torch.long)) for o in outputs)
    loss.backward()
    optimizer.step()
    for module, state in zip(norms, before):
        assert set(state) == {"weight", "bias", "running_mean", "running_var"}
        assert all(torch.equal(module.state_dict()[k], v) for k, v in state.items())
    assert not torch.equal(model.backbone.layer1[0].conv1.weight, conv_before)  # the step did happen


def test_trainable_bn_updates_and_converts_to_syncbn_while_frozen_bn_does_not() -> None:
    trainable = DeepLabV2("resnet18", num_classes=3, msc_scales=None, norm="bn").train()
    before = trainable.backbone.bn1.running_mean.clone()
    trainable(torch.rand(2, 3, 33, 33) * 255)
    assert not torch.equal(trainable.backbone.bn1.running_mean, before)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(trainable)  # what Lightning's sync_batchnorm does
    assert isinstance(converted.backbone.bn1, nn.SyncBatchNorm)
    frozen = nn.SyncBatchNorm.convert_sync_batchnorm(DeepLabV2("resnet18", num_classes=3, msc_scales=None))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in frozen.modules())


def test_syncbn_model_runs_without_a_process_group() -> None:
    model = DeepLabV2("resnet18", num_classes=3, msc_scales=None, norm="syncbn").train()
    assert isinstance(model.backbone.bn1, nn.SyncBatchNorm)
    assert model(torch.rand(2, 3, 33, 33) * 255).shape == (2, 3, 5, 5)


def test_custom_rates_replace_the_head_rates() -> None:
    with torch.device("meta"):
        model = DeepLabV2("resnet50", "aspp-l", atrous_rates=[3, 9], msc_scales=None)
    assert model.atrous_rates == (3, 9)
    assert [b.dilation for b in model.head.branches] == [(3, 3), (9, 9)]
    assert HEADS["aspp-l"] == (6, 12, 18, 24) and HEADS["aspp-s"] == (2, 4, 8, 12) and HEADS["largefov"] == (12,)


@pytest.mark.parametrize(
    ("argument", "value", "listed"),
    [
        ("backbone", "resnet152", BACKBONES),
        ("head", "aspp-xl", tuple(HEADS)),
        ("style", "tensorflow", STYLES),
        ("norm", "groupnorm", NORMS),
    ],
)
def test_unknown_names_list_the_valid_ones(argument: str, value: str, listed: tuple) -> None:
    with pytest.raises(ValueError) as error:
        DeepLabV2(**{argument: value})
    assert argument in str(error.value) and value in str(error.value)
    assert all(name in str(error.value) for name in listed)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"msc_scales": (0.75, 1.0)}, ValueError, "start with 1.0"),
        ({"msc_scales": (1.0, 0.0)}, ValueError, "positive"),
        ({"msc_scales": (1.0, -0.5)}, ValueError, "positive"),
        ({"msc_scales": ()}, ValueError, "empty"),
        ({"msc_scales": (1.0, 1.0)}, ValueError, "distinct"),
        ({"msc_scales": "1.0"}, TypeError, "msc_scales"),
        ({"msc_scales": (1.0, "half")}, TypeError, "msc_scales"),
        ({"atrous_rates": (6, 0)}, ValueError, "atrous_rates"),
        ({"atrous_rates": (6, 1.5)}, ValueError, "atrous_rates"),
        ({"atrous_rates": ()}, ValueError, "atrous_rates"),
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"backbone": 101}, TypeError, "backbone"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        with torch.device("meta"):
            DeepLabV2("resnet18", **kwargs)


@pytest.mark.parametrize("shape", [(3, 33, 33), (1, 1, 33, 33), (1, 4, 33, 33)])
def test_bad_input_shapes_are_refused(shape: tuple) -> None:
    with torch.device("meta"):
        model = DeepLabV2("resnet18", msc_scales=None)
        with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
            model(torch.zeros(shape))


def test_resnet18_demo_configuration_is_cheap() -> None:
    # The CPU demo: resnet18, trainable BN, no MSC, ~128 px crops.
    torch.manual_seed(0)
    model = DeepLabV2("resnet18", "aspp-l", num_classes=6, msc_scales=None, norm="bn", style="pytorch").train()
    x = torch.rand(4, 3, 128, 128) * 255
    logits = model(x)
    logits.logsumexp(1).mean().backward()
    assert logits.shape == (4, 6, 16, 16)


def test_init_args_are_the_arguments_as_given_and_rebuild_the_network() -> None:
    with torch.device("meta"):
        model = DeepLabV2("resnet18", "aspp-s", num_classes=5, msc_scales=None, style="pytorch")
        assert model.init_args == {
            "backbone": "resnet18",
            "head": "aspp-s",
            "num_classes": 5,
            "msc_scales": None,
            "atrous_rates": None,
            "style": "pytorch",
            "norm": "frozen",
            "msc_resize": None,
        }
        scaled = DeepLabV2("resnet18", msc_scales=(1.0, 0.5), atrous_rates=(2, 4))
        assert scaled.init_args["msc_scales"] == [1.0, 0.5] and scaled.init_args["atrous_rates"] == [2, 4]
        rebuilt = DeepLabV2(**scaled.init_args)
    assert rebuilt.msc_scales == scaled.msc_scales and rebuilt.atrous_rates == scaled.atrous_rates


def test_an_unknown_msc_resize_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="msc_resize 'nearest'; valid names: caffe, pytorch"):
        with torch.device("meta"):
            DeepLabV2("resnet18", msc_resize="nearest")


@pytest.mark.parametrize("style", STYLES)
def test_padding_normalises_to_zero_the_mean_colour(style: str) -> None:
    from lightning_deeplab.constants import PAD_VALUE

    model = DeepLabV2("resnet18", "aspp-s", num_classes=3, msc_scales=None, style=style)
    image = torch.rand(2, 3, 9, 11) * 255
    image[0, :, 5:, :] = PAD_VALUE
    image[1, :2, :, 7:] = PAD_VALUE  # not every channel: a pixel, not padding (never from the data)
    normalised = model.normalize_input(image)
    assert bool((normalised[0, :, 5:] == 0).all())
    assert torch.equal(normalised[0, :, :5], model.normalize_input(image[:1, :, :5])[0])
    assert not bool((normalised[1, :2, :, 7:] == 0).any())
    # the mean colour itself normalises to (nearly) the same zero
    mean_rgb = model.input_mean.flip(1) if model.input_channel_order == "BGR" else model.input_mean
    torch.testing.assert_close(model.normalize_input(mean_rgb.expand(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))
