"""The converter: a caffemodel written here from a caffe-style DeepLab with random weights.

The test writes its own caffemodel (ResNet-50 naming; ResNet-101 is 44 M floats, so its
names are checked on blobs that cost no memory), converts it, and compares the converted
network with (a) the network it was written from and (b) a direct functional computation
from the raw blobs, Caffe's way.
"""

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from caffe_writer import blob, layer, net
from torch import nn

from lightning_deeplab.caffe import (
    CaffeBlob,
    CaffeLayer,
    convert_layers,
    read_caffemodel,
    resnet_units,
    save_state_dict,
)
from lightning_deeplab.caffe.convert import main
from lightning_deeplab.constants import CAFFE_MEAN_BGR
from lightning_deeplab.models import DeepLabV2, load_pretrained

CLASSES = 3
BN_EPS = 1e-5  # Caffe's BatchNorm default
# The moving-average scale factor Caffe stores with the BN statistics (~1/(1-0.999) after training).
SCALE_FACTOR = 999.982
# Written with a factor of 0 and nonzero statistics: Caffe then uses mean 0 and variance 0
# (batch_norm_layer.cpp: scale_factor = blobs[2] == 0 ? 0 : 1 / blobs[2]).
ZERO_FACTOR_LAYER = "bn3b_branch2a"
ZERO_FACTOR_MODULE = "layer2.1.bn1"
RESNET50_BLOCKS = {2: "abc", 3: "abcd", 4: "abcdef", 5: "abc"}


def _caffe_units_resnet50():
    """(conv, bn, scale, module prefix of conv, of norm) for ResNet-50, spelled out independently."""
    yield "conv1", "bn_conv1", "scale_conv1", "conv1", "bn1"
    for stage, letters in RESNET50_BLOCKS.items():
        for index, letter in enumerate(letters):
            module = f"layer{stage - 1}.{index}"
            branches = [("2a", "conv1", "bn1"), ("2b", "conv2", "bn2"), ("2c", "conv3", "bn3")]
            if index == 0:
                branches.append(("1", "downsample.0", "downsample.1"))
            for branch, conv, norm in branches:
                name = f"{stage}{letter}_branch{branch}"
                yield f"res{name}", f"bn{name}", f"scale{name}", f"{module}.{conv}", f"{module}.{norm}"


