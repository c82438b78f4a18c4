"""A constructor's arguments as data: recorded as given (what rebuilds the same part from a
checkpoint) and checked against the choices its ``Literal`` annotations name, the same
annotations the command line's parser enforces, so the choices are written once."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal


def given_arguments(constructor: Callable, local_values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of ``constructor`` read from its ``locals()`` at entry, as plain values
    (tuples become lists, as YAML writes them)."""
    names = [name for name in inspect.signature(constructor).parameters if name != "self"]
    return {name: _plain(local_values[name]) for name in names}


def part_config(part: Any) -> dict[str, Any]:
    """``class_path``/``init_args`` of a part (what LightningCLI saves for a part it built from
    the YAML), so a checkpoint says how to rebuild it: the part's own ``init_args``."""
    cls = type(part)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(getattr(part, "init_args", {}))}


def check_choices(constructor: Callable, arguments: Mapping[str, Any]) -> None:
    """Every argument annotated ``Literal[...]`` (or ``Optional[Literal[...]]``) must be one of
    its choices: a TypeError for a value that is not a string, a ValueError naming the valid
    ones otherwise."""
    hints = typing.get_type_hints(constructor)
    for name, value in arguments.items():
        choices = _literal_choices(hints.get(name))
        if choices is None or (value is None and _optional(hints[name])):
            continue
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, one of {', '.join(choices)}; got {value!r}")
        if value not in choices:
            raise ValueError(f"unknown {name} {value!r}; valid names: {', '.join(choices)}")


def _literal_choices(hint: Any) -> tuple[str, ...] | None:
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return None


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
