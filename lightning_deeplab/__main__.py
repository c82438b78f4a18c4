"""``python -m lightning_deeplab <command> ...`` is the ``deeplab`` command (e.g. under torchrun)."""

import sys

from .commands.main import main

sys.exit(main())
