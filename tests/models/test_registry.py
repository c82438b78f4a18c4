"""Every name list of the networks derives from the one registry."""

import inspect
import typing

import pytest
import torch

from lightning_deeplab.caffe.names import CAFFE_BACKBONES
from lightning_deeplab.models import FACTORIES, NAMED_MODELS, DeepLabV2, registry
from lightning_deeplab.models.norm import NORMS, norm_layer
from lightning_deeplab.models.resnet import RESNET_SPECS


def test_constructor_types_are_the_registry_names():
    hints = typing.get_type_hints(DeepLabV2.__init__)
    assert typing.get_args(hints["backbone"]) == registry.BACKBONES
    assert typing.get_args(hints["head"]) == tuple(registry.HEADS)
    assert typing.get_args(hints["style"]) == registry.STYLES
    assert typing.get_args(hints["norm"]) == registry.NORMS


def test_other_lists_derive_from_the_registry():
    assert tuple(RESNET_SPECS) == registry.RESNETS
    assert set(registry.RESNETS) < set(registry.BACKBONES)
    assert NORMS is registry.NORMS
    assert all(norm_layer(name) for name in registry.NORMS)
    assert set(CAFFE_BACKBONES) <= set(registry.RESNETS)
    assert tuple(FACTORIES) == tuple(NAMED_MODELS)
    for backbone, head, _ in NAMED_MODELS.values():
        assert backbone in registry.BACKBONES and head in registry.HEADS


def test_cli_help_lists_the_registry_names(capsys):
    from lightning_deeplab.commands.cli import DeepLabCLI

    with pytest.raises(SystemExit):
        DeepLabCLI(
            args=[
                "fit",
                "--model.model",
                "lightning_deeplab.models.DeepLabV2",
                "--model.model.help",
                "lightning_deeplab.models.DeepLabV2",
            ]
        )
    out = capsys.readouterr().out
    for names in (registry.BACKBONES, tuple(registry.HEADS), registry.STYLES, registry.NORMS):
        assert "{" + ",".join(names) + "}" in out


@pytest.mark.parametrize("name", list(NAMED_MODELS))
def test_factories_build_the_named_networks(name):
    backbone, head, msc_scales = NAMED_MODELS[name]
    with torch.device("meta"):
        model = FACTORIES[name](num_classes=7, style="pytorch")
    assert (model.backbone_name, model.head_name, model.msc_scales, model.num_classes) == (
        backbone,
        head,
        msc_scales,
        7,
    )
    assert model.style == "pytorch"
    assert "pretrained" not in inspect.signature(DeepLabV2).parameters  # weights: load_pretrained()