def _randomise_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Random statistics and affine in every FrozenBatchNorm2d (all of the model's buffers)."""
    random = {
        "running_mean": lambda shape: torch.randn(shape, generator=generator) * 0.1,
        "running_var": lambda shape: torch.rand(shape, generator=generator) + 0.5,
        "weight": lambda shape: torch.rand(shape, generator=generator) * 0.5 + 0.5,
        "bias": lambda shape: torch.randn(shape, generator=generator) * 0.1,
    }
    for name, buffer in model.named_buffers():
        buffer.copy_(random[name.rsplit(".", 1)[1]](buffer.shape))


@pytest.fixture(scope="module")
def reference() -> DeepLabV2:
    """The network the caffemodel is written from: random convs, random frozen-BN statistics and affine."""
    torch.manual_seed(1)
    model = _resnet50(CLASSES).eval()
    with torch.no_grad():
        _randomise_norms(model.backbone, torch.Generator().manual_seed(2))
        zero_factor_norm = model.backbone.get_submodule(ZERO_FACTOR_MODULE)
        zero_factor_norm.running_mean.zero_()
        zero_factor_norm.running_var.zero_()
        zero_factor_norm.weight.mul_(BN_EPS**0.5)  # keeps the activations' scale despite 1 / sqrt(0 + eps)
        for branch in model.head.branches:
            branch.bias.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def caffe_blobs(reference: DeepLabV2) -> dict[str, list[np.ndarray]]:
    """Caffe layer name -> its blobs, as the released models store them."""
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    blobs: dict[str, list[np.ndarray]] = {}
    for conv, bn, scale, conv_module, norm_module in _caffe_units_resnet50():
        factor = 0.0 if bn == ZERO_FACTOR_LAYER else SCALE_FACTOR
        norm = f"backbone.{norm_module}"
        blobs[conv] = [state[f"backbone.{conv_module}.weight"]]
        mean, var = state[f"{norm}.running_mean"] * factor, state[f"{norm}.running_var"] * factor
        if factor == 0.0:  # statistics Caffe ignores
            mean, var = np.full_like(mean, 0.7), np.full_like(var, 3.0)
        blobs[bn] = [mean, var, np.array([factor], np.float32)]
        blobs[scale] = [state[f"{norm}.weight"], state[f"{norm}.bias"]]
    for index in range(4):
        prefix = f"head.branches.{index}"
        blobs[f"fc1_voc12_c{index}"] = [state[f"{prefix}.weight"], state[f"{prefix}.bias"]]
    return blobs


@pytest.fixture(scope="module")
def caffemodel(caffe_blobs: dict[str, list[np.ndarray]], tmp_path_factory) -> Path:
    """The VOC-model layout: parameter-free layers between, MSC copies, one stray layer with weights."""
    layers = [layer("data", "MemoryData")]
    for name, arrays in caffe_blobs.items():
        legacy = name.startswith("scale2")  # some blobs in the legacy 4-D form
        unpacked = name == "scale_conv1"  # and one layer written without packing
        encoded = [blob(a, legacy_dims=legacy, packed=not unpacked) for a in arrays]
        layers.append(layer(name, _caffe_type(name), encoded))
        if name.startswith("res") and name.endswith("branch2c"):
            layers.append(layer(name[: -len("_branch2c")], "Eltwise"))
    for name in ("conv1", "bn_conv1", "fc1_voc12_c2"):
        for suffix in ("res075", "res05"):
            layers.append(layer(f"{name}_{suffix}", _caffe_type(name), [blob(a) for a in caffe_blobs[name]]))
    layers.append(layer("fc_extra", "InnerProduct", [blob(np.ones((2, 4), np.float32))]))
    layers.append(layer("fc1_voc12", "Eltwise"))
    path = tmp_path_factory.mktemp("caffe") / "train2_iter_20000.caffemodel"
    path.write_bytes(net(layers))
    return path


@pytest.fixture(scope="module")
def caffe_layers(caffemodel: Path) -> list[CaffeLayer]:
    return read_caffemodel(caffemodel)


def _resnet50(classes: int, pretrained=None) -> DeepLabV2:
    model = DeepLabV2("resnet50", "aspp-l", num_classes=classes, msc_scales=None, style="caffe")
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def _caffe_type(name: str) -> str:
    if name.startswith("bn"):
        return "BatchNorm"
    return "Scale" if name.startswith("scale") else "Convolution"


def _without(layers: list[CaffeLayer], *names: str) -> list[CaffeLayer]:
    return [x for x in layers if x.name not in names]


def _replace(layers: list[CaffeLayer], name: str, *blobs: np.ndarray) -> list[CaffeLayer]:
    new = [CaffeBlob(a.shape, a, 0) for a in blobs]
    return [CaffeLayer(x.name, x.type, tuple(new), x.offset) if x.name == name else x for x in layers]


@pytest.mark.slow
def test_converted_checkpoint_reproduces_the_network_it_was_written_from(
    reference: DeepLabV2, caffemodel: Path, tmp_path: Path, capsys
) -> None:
    output = tmp_path / "deeplab.pth"
    assert main([str(caffemodel), str(output), "--num-classes", str(CLASSES)]) == 0
    printed = capsys.readouterr().out
    assert "res4f_branch2c[0] -> backbone.layer3.5.conv3.weight" in printed
    assert "fc1_voc12_c3[1] -> head.branches.3.bias" in printed

    loaded = _resnet50(CLASSES, pretrained=str(output)).eval()
    expected = reference.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7, msg=key)
    image = torch.rand(1, 3, 35, 45, generator=torch.Generator().manual_seed(3)) * 255
    with torch.no_grad():
        ours, theirs = loaded(image), reference(image)
    assert ours.shape == (1, CLASSES, 5, 6)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def _caffe_bn_scale(x: torch.Tensor, blobs: dict[str, list[np.ndarray]], bn: str, scale: str) -> torch.Tensor:
    """Caffe's BatchNorm (global stats times 1 / the stored factor, or times 0 when it is 0) then Scale."""
    mean, var, factor = (torch.from_numpy(a) for a in blobs[bn])
    multiplier = 0.0 if factor.item() == 0 else 1.0 / factor.item()
    gamma, beta = (torch.from_numpy(a) for a in blobs[scale])
    x = (x - (mean * multiplier).view(1, -1, 1, 1)) / torch.sqrt((var * multiplier).view(1, -1, 1, 1) + BN_EPS)
    return x * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


