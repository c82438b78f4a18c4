"""The argument parser of `deeplab fit|validate|test|predict`: a configuration error is one
``error:`` line and a pointer to ``--help``, not the ~80-line usage of every option first."""

from __future__ import annotations

import os
import sys
from typing import NoReturn, Optional

from pytorch_lightning.cli import LightningArgumentParser

#: jsonargparse's switch that raises parse errors instead of exiting (its debug mode).
JSONARGPARSE_DEBUG_ENV = "JSONARGPARSE_DEBUG"


def one_line(message: str) -> str:
    """``message`` with its line breaks and indentation (jsonargparse nests its reasons) as single spaces."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def help_hint(prog: str) -> str:
    """Where the options of the parser named ``prog`` are listed (a subcommand's prog is
    ``"deeplab [options] fit"``; the main parser's, ``"deeplab"``, lists the commands)."""
    if " " not in prog:
        return f"(`{prog} <command> --help` lists the options of a command)"
    return f"(`{prog.replace(' [options]', '')} --help` lists the options)"


class DeepLabArgumentParser(LightningArgumentParser):
    """LightningCLI's parser; a parse error prints ``error: MESSAGE`` (one line) and where the
    options are listed, and exits with status 2."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get(JSONARGPARSE_DEBUG_ENV):
            super().error(message, ex)  # raises: the caller (or the debugging user) wants the exception
        sys.stderr.write(f"error: {one_line(message)}\n{help_hint(self.prog)}\n")
        self.exit(2)
