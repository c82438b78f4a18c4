"""Fully connected (dense) CRF: permutohedral-lattice mean field in C++ and CUDA, as a
batched, differentiable torch layer. Imports nothing but torch.

    from lightning_deeplab.crf import DenseCRF, unary_from_softmax
    q = DenseCRF()(unary_from_softmax(probs), image)   # probs [B, C, H, W], image uint8 [B, 3, H, W]
"""
from .lattice import Lattice, build_lattice, lattice_filter, release_cached_buffers
from .layer import DenseCRF
from .mean_field import dense_crf
from .unary import unary_from_logits, unary_from_softmax

__all__ = [
    "DenseCRF",
    "Lattice",
    "build_lattice",
    "dense_crf",
    "lattice_filter",
    "release_cached_buffers",
    "unary_from_logits",
    "unary_from_softmax",
]
