"""The shipped configs: a base per network plus overlays, composed as LightningCLI composes several
`--config` files. Each composition gives the configuration its former single file gave, and every
command a config's header shows parses as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from lightning_deeplab.commands.cli import DeepLabCLI

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
BEFORE = yaml.safe_load((Path(__file__).parent / "configs_before_split.yaml").read_text())

RESNET, VOC, CRFRNN = "deeplabv2_resnet101.yaml", "voc12aug.yaml", "crfrnn.yaml"
#: each former config: the files that replace it, in order
COMPOSITIONS = {
    "deeplabv2_resnet101_voc12aug.yaml": [RESNET, VOC],
    "deeplabv2_resnet101_cityscapes.yaml": [RESNET, "cityscapes.yaml"],
    "deeplabv2_resnet101_cocostuff164k.yaml": [RESNET, "cocostuff164k.yaml"],
    "deeplabv2_vgg16-largefov_voc12aug.yaml": [RESNET, VOC, "vgg16-largefov.yaml"],
    "deeplabv2_resnet101_voc12aug_crfrnn.yaml": [RESNET, VOC, CRFRNN, "voc12aug_crfrnn.yaml"],
    "synthetic.yaml": ["synthetic.yaml"],
    "synthetic_crfrnn.yaml": ["synthetic.yaml", CRFRNN, "synthetic_crfrnn.yaml"],
}
#: what the split changed on purpose: a dataset overlay names its run folder after the dataset
RENAMED = {
    "deeplabv2_resnet101_voc12aug.yaml": {"trainer.default_root_dir": "outputs/voc12aug"},
    "deeplabv2_resnet101_cityscapes.yaml": {"trainer.default_root_dir": "outputs/cityscapes"},
    "deeplabv2_resnet101_cocostuff164k.yaml": {"trainer.default_root_dir": "outputs/cocostuff164k"},
    "deeplabv2_vgg16-largefov_voc12aug.yaml": {"trainer.default_root_dir": "outputs/vgg16-largefov_voc12aug"},
    "deeplabv2_resnet101_voc12aug_crfrnn.yaml": {
        "trainer.default_root_dir": "outputs/voc12aug_crfrnn",
        "model.pretrained": "outputs/voc12aug/checkpoints/last.ckpt",  # the first stage's folder
    },
}


def print_config(args: list[str], capsys) -> dict:
    """The configuration `deeplab <args> --print_config` prints, as a dict."""
    with pytest.raises(SystemExit) as exit_info:
        DeepLabCLI(args=[*args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return yaml.safe_load(captured.out)


def config_args(*names: str) -> list[str]:
    return [word for name in names for word in ("--config", str(CONFIGS / name))]


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_the_compositions_cover_every_shipped_config():
    assert set(COMPOSITIONS) == set(BEFORE)
    used = {name for names in COMPOSITIONS.values() for name in names}
    assert used == {path.name for path in CONFIGS.glob("*.yaml")}


@pytest.mark.parametrize("former", sorted(COMPOSITIONS))
def test_a_composition_parses_as_its_former_file(former, tmp_path, capsys):
    old = tmp_path / former
    old.write_text(yaml.safe_dump(BEFORE[former]))
    expected = flatten(print_config(["fit", "--config", str(old)], capsys))
    for key, value in RENAMED.get(former, {}).items():
        assert expected[key] != value  # a rename that is no longer one is dropped from RENAMED
        expected[key] = value
    assert flatten(print_config(["fit", *config_args(*COMPOSITIONS[former])], capsys)) == expected


def header_commands() -> list[tuple[str, list[str]]]:
    """The `deeplab ...` commands of every config's header comment."""
    commands = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        header = re.match(r"(?:#.*\n)*", path.read_text()).group(0)
        for line in header.splitlines():
            if line.lstrip("# ").startswith("deeplab "):
                commands.append((path.name, shlex.split(line.lstrip("# "))[1:]))
    return commands


@pytest.mark.parametrize("name,words", header_commands(), ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_a_header_command_parses_as_written(name, words, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the headers' paths are relative to the checkout
    config = print_config(words, capsys)
    assert config["model"]["model"]["init_args"]["backbone"] and config["data"]["source"]["class_path"]


def test_every_config_shows_the_command_that_uses_it():
    named = {name for name, words in header_commands() if f"configs/{name}" in words}
    assert named == {path.name for path in CONFIGS.glob("*.yaml")}


# ------------------------------------------------------ how jsonargparse merges several --config
def test_a_later_config_merges_into_parts_and_replaces_lists(tmp_path, capsys):
    first, second, third = tmp_path / "first.yaml", tmp_path / "second.yaml", tmp_path / "third.yaml"
    first.write_text(
        "trainer:\n  callbacks:\n  - class_path: pytorch_lightning.callbacks.LearningRateMonitor\n"
        "model:\n  crf:\n    class_path: lightning_deeplab.crf.DenseCRF\n    init_args: {pos_w: 2, bi_w: 5}\n"
        "  inference: {mode: whole, pad_to: 513}\n"
    )
    second.write_text(
        "trainer:\n  callbacks:\n  - class_path: pytorch_lightning.callbacks.ModelSummary\n"
        "model:\n  crf:\n    init_args: {bi_w: 7}\n  inference: {flip: true}\n"
    )
    third.write_text("trainer:\n  callbacks+:\n  - class_path: pytorch_lightning.callbacks.LearningRateMonitor\n")
    base = ["fit", *config_args("synthetic.yaml"), "--config", str(first), "--config", str(second)]
    config = print_config(base, capsys)
    crf = config["model"]["crf"]
    # a part's class_path stays and its init_args merge key by key; so do a dataclass's fields
    assert crf["class_path"] == "lightning_deeplab.crf.DenseCRF"
    assert (crf["init_args"]["pos_w"], crf["init_args"]["bi_w"]) == (2.0, 7.0)
    assert config["model"]["inference"]["pad_to"] == 513 and config["model"]["inference"]["flip"] is True
    # a list is replaced whole: only the later file's callback is left ...
    assert [cb["class_path"] for cb in config["trainer"]["callbacks"]] == ["pytorch_lightning.callbacks.ModelSummary"]
    # ... unless the later file appends to it with `key+:`
    config = print_config([*base, "--config", str(third)], capsys)
    appended = [cb["class_path"].rsplit(".", 1)[1] for cb in config["trainer"]["callbacks"]]
    assert appended == ["ModelSummary", "LearningRateMonitor"]
