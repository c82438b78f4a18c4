"""The `deeplab` command: lists the commands and hands each to its own parser.

This module imports neither torch nor Lightning, so `deeplab --help` and the help of the light
commands answer at once; only fit/validate/test/predict import the LightningCLI (cli.py).
User errors (a bad path, a wrong value) end with one ``error: ...`` line and exit status 2;
``DEEPLAB_TRACEBACK=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import Callable, Optional, Sequence

from .registry import EXTRA_COMMANDS, TRAINER_COMMANDS, command_list

#: Set to 1 to see the traceback of a user error.
TRACEBACK_ENV = "DEEPLAB_TRACEBACK"

#: Exit status of a command stopped by a user error (argparse's).
USAGE_ERROR = 2


def usage() -> str:
    lines = [
        "usage: deeplab <command> [options]   (deeplab <command> --help for its options)",
        "",
        "DeepLab v2: train, evaluate and predict with a YAML config (--config FILE).",
        "",
        "commands:",
        *command_list(),
        "",
        f"Set {TRACEBACK_ENV}=1 to see the traceback of an error.",
    ]
    return "\n".join(lines)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """What a user can cause by what they typed: a missing or unreadable file, a wrong value,
    a setting Lightning refuses. Anything else is a bug and keeps its traceback."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    return (OSError, ValueError, TypeError, MisconfigurationException)


def _reporting_user_errors(run: Callable[[], int]) -> int:
    """``run()``'s status; a user error it raises becomes one ``error:`` line and status 2 (the
    traceback with DEEPLAB_TRACEBACK=1). Parse errors, --help and a SIGTERM'd fit (143) leave as
    SystemExit with their status."""
    try:
        return run()
    except Exception as error:
        if not isinstance(error, _user_error_types()) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR


def _run_trainer_command(argv: list[str], from_sys_argv: bool) -> int:
    from .cli import DeepLabCLI

    DeepLabCLI(args=None if from_sys_argv else argv)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs `deeplab ARGV...` and returns its exit status (the console script exits with it)."""
    from_sys_argv = argv is None
    # albumentations checks for updates over the network on import unless told not to
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else USAGE_ERROR
    name = args[0]
    if name in EXTRA_COMMANDS:
        return _reporting_user_errors(lambda: int(import_module(EXTRA_COMMANDS[name][0]).main(args[1:]) or 0))
    if name in TRAINER_COMMANDS or name.startswith("-"):
        # options before the command (e.g. --config) are LightningCLI's to parse
        return _reporting_user_errors(lambda: _run_trainer_command(args, from_sys_argv))
    print(usage(), file=sys.stderr)
    print(
        f"error: unknown command {name!r} (one of: {', '.join([*TRAINER_COMMANDS, *EXTRA_COMMANDS])})", file=sys.stderr
    )
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