def _caffe_conv(x, blobs, name, stride=1, pad=0):
    return F.conv2d(x, torch.from_numpy(blobs[name][0]), stride=stride, padding=pad)


def _caffe_bottleneck(x, blobs, block: str, stride: int) -> torch.Tensor:
    """A first block of a stage, as the Caffe prototxt has it: the stride on the 1x1 convs."""
    shortcut = _caffe_unit(x, blobs, f"{block}_branch1", stride, 0)
    h = F.relu(_caffe_unit(x, blobs, f"{block}_branch2a", stride, 0))
    h = F.relu(_caffe_unit(h, blobs, f"{block}_branch2b", 1, 1))
    return F.relu(shortcut + _caffe_unit(h, blobs, f"{block}_branch2c", 1, 0))


def _caffe_unit(x, blobs, suffix: str, stride: int, pad: int) -> torch.Tensor:
    """Convolution res{suffix}, then BatchNorm bn{suffix} and Scale scale{suffix}."""
    return _caffe_bn_scale(_caffe_conv(x, blobs, f"res{suffix}", stride, pad), blobs, f"bn{suffix}", f"scale{suffix}")


def _caffe_pooled_size(size: int, kernel: int = 3, stride: int = 2, pad: int = 1) -> int:
    """Caffe's pooling output size: ceil, then drop a window that would start in the padding."""
    pooled = math.ceil((size + 2 * pad - kernel) / stride) + 1
    return pooled - 1 if (pooled - 1) * stride >= size + pad else pooled


def test_first_stages_equal_a_direct_caffe_computation_from_the_blobs(
    caffe_layers: list[CaffeLayer], caffe_blobs: dict[str, list[np.ndarray]]
) -> None:
    state, report = convert_layers(caffe_layers)
    model = _resnet50(report.num_classes).eval()
    model.load_state_dict(state)
    rgb = torch.rand(2, 3, 35, 38, generator=torch.Generator().manual_seed(4)) * 255
    bgr = rgb.flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)

    x = F.relu(_caffe_bn_scale(_caffe_conv(bgr, caffe_blobs, "conv1", 2, 3), caffe_blobs, "bn_conv1", "scale_conv1"))
    x = F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True)
    assert x.shape[-2:] == (_caffe_pooled_size(18), _caffe_pooled_size(19)) == (10, 10)
    res2a = _caffe_bottleneck(x, caffe_blobs, "2a", 1)

    backbone = model.backbone
    with torch.no_grad():
        ours = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(model.normalize_input(rgb)))))
        ours_2a = backbone.layer1[0](ours)
        ours_3a = backbone.layer2[0](backbone.layer1[2](backbone.layer1[1](ours_2a)))
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_2a, res2a, rtol=1e-4, atol=1e-4)
    expected_3a = _caffe_bottleneck(
        _caffe_plain_block(_caffe_plain_block(res2a, caffe_blobs, "2b"), caffe_blobs, "2c"), caffe_blobs, "3a", 2
    )
    assert expected_3a.shape[-2:] == (5, 5)
    torch.testing.assert_close(ours_3a, expected_3a, rtol=1e-4, atol=1e-4 * expected_3a.abs().max().item())


def _caffe_plain_block(x, blobs, block: str) -> torch.Tensor:
    """A block with the identity shortcut."""
    h = F.relu(_caffe_unit(x, blobs, f"{block}_branch2a", 1, 0))
    h = F.relu(_caffe_unit(h, blobs, f"{block}_branch2b", 1, 1))
    return F.relu(x + _caffe_unit(h, blobs, f"{block}_branch2c", 1, 0))


def test_report_lists_skipped_unmapped_and_zero_factor_layers(caffe_layers: list[CaffeLayer]) -> None:
    state, report = convert_layers(caffe_layers, source="voc.caffemodel")
    assert report.backbone == "resnet50" and report.num_classes == CLASSES
    assert report.unmapped == ["fc_extra (InnerProduct, 2x4)"]
    assert sorted(report.msc_copies) == sorted(
        f"{n}_{s}" for n in ("conv1", "bn_conv1", "fc1_voc12_c2") for s in ("res075", "res05")
    )
    assert report.zero_scale_factors == [ZERO_FACTOR_LAYER]
    norm = f"backbone.{ZERO_FACTOR_MODULE}"
    assert torch.equal(state[f"{norm}.running_mean"], torch.zeros_like(state[f"{norm}.running_mean"]))
    assert torch.equal(state[f"{norm}.running_var"], torch.zeros_like(state[f"{norm}.running_var"]))
    assert len(report.mapped) == len(state)
    summary = report.summary()
    assert "fc_extra" in summary and "6 layers of the MSC branches" in summary and ZERO_FACTOR_LAYER in summary


