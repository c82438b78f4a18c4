"""The ``--config`` files of `deeplab fit|validate|test|predict`: the configs the package ships,
taken by name, and YAML syntax errors that name the file.

The path form comes first: ``--config synthetic.yaml`` reads ``./synthetic.yaml`` when there is
one, else the shipped config of that name (``.yaml`` may be left out), so the configs work from
a wheel install as from a checkout.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from ..crf._build import packaged_folder

#: The option names of LightningCLI's config file argument.
CONFIG_OPTIONS = ("--config", "-c")
#: Endings of a config value that names a file (others may be YAML text).
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def shipped_configs() -> list[str]:
    """The file names of the configs the package ships (none when it ships no folder)."""
    try:
        folder = packaged_folder("configs")
    except FileNotFoundError:
        return []
    return sorted(name for name in os.listdir(folder) if name.endswith(".yaml"))


def shipped_configs_help() -> str:
    """The shipped configs, one per line, for a command's help."""
    names = shipped_configs()
    if not names:
        return ""
    return "shipped configs (--config NAME, when there is no file NAME here):\n" + "\n".join(f"  {n}" for n in names)


def resolve_config(value: str) -> str:
    """``value`` when it is a path that exists (or no shipped config's name), else the path of
    the shipped config it names."""
    if os.path.exists(value):
        return value
    names = shipped_configs()
    for name in (value, f"{value}.yaml"):
        if name in names:
            return os.path.join(packaged_folder("configs"), name)
    return value


def _config_positions(args: Sequence[str]) -> list[tuple[int, Optional[str]]]:
    """``(index, prefix)`` of every config value in ``args``: the value is ``args[index]``,
    after ``prefix`` (``--config=``) when given in one word."""
    positions = []
    for index, arg in enumerate(args):
        if arg in CONFIG_OPTIONS and index + 1 < len(args):
            positions.append((index + 1, None))
        elif arg.startswith("--config="):
            positions.append((index, "--config="))
    return positions


def with_shipped_configs(args: Sequence[str]) -> list[str]:
    """``args`` with every ``--config NAME`` of a shipped config replaced by its path."""
    out = list(args)
    for index, prefix in _config_positions(out):
        value = out[index][len(prefix or "") :]
        out[index] = (prefix or "") + resolve_config(value)
    return out


def config_values(args: Sequence[str]) -> list[str]:
    """The values given as ``--config`` in ``args`` (paths, or YAML text)."""
    return [args[index][len(prefix or "") :] for index, prefix in _config_positions(args)]


def config_problem(value: str) -> Optional[str]:
    """What is wrong with the ``--config`` value ``value``: a file name of no file (nor shipped
    config), or a YAML file that does not parse; None when nothing is (or it is YAML text)."""
    if os.path.isfile(value):
        return yaml_problem(value)
    if value.endswith(CONFIG_SUFFIXES):
        names = ", ".join(shipped_configs()) or "none"
        return f"--config {value}: no such file, and no shipped config of that name (shipped: {names})"
    return None


def yaml_problem(path: str) -> Optional[str]:
    """Where and why the YAML file ``path`` does not parse (``--config FILE, line L, column C:
    ...``), or None when it does."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            yaml.safe_load(handle)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context = ""
        if err.context and err.context_mark is not None:
            context = f" ({err.context} on line {err.context_mark.line + 1})"
        return f"--config {path}{where}: {err.problem or err.context}{context}"
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        return f"--config {path} is not a YAML file: {err}"
    return None
