"""DeepLab v2's optimiser: SGD with momentum over named parameter groups, each with its own
learning rate and weight decay, and the paper's "poly" learning-rate schedule per step."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch


def poly_lr_factor(step: int, max_steps: int, power: float = 0.9) -> float:
    """The paper's "poly" policy: lr = base * (1 - step / max_steps) ** power, 0 after the end."""
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive for the poly schedule, got {max_steps}")
    return max(0.0, 1.0 - min(step, max_steps) / max_steps) ** power


def sgd_with_poly(
    param_groups: Sequence[dict[str, Any]],
    lr: float,
    momentum: float,
    weight_decay: float,
    max_steps: float,
    power: float,
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: SGD over ``param_groups`` (dicts with ``name``,
    ``params``, ``lr``, ``weight_decay``; empty groups left out) with the poly schedule over
    ``max_steps`` optimizer steps, stepped every step."""
    groups = [group for group in param_groups if group["params"]]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if not math.isfinite(max_steps):
        raise ValueError("the poly schedule needs a finite length: set trainer.max_steps or trainer.max_epochs")
    total = int(max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: poly_lr_factor(step, total, power))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
