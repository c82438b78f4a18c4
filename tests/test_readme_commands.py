"""Every `deeplab ...` command of the README parses as written (a dry run: `--print_config`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lightning_deeplab.commands.cli import DeepLabCLI
from lightning_deeplab.commands.main import EXTRA_COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """The arguments of each `deeplab` command in the README's bash blocks (continuations joined,
    comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in ("deeplab", ".venv/bin/deeplab"):
                commands.append(words[1:])
    return commands


def test_the_readme_has_commands():
    subcommands = {words[0] for words in readme_commands()}
    assert {"fit", "validate", "predict", "crf-search", "crf", "convert-caffe"} <= subcommands


def test_the_readme_lists_every_config_and_composes_them():
    table = re.findall(r"^\| `configs/([^`]+)` \|", (REPO / "README.md").read_text(), re.M)
    assert sorted(table) == sorted(path.name for path in (REPO / "configs").glob("*.yaml"))
    # a base and overlays: commands that give several --config files, every one of them shipped
    assert max(words.count("--config") for words in readme_commands()) >= 4
    for words in readme_commands():
        given = [words[i + 1] for i, word in enumerate(words) if word == "--config"]
        assert all((REPO / path).is_file() for path in given), given


@pytest.mark.parametrize("words", readme_commands(), ids=" ".join)
def test_readme_command_parses(words, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the README's paths are relative to the checkout
    command, args = words[0], words[1:]
    if command in EXTRA_COMMANDS and command != "crf-search":  # own parsers: every option is theirs
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        usage = capsys.readouterr().out
        assert all(word in usage for word in args if word.startswith("--"))
        return
    if command == "crf-search":
        from lightning_deeplab.commands.crf_search import _parser

        _, rest = _parser().parse_known_args(args)
        cli = lambda: DeepLabCLI(args=[*rest, "--print_config"], run=False)  # noqa: E731
    else:
        cli = lambda: DeepLabCLI(args=[command, *args, *([] if "--print_config" in args else ["--print_config"])])  # noqa: E731
    with pytest.raises(SystemExit) as exit_info:
        cli()
    assert exit_info.value.code == 0, capsys.readouterr().err