def test_other_class_count_leaves_the_head_out_and_the_backbone_loads(
    caffe_layers: list[CaffeLayer], reference: DeepLabV2, tmp_path: Path
) -> None:
    state, report = convert_layers(caffe_layers, num_classes=CLASSES + 2)
    assert report.num_classes is None and f"has {CLASSES} classes, {CLASSES + 2} were asked for" in report.head_note
    assert not any(key.startswith(("head.", "backbone.")) for key in state)
    assert "head: NOT converted, stays randomly initialised" in report.summary()
    path = tmp_path / "backbone.pth"
    save_state_dict(state, path)
    model = _resnet50(CLASSES + 2, pretrained=str(path))
    torch.testing.assert_close(model.backbone.layer4[2].bn3.running_var, reference.backbone.layer4[2].bn3.running_var)
    assert model.head.branches[0].weight.shape[0] == CLASSES + 2


def test_init_model_with_a_coco_classifier_converts_the_backbone_only(caffe_layers: list[CaffeLayer]) -> None:
    layers = _without(caffe_layers, *(f"fc1_voc12_c{i}" for i in range(4)))
    coco_weights = np.zeros((91, 2048, 1, 1), np.float32)  # a 1x1 classifier for COCO's 91 classes
    coco = CaffeLayer("fc1_coco", "Convolution", (CaffeBlob(coco_weights.shape, coco_weights, 0),), 0)
    state, report = convert_layers([*layers, coco])
    assert report.num_classes is None and "no ASPP-L classifier" in report.head_note
    assert report.unmapped == ["fc_extra (InnerProduct, 2x4)", "fc1_coco (Convolution, 91x2048x1x1)"]
    assert "conv1.weight" in state and "layer4.2.bn3.bias" in state


def test_missing_layers_are_named(caffe_layers: list[CaffeLayer]) -> None:
    layers = _without(caffe_layers, "res4c_branch2b", "scale5a_branch1")
    with pytest.raises(ValueError, match=r"2 layers of the resnet50 backbone are missing.*res4c_branch2b, scale5a_bra"):
        convert_layers(layers, source="voc.caffemodel")


def test_shape_mismatch_names_the_layer_and_the_parameter(caffe_layers: list[CaffeLayer], caffe_blobs) -> None:
    transposed = np.ascontiguousarray(caffe_blobs["res3a_branch2b"][0].transpose(1, 0, 2, 3)[:, :64])
    layers = _replace(caffe_layers, "res3a_branch2b", transposed)
    message = r"'res3a_branch2b' blob 0 has shape \(128, 64, 3, 3\).*layer2\.0\.conv2\.weight needs \(128, 128, 3, 3\)"
    with pytest.raises(ValueError, match=message):
        convert_layers(layers)
    short_variance = (np.zeros(64, np.float32), np.ones(63, np.float32), np.ones(1, np.float32))
    with pytest.raises(ValueError, match=r"'bn_conv1' blob 1 has shape \(63,\).*bn1\.running_var needs \(64,\)"):
        convert_layers(_replace(caffe_layers, "bn_conv1", *short_variance))


