"""The normalisation layers a backbone can be built with."""

from functools import partial
from typing import Callable

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from .registry import NORMS

#: BatchNorm epsilon of the released Caffe ResNets (and torchvision's default).
BN_EPS = 1e-5


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """Return a constructor ``f(num_features) -> module`` for the normalisation named ``norm``."""
    # partial, not a lambda: the model must stay picklable (ddp_spawn pickles it).
    layers = dict(zip(NORMS, (FrozenBatchNorm2d, nn.BatchNorm2d, nn.SyncBatchNorm)))
    if norm in layers:
        return partial(layers[norm], eps=BN_EPS)
    raise ValueError(f"unknown norm {norm!r}; valid names: {', '.join(NORMS)}")
