"""Initial weights: torchvision state dicts, whole-model and Lightning checkpoints, clear errors."""

import socket
import time
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

from lightning_deeplab.models import DeepLabV2, load_pretrained


def pretrained_model(model: DeepLabV2, pretrained) -> DeepLabV2:
    load_pretrained(model, pretrained)
    return model


@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-default BN statistics, so that loading them is visible
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


@pytest.mark.parametrize("norm", ["frozen", "bn"])
def test_torchvision_state_dict_loads_into_the_pytorch_style_backbone(torchvision_resnet18, norm: str) -> None:
    path, reference = torchvision_resnet18
    model = pretrained_model(
        DeepLabV2("resnet18", num_classes=3, msc_scales=None, style="pytorch", norm=norm), str(path)
    )
    backbone = model.backbone.state_dict()
    for key in ("conv1.weight", "layer3.1.conv2.weight", "layer4.0.downsample.1.running_mean", "bn1.running_var"):
        assert torch.equal(backbone[key], reference[key]), key
    # And it computes what torchvision computes up to layer4 (same weights, different dilation
    # only from layer3 on): compare layer1 outputs.
    x = torch.rand(1, 3, 32, 32)
    tv = torchvision.models.resnet18(weights=None)
    tv.load_state_dict(reference)
    tv.eval(), model.eval()
    ours_net = model.backbone
    with torch.no_grad():
        ours = ours_net.layer1(ours_net.maxpool(ours_net.relu(ours_net.bn1(ours_net.conv1(x)))))
        theirs = tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_pathlib_paths_are_accepted(torchvision_resnet18) -> None:
    path, reference = torchvision_resnet18
    model = pretrained_model(DeepLabV2("resnet18", num_classes=3, msc_scales=None, style="pytorch"), path)
    assert torch.equal(model.backbone.conv1.weight, reference["conv1.weight"])


def test_lightning_checkpoint_of_the_whole_model_loads(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = DeepLabV2("resnet18", num_classes=3, msc_scales=None)
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    state["crf.kernel_weight"] = torch.ones(2)  # other parts of a LightningModule are ignored
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 10}, path)
    target = pretrained_model(DeepLabV2("resnet18", num_classes=3, msc_scales=None), str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_missing_file_is_a_file_not_found_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        pretrained_model(DeepLabV2("resnet18", msc_scales=None), str(missing))


def test_a_file_without_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="not a state dict"):
        pretrained_model(DeepLabV2("resnet18", msc_scales=None), str(path))


def test_keys_that_match_nothing_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.stem.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="no key of checkpoint.*encoder.stem.weight"):
        pretrained_model(DeepLabV2("resnet18", msc_scales=None), str(path))


def test_missing_and_unknown_keys_are_listed(torchvision_resnet18, tmp_path: Path) -> None:
    _, reference = torchvision_resnet18
    broken = dict(reference)
    del broken["layer2.1.conv1.weight"]
    broken["layer2.1.conv9.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError) as error:
        pretrained_model(DeepLabV2("resnet18", msc_scales=None, style="pytorch"), str(path))
    assert "missing: layer2.1.conv1.weight" in str(error.value)
    assert "unknown to the backbone: layer2.1.conv9.weight" in str(error.value)


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    source = DeepLabV2("resnet18", num_classes=5, msc_scales=None)
    path = tmp_path / "five_classes.pth"
    torch.save(source.state_dict(), path)
    expected = r"head.branches.0.weight: checkpoint \(5, 512, 3, 3\) vs model \(21, 512, 3, 3\)"
    with pytest.raises(ValueError, match=expected):
        pretrained_model(DeepLabV2("resnet18", num_classes=21, msc_scales=None), str(path))


def test_vgg_backbone_loads_torchvision_feature_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    path = tmp_path / "vgg_features.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    model = pretrained_model(DeepLabV2("vgg16", "largefov", num_classes=2, msc_scales=None), str(path))
    assert torch.equal(model.backbone.features[28].weight, features[28].weight)  # conv5_3


def test_offline_imagenet_download_fails_fast_and_names_the_weights(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    timeout_before = socket.getdefaulttimeout()
    start = time.monotonic()
    with pytest.raises(RuntimeError) as error:
        pretrained_model(DeepLabV2("resnet18", num_classes=3, msc_scales=None, style="pytorch"), "imagenet")
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in message and "no download is possible" in message
    assert str(tmp_path) in message  # where to put the file by hand
    assert socket.getdefaulttimeout() == timeout_before


def test_imagenet_weights_come_from_the_hub_cache(monkeypatch, tmp_path: Path, torchvision_resnet18) -> None:
    _, reference = torchvision_resnet18
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(reference, cache / url.rsplit("/", 1)[-1])
    model = pretrained_model(DeepLabV2("resnet18", num_classes=3, msc_scales=None, style="pytorch"), "imagenet")
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])


def test_imagenet_weights_need_the_pytorch_style() -> None:
    with pytest.raises(ValueError, match="style='pytorch'"):
        pretrained_model(DeepLabV2("resnet18", msc_scales=None, style="caffe"), "imagenet")


class _HyperParameters:
    """Stands for an object a LightningModule pickled into its checkpoint's hyper-parameters."""


def test_checkpoint_with_pickled_objects_loads_with_a_warning(tmp_path: Path) -> None:
    source = DeepLabV2("resnet18", num_classes=3, msc_scales=None)
    path = tmp_path / "with_objects.ckpt"
    state = {f"net.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"config": _HyperParameters()}}, path)
    with pytest.warns(UserWarning, match="more than tensors"):
        target = pretrained_model(DeepLabV2("resnet18", num_classes=3, msc_scales=None), str(path))
    assert torch.equal(target.head.branches[2].weight, source.head.branches[2].weight)