def test_wrong_blob_counts_and_classifier_shapes_are_refused(caffe_layers: list[CaffeLayer], caffe_blobs) -> None:
    conv1 = caffe_blobs["conv1"][0]
    with pytest.raises(ValueError, match=r"'conv1' \(Convolution\) has 2 blobs, expected 1 .*no bias"):
        convert_layers(_replace(caffe_layers, "conv1", conv1, np.zeros(64, np.float32)))
    with pytest.raises(ValueError, match=r"'scale_conv1' \(Scale\) has 1 blobs, expected 2 \(gamma, beta\)"):
        convert_layers(_replace(caffe_layers, "scale_conv1", np.ones(64, np.float32)))
    narrow = np.zeros((CLASSES, 1024, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"must all be \(classes, 2048, 3, 3\).*fc1_voc12_c1 \(3, 1024, 3, 3\)"):
        convert_layers(_replace(caffe_layers, "fc1_voc12_c1", narrow, np.zeros(CLASSES, np.float32)))


def test_bad_arguments_and_unrelated_nets(caffe_layers: list[CaffeLayer], tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        convert_layers(caffe_layers, num_classes=0)
    with pytest.raises(ValueError, match="backbone must be one of resnet101, resnet50"):
        convert_layers(caffe_layers, backbone="resnet18")
    lenet = [CaffeLayer("ip1", "InnerProduct", (CaffeBlob((2, 2), np.ones((2, 2), np.float32), 0),), 0)]
    with pytest.raises(ValueError, match="no DeepLab ResNet layer.*nor VGG-16 layer.*ip1"):
        convert_layers(lenet, source="lenet.caffemodel")
    # the command line reports the error and writes nothing
    broken = tmp_path / "broken.caffemodel"
    broken.write_bytes(net([layer("conv1", "Convolution", [blob(np.ones(3, np.float32))])])[:-2])
    assert main([str(broken), str(tmp_path / "out.pth")]) == 1
    assert "broken.caffemodel" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [broken]


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "ckpt" / "model.pth"
    save_state_dict({"a": torch.ones(2)}, target)
    save_state_dict({"a": torch.zeros(3)}, target)  # replaces the previous file
    assert torch.load(target, weights_only=True)["a"].tolist() == [0.0, 0.0, 0.0]
    assert [p.name for p in target.parent.iterdir()] == ["model.pth"]
    with pytest.raises((pickle.PicklingError, AttributeError)):
        save_state_dict({"a": lambda: None}, target)  # fails while writing
    assert [p.name for p in target.parent.iterdir()] == ["model.pth"]


def _constant_layers(backbone: str) -> tuple[list[CaffeLayer], dict[str, float]]:
    """Every unit of ``backbone`` with correctly shaped blobs that cost no memory: one value per blob."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in DeepLabV2(backbone, msc_scales=None, style="caffe").state_dict().items()}
    layers, values = [], {}

    def constant(shape, value: float) -> CaffeBlob:
        return CaffeBlob(tuple(shape), np.broadcast_to(np.float32(value), tuple(shape)), 0)

    for number, unit in enumerate(resnet_units(backbone)):
        conv, norm = unit.conv_module, unit.norm_module
        channels = shapes[f"{conv}.weight"][0]
        layers.append(CaffeLayer(unit.conv, "Convolution", (constant(shapes[f"{conv}.weight"], number),), 0))
        statistics = (constant((channels,), 2 * number), constant((channels,), 4 * number + 4), constant((1,), 2))
        layers.append(CaffeLayer(unit.batch_norm, "BatchNorm", statistics, 0))
        affine = (constant((channels,), -number), constant((channels,), number + 0.5))
        layers.append(CaffeLayer(unit.scale, "Scale", affine, 0))
        values.update(
            {
                f"{conv}.weight": number,
                f"{norm}.running_mean": number,
                f"{norm}.running_var": 2 * number + 2,
                f"{norm}.weight": -number,
                f"{norm}.bias": number + 0.5,
            }
        )
    return layers, values


def test_resnet101_names_cover_every_backbone_tensor_and_land_in_place() -> None:
    layers, values = _constant_layers("resnet101")
    names = {x.name for x in layers}
    assert {"res3b3_branch2a", "res4b22_branch2c", "bn4b22_branch2c", "scale5c_branch2b", "res4a_branch1"} <= names
    assert not {"res4f_branch2a", "res3d_branch2a"} & names
    state, report = convert_layers(layers)
    assert report.backbone == "resnet101" and report.num_classes is None
    with torch.device("meta"):
        backbone_keys = set(DeepLabV2("resnet101", msc_scales=None, style="caffe").backbone.state_dict())
    assert set(state) == backbone_keys
    for module_key, value in values.items():
        key = module_key[len("backbone.") :]
        assert torch.all(state[key] == value), key
    # the places that tell the conventions apart
    unit_of = {u.conv: u.conv_module for u in resnet_units("resnet101")}
    assert unit_of["res4b22_branch2c"] == "backbone.layer3.22.conv3"
    assert unit_of["res3b3_branch2b"] == "backbone.layer2.3.conv2"
    assert unit_of["res5c_branch2a"] == "backbone.layer4.2.conv1"
    assert {u.conv: u.conv_module for u in resnet_units("resnet50")}["res4f_branch2c"] == "backbone.layer3.5.conv3"
