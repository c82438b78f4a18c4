"""The ``--device`` option of the commands that run the CRF outside a Trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the commands' --help answers without torch
    import torch

#: What ``--device`` says about itself in a command's help.
DEVICE_HELP = "'auto' (the GPU when there is one), 'cpu', 'cuda' or 'cuda:N' (default: auto)"


def resolve_device(text: str) -> "torch.device":
    """The device ``--device text`` names; a ValueError naming the option for anything this
    machine cannot run on."""
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise ValueError(f"--device {text!r}: {err}") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: no CUDA device is available (use --device cpu or auto)")
    return device
