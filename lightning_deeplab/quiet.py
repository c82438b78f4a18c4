"""Messages of the libraries underneath that are not the user's business, silenced here and
only here, each by its text (never by category or logger level: any other warning of the same
kind still shows)."""

from __future__ import annotations

import logging
import sys
import warnings

#: Lightning's advertising for its cloud services (litlogger, litmodels), logged at INFO.
LIGHTNING_TIPS = ("💡 Tip: For seamless cloud",)
#: Where Lightning's rank_zero_info logs (pytorch_lightning routes fabric's through its own).
LIGHTNING_INFO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
#: torch deprecates LeafSpec; Lightning's own pytree helper still builds one (not ours to fix).
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
#: wandb warns about a setting Lightning's WandbLogger always passes, even as None.
WANDB_ANONYMOUS = "The anonymous setting has no effect"


class DropMessages(logging.Filter):
    """Drops the log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def silence_library_noise() -> None:
    """Silences the messages above; idempotent. wandb's is silenced once wandb is imported
    (see :func:`quiet_wandb`, called where the logger is made)."""
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION)
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(LIGHTNING_TIPS))
    if "wandb" in sys.modules:
        quiet_wandb()


def quiet_wandb() -> None:
    """wandb's terminal warnings, less :data:`WANDB_ANONYMOUS` (wandb prints them itself, past
    the warnings and logging modules); idempotent."""
    import wandb

    original = wandb.termwarn
    if getattr(original, "drops", None) == WANDB_ANONYMOUS:
        return

    def termwarn(string: str, *args, **kwargs) -> None:
        if not str(string).startswith(WANDB_ANONYMOUS):
            original(string, *args, **kwargs)

    termwarn.drops = WANDB_ANONYMOUS
    wandb.termwarn = termwarn
