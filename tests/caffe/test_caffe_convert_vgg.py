"""convert-caffe on the released DeepLab VGG-16 nets: caffemodels written here with the official
layer names and shapes (LargeFOV v1 in the old V1 ``layers`` form and v2, v2 VGG-16 ASPP-L, the
ImageNet init model), converted, and checked against a direct computation from the raw blobs.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from caffe_writer import blob, layer, net, v1_layer

from lightning_deeplab.caffe import (
    CaffeBlob,
    CaffeLayer,
    convert_layers,
    read_caffemodel,
)
from lightning_deeplab.caffe.convert import main
from lightning_deeplab.constants import CAFFE_MEAN_BGR
from lightning_deeplab.models import DeepLabV2, load_pretrained

CLASSES = 3
V1_CONVOLUTION, V1_POOLING, V1_RELU = 4, 17, 18
# conv1_1 .. conv5_3 of VGG-16: (name, in channels, out channels).
CONVS = [
    (f"conv{stage}_{i}", cin if i == 1 else cout, cout)
    for stage, (cin, cout, count) in enumerate(
        ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3)), start=1
    )
    for i in range(1, count + 1)
]
ASPP_RATES = (6, 12, 18, 24)


def _random_conv(rng: np.random.Generator, cout: int, cin: int, k: int) -> list[np.ndarray]:
    weight = rng.standard_normal((cout, cin, k, k), dtype=np.float32) * np.float32((2.0 / (cin * k * k)) ** 0.5)
    return [weight, rng.standard_normal(cout, dtype=np.float32) * np.float32(0.1)]


def _trunk_blobs(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    return {name: _random_conv(rng, cout, cin, 3) for name, cin, cout in CONVS}


def _largefov_blobs(seed: int, classifier: "str | None" = "fc8_voc12", classes: int = CLASSES):
    rng = np.random.default_rng(seed)
    blobs = _trunk_blobs(rng)
    blobs["fc6"] = _random_conv(rng, 1024, 512, 3)
    blobs["fc7"] = _random_conv(rng, 1024, 1024, 1)
    if classifier:
        blobs[classifier] = _random_conv(rng, classes, 1024, 1)
    return blobs


def _aspp_blobs(seed: int) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    blobs = _trunk_blobs(rng)
    for branch in range(1, 5):
        blobs[f"fc6_{branch}"] = _random_conv(rng, 1024, 512, 3)
        blobs[f"fc7_{branch}"] = _random_conv(rng, 1024, 1024, 1)
        blobs[f"fc8_voc12_{branch}"] = _random_conv(rng, CLASSES, 1024, 1)
    return blobs


def _write(path: Path, blobs: dict[str, list[np.ndarray]], v1: bool = False, extra: bytes = b"") -> Path:
    """The released layout: ReLU / pooling layers between the weighted ones; V1 files with legacy 4-D blobs."""
    if v1:
        layers = []
        for name, arrays in blobs.items():
            layers.append(v1_layer(name, V1_CONVOLUTION, [blob(a, legacy_dims=True) for a in arrays]))
            layers.append(v1_layer(name.replace("conv", "relu"), V1_RELU))
        layers.append(v1_layer("pool5a", V1_POOLING))
        path.write_bytes(net(v1_layers=layers))
    else:
        layers = [layer("data", "ImageSegData")]
        for name, arrays in blobs.items():
            layers.append(layer(name, "Convolution", [blob(a) for a in arrays]))
            layers.append(layer(name.replace("conv", "relu"), "ReLU"))
        path.write_bytes(net(layers) + extra)
    return path


def _conv(x: torch.Tensor, blobs, name: str, pad: int = 0, dilation: int = 1) -> torch.Tensor:
    weight, bias = (torch.from_numpy(a) for a in blobs[name])
    return F.conv2d(x, weight, bias, padding=pad, dilation=dilation)


def _caffe_vgg_forward(rgb: torch.Tensor, blobs, branches: list[tuple[str, str, str, int]], pool5a: bool):
    """The official prototxt, layer by layer, from the raw blobs (Caffe semantics, eval mode)."""
    x = rgb.flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    for name, _, _ in CONVS:
        stage = int(name[4])
        x = F.relu(_conv(x, blobs, name, pad=2 if stage == 5 else 1, dilation=2 if stage == 5 else 1))
        if name in ("conv1_2", "conv2_2", "conv3_3"):
            x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
        elif name in ("conv4_3", "conv5_3"):
            x = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
    if pool5a:  # AVE 3x3 / 1 / 1: every window inside the padded input, divisor 9
        x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
    scores = 0
    for fc6, fc7, fc8, rate in branches:
        h = F.relu(_conv(x, blobs, fc6, pad=rate, dilation=rate))
        h = F.relu(_conv(h, blobs, fc7))
        scores = scores + _conv(h, blobs, fc8)
    return scores


def _model(head: str, classes: int = CLASSES, pretrained=None) -> DeepLabV2:
    model = DeepLabV2("vgg16", head, num_classes=classes, msc_scales=None, style="caffe")
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model.eval()


RGB = torch.rand(1, 3, 49, 45, generator=torch.Generator().manual_seed(3)) * 255


@pytest.fixture(scope="module")
def largefov(tmp_path_factory) -> tuple[dict, Path, Path]:
    blobs = _largefov_blobs(0)
    folder = tmp_path_factory.mktemp("vgg")
    return blobs, _write(folder / "v2.caffemodel", blobs), _write(folder / "v1.caffemodel", blobs, v1=True)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_largefov_converts_and_equals_the_caffe_forward(largefov, version: str, tmp_path: Path, capsys) -> None:
    blobs, v2_path, v1_path = largefov
    path = v2_path if version == "v2" else v1_path
    output = tmp_path / "largefov.pth"
    assert main([str(path), str(output)]) == 0
    printed = capsys.readouterr().out
    assert "conv5_3[0] -> backbone.features.28.weight" in printed
    assert "fc8_voc12[1] -> head.branches.0.fc8.bias" in printed
    assert "head: largefov, 3 classes" in printed and "unmapped: none" in printed and "head='largefov'" in printed
    model = _model("largefov", pretrained=str(output))
    with torch.no_grad():
        ours = model(RGB)
    expected = _caffe_vgg_forward(RGB, blobs, [("fc6", "fc7", "fc8_voc12", 12)], pool5a=True)
    assert ours.shape == expected.shape == (1, CLASSES, 7, 7)  # 49 -> 25 -> 13 -> 7; 45 -> 23 -> 12 -> 7
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    # Without pool5a (the network before this fix) the output is far off: the test sees the difference.
    without = _caffe_vgg_forward(RGB, blobs, [("fc6", "fc7", "fc8_voc12", 12)], pool5a=False)
    assert (without - expected).abs().max() > 0.05 * expected.abs().max()


def test_aspp_l_converts_and_equals_the_caffe_forward(tmp_path: Path) -> None:
    blobs = _aspp_blobs(1)
    state, report = convert_layers(read_caffemodel(_write(tmp_path / "aspp.caffemodel", blobs)))
    assert (report.backbone, report.head, report.num_classes, report.unmapped) == ("vgg16", "aspp-l", CLASSES, [])
    assert "fc6_4[0] -> head.branches.3.fc6.weight" in report.mapped
    assert "fc8_voc12_2[0] -> head.branches.1.fc8.weight" in report.mapped
    model = _model("aspp-l")
    model.load_state_dict(state)
    with torch.no_grad():
        ours = model(RGB)
    branches = [(f"fc6_{i}", f"fc7_{i}", f"fc8_voc12_{i}", rate) for i, rate in enumerate(ASPP_RATES, start=1)]
    expected = _caffe_vgg_forward(RGB, blobs, branches, pool5a=False)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("fc8", [None, "fc8"])
def test_init_model_keeps_fc6_fc7_for_every_branch(fc8, tmp_path: Path) -> None:
    """The ImageNet init model: conv layers and decimated fc6 / fc7 (and possibly a 1000-class fc8)."""
    blobs = _largefov_blobs(2, classifier=fc8, classes=1000)
    path = _write(tmp_path / "init.caffemodel", blobs)
    state, report = convert_layers(read_caffemodel(path), num_classes=21)
    assert report.num_classes is None and report.backbone == "vgg16"
    assert ("has 1000 classes, 21 were asked for" if fc8 else "no LargeFOV classifier") in report.head_note
    assert report.unmapped == []
    assert "fc6[0] -> fc6.weight" in report.mapped and "conv1_1[0] -> features.0.weight" in report.mapped
    output = tmp_path / "init.pth"
    torch.save(state, output)
    for head in ("largefov", "aspp-l"):
        model = _model(head, classes=21, pretrained=str(output))
        assert torch.equal(model.backbone.features[0].weight, torch.from_numpy(blobs["conv1_1"][0]))
        for branch in model.head.branches:
            assert torch.equal(branch.fc6.weight, torch.from_numpy(blobs["fc6"][0]))
            assert torch.equal(branch.fc7.bias, torch.from_numpy(blobs["fc7"][1]))


def test_unmapped_layers_are_reported_by_name_and_missing_ones_named(largefov) -> None:
    layers = read_caffemodel(largefov[1])
    extra = CaffeLayer("fc_extra", "InnerProduct", (CaffeBlob((2, 4), np.ones((2, 4), np.float32), 0),), 0)
    _, report = convert_layers([*layers, extra])
    assert report.unmapped == ["fc_extra (InnerProduct, 2x4)"]
    with pytest.raises(ValueError, match="conv3_2"):
        convert_layers([x for x in layers if x.name != "conv3_2"])
    undecimated = (CaffeBlob((4096, 25088), np.zeros((4096, 25088), np.float32), 0),) * 2  # VGG's own fc6
    with pytest.raises(ValueError, match="'fc6' blob 0 has shape \\(4096, 25088\\)"):
        convert_layers(
            [CaffeLayer(x.name, x.type, undecimated, 0) if x.name == "fc6" and x.blobs else x for x in layers]
        )
