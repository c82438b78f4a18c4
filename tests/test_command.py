"""The `deeplab` entry point: help without torch or Lightning, one-line user errors with exit
status 2, no abbreviated options, and output without the project's own warnings."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import warnings

import pytest

from lightning_deeplab.commands.main import EXTRA_COMMANDS, TRACEBACK_ENV, TRAINER_COMMANDS, USAGE_ERROR, main
from tiny_run import REPO, tiny_args

HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "albumentations")


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Runs `python -X importtime ARGS` and returns the result and every module it imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args], cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120
    )
    modules = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    return result, modules


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-m", "lightning_deeplab.commands.main", "--help"], "convert-caffe"),
        (["-m", "lightning_deeplab.commands.main", "convert-caffe", "--help"], "caffemodel"),
        (["-m", "lightning_deeplab.data.sbd", "--help"], "--sbd"),
    ],
)
def test_help_imports_neither_torch_nor_lightning(args, expected):
    result, modules = imported_modules(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
    assert "lightning_deeplab" in modules  # the listing is real
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, heavy[:10]


def test_console_script_is_the_light_entry_point():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["deeplab"] == "lightning_deeplab.commands.main:main"
    # the SPDX form: setuptools warns about the table form
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").is_file()


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in [*TRAINER_COMMANDS, *EXTRA_COMMANDS]:
        assert f"  {name} " in out


def test_an_unknown_command_is_one_error(capsys):
    assert main(["fitt"]) == USAGE_ERROR
    assert "error: unknown command 'fitt'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("synthetic"))


@pytest.mark.parametrize(
    "option", [["--model.head_lr", "0.001"], ["--model.backbon", "resnet34"], ["--trainer.max_step", "3"]]
)
def test_abbreviated_options_are_refused(option, data_root, tmp_path, capsys):
    args = tiny_args(data_root, str(tmp_path / "run"), *option, "--print_config")
    with pytest.raises(SystemExit) as stop:
        main(["fit", *args])
    assert stop.value.code == USAGE_ERROR
    assert f"unrecognized arguments: {option[0]}" in capsys.readouterr().err


def test_a_missing_checkpoint_is_one_error_before_data_and_logger(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    data, run = tmp_path / "data", tmp_path / "run"
    args = ["validate", *tiny_args(str(data), str(run), "--ckpt_path", str(tmp_path / "none.ckpt"))]
    assert main(args) == USAGE_ERROR
    err = capsys.readouterr().err
    assert f"error: --ckpt_path {tmp_path / 'none.ckpt'}: no such checkpoint file" in err
    assert "Traceback" not in err
    assert not data.exists() and not (run / "wandb").exists()  # nothing generated, no run started

    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(FileNotFoundError, match="none.ckpt"):
        main(args)


@pytest.mark.slow
def test_validate_and_predict_print_no_lightning_table_and_no_callback_warning(data_root, tmp_path, capsys):
    run = str(tmp_path / "run")
    args = tiny_args(data_root, run, "--model.eval_crf", "false", "--trainer.logger", "false")
    assert main(["fit", *args, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"]) == 0
    ckpt = os.path.join(run, "checkpoints", "last.ckpt")
    capsys.readouterr()
    assert main(["validate", *args, "--ckpt_path", ckpt]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out  # the project's table
    assert "Validate metric" not in out  # Lightning's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["predict", *args, "--ckpt_path", ckpt]) == 0
    assert not [w for w in caught if "callbacks used to create the checkpoint" in str(w.message)]
    assert not [w for w in caught if "args parameter is intended" in str(w.message)]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--trainer.max_stepz", "3"], "error: unrecognized arguments: --trainer.max_stepz 3"),
        (
            ["--trainer.max_steps", "abc"],
            "error: Parser key \"trainer.max_steps\": Expected a <class 'int'>. Got value: abc",
        ),
    ],
)
def test_a_configuration_error_is_one_line_and_a_pointer_to_help(extra, expected, data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", *tiny_args(data_root, str(tmp_path / "run"), *extra)])
    assert stop.value.code == USAGE_ERROR
    assert capsys.readouterr().err.splitlines() == [expected, "(`deeplab fit --help` lists the options)"]


def test_a_broken_yaml_file_is_named_with_its_line(data_root, tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_steps: 3\n  limit_val_batches: [1\n  devices: 1\n")
    with pytest.raises(SystemExit) as stop:
        main(["fit", *tiny_args(data_root, str(tmp_path / "run"), "--config", str(broken))])
    assert stop.value.code == USAGE_ERROR
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"error: --config {broken}, line 4, column 10: ")
    assert "<unicode string>" not in lines[0]


def test_a_shipped_config_is_found_by_name_after_a_file_of_that_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: as after a wheel install
    for given in ("synthetic.yaml", "synthetic"):
        with pytest.raises(SystemExit) as stop:
            main(["fit", "--config", given, "--data.source.root", str(tmp_path / "data"), "--print_config"])
        assert stop.value.code == 0
        assert "class_path: lightning_deeplab.data.SyntheticSource" in capsys.readouterr().out
    # a file of that name in the working folder comes first
    (tmp_path / "synthetic.yaml").write_text(
        (REPO / "configs" / "synthetic.yaml").read_text().replace("max_steps: 300", "max_steps: 7")
    )
    with pytest.raises(SystemExit):
        main(["fit", "--config", "synthetic.yaml", "--print_config"])
    assert "max_steps: 7" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", "synthetik.yaml"])
    err = capsys.readouterr().err
    assert stop.value.code == USAGE_ERROR
    assert "error: --config synthetik.yaml: no such file, and no shipped config of that name (shipped: " in err
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    listed = out.split("shipped configs (--config NAME, when there is no file NAME here):\n")[1]
    shipped = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert [line.strip() for line in listed.splitlines()[: len(shipped)]] == shipped


def test_data_errors_come_before_the_run_folder_and_the_logger(data_root, tmp_path, capsys, monkeypatch):
    from lightning_deeplab.data.synthetic import generate_synthetic_voc

    monkeypatch.setenv("WANDB_MODE", "offline")
    empty, run = tmp_path / "empty", tmp_path / "run"
    empty.mkdir()
    voc = generate_synthetic_voc(tmp_path / "voc", num_train=4, num_val=2, image_size=(32, 32))
    for root, extra, expected in [
        (empty, [], f"error: no VOC 2012 tree under {empty}"),
        (tmp_path / "missing", [], f"error: VOC data root {tmp_path / 'missing'} does not exist"),
        (voc, ["--data.train_split", "trian"], "error: split list"),
    ]:
        args = tiny_args(str(root), str(run), "--data.source", "VOCSource", *extra)
        assert main(["fit", *args]) == USAGE_ERROR
        err = capsys.readouterr().err
        assert expected in err, err[-1000:]
        assert not run.exists()  # no run folder, lock file or wandb run
