"""Fully connected (dense) CRF: permutohedral-lattice mean field in C++ and CUDA, as a
batched, differentiable torch layer. Imports nothing but torch; the compiled operators are
loaded at their first use.

    from lightning_deeplab.crf import DenseCRF, unary_from_softmax
    q = DenseCRF()(unary_from_softmax(probs), image)   # probs [B, C, H, W], image uint8 [B, 3, H, W]

Any Gaussian kernels, on images or volumes (features of up to MAX_FEATURE_DIM = 16 dimensions):

    from lightning_deeplab.crf import gaussian_crf, position_features_nd, bilateral_features_nd
    q = gaussian_crf(unary, [                      # unary [B, C, D, H, W]
        (position_features_nd(unary.shape[2:], std=3, spacing=(2.0, 1.0, 1.0)), 3.0),
        (bilateral_features_nd(volume, std=20, channel_std=10), 5.0),   # volume [B, 1, D, H, W]
    ])
"""

from .features import MAX_FEATURE_DIM, bilateral_features_nd, position_features_nd
from .gaussian import PairwiseKernel, gaussian_crf
from .lattice import Lattice, build_lattice, lattice_filter, release_cached_buffers
from .layer import DenseCRF, GaussianCRF
from .mean_field import dense_crf
from .unary import unary_from_logits, unary_from_softmax

__all__ = [
    "MAX_FEATURE_DIM",
    "DenseCRF",
    "GaussianCRF",
    "Lattice",
    "PairwiseKernel",
    "bilateral_features_nd",
    "build_lattice",
    "dense_crf",
    "gaussian_crf",
    "lattice_filter",
    "position_features_nd",
    "release_cached_buffers",
    "unary_from_logits",
    "unary_from_softmax",
]
