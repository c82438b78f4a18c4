"""pydensecrf's `utils`: unary energies from probabilities or labels, and pairwise features
of images and volumes of any dimension, with pydensecrf's shapes and dtypes (float32)."""

from __future__ import annotations

import logging
import numbers

import numpy as np
from ..crf.values import is_integer

_log = logging.getLogger(__name__)


def unary_from_softmax(sm, scale=None, clip=1e-5) -> np.ndarray:
    """-log of class probabilities sm [n_labels, *shape] as [n_labels, N] float32; with
    `scale` in (0, 1] the probabilities are first mixed with the uniform distribution
    (scale * sm + (1 - scale) / n_labels), and with `clip` clamped to [clip, 1]."""
    sm = np.asarray(sm)
    if sm.ndim < 2 or sm.shape[0] < 1:
        raise ValueError(f"sm must be [n_labels, ...] probabilities, got shape {sm.shape}")
    labels = sm.shape[0]
    if scale is not None:
        if not 0 < scale <= 1:
            raise ValueError(f"scale must lie in (0, 1], got {scale}")
        sm = scale * sm + (1 - scale) * (np.ones(sm.shape) / labels)
    if clip is not None:
        sm = np.clip(sm, clip, 1.0)
    return -np.log(sm).reshape([labels, -1]).astype(np.float32)


def unary_from_labels(labels, n_labels, gt_prob, zero_unsure=True) -> np.ndarray:
    """Unary [n_labels, N] float32 of a label map believed with probability `gt_prob` (the
    other labels share the rest). With `zero_unsure`, label 0 means "unknown" (uniform) and
    labels 1..n_labels map to classes 0..n_labels-1."""
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must lie in (0, 1), got {gt_prob}")
    if not is_integer(n_labels) or n_labels < 2:
        raise ValueError(f"n_labels must be an int >= 2, got {n_labels!r}")
    flat = np.asarray(labels).reshape(-1)
    if flat.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got dtype {flat.dtype}")
    highest = n_labels if zero_unsure else n_labels - 1
    if flat.size and (flat.min() < 0 or flat.max() > highest):
        raise ValueError(
            f"labels must lie in [0, {highest}] for n_labels={n_labels} and zero_unsure={zero_unsure}, "
            f"got values in [{flat.min()}, {flat.max()}]"
        )
    flat = flat.astype(np.int64)
    unary = np.full((n_labels, flat.size), -np.log((1.0 - gt_prob) / (n_labels - 1)), dtype=np.float32)
    # Set the believed label, then (with zero_unsure) overwrite the unknown pixels: order matters.
    rows = flat - 1 if zero_unsure else flat
    unary[rows, np.arange(flat.size)] = -np.log(gt_prob)
    if zero_unsure:
        unary[:, flat == 0] = -np.log(1.0 / n_labels)
    return unary


def compute_unary(labels, M, GT_PROB=0.5) -> np.ndarray:
    """Old name of `unary_from_labels` (deprecated in pydensecrf)."""
    _log.warning("compute_unary is deprecated, use unary_from_labels instead.")
    return unary_from_labels(labels, M, GT_PROB)


def softmax_to_unary(sm, GT_PROB=1) -> np.ndarray:
    """Old name of `unary_from_softmax` without clipping (deprecated in pydensecrf)."""
    _log.warning("softmax_to_unary is deprecated, use unary_from_softmax instead.")
    return unary_from_softmax(sm, None if GT_PROB == 1 else GT_PROB, clip=None)


def _check_stds(name: str, values, count: int) -> list:
    values = list(values)
    if len(values) != count:
        raise ValueError(f"{name} must have {count} entries (one per axis), got {len(values)}")
    for value in values:
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must hold finite numbers > 0, got {values}")
    return values


def _scaled_grid(sdims, shape) -> np.ndarray:
    """Index grid [len(shape), *shape] float32, axis i divided by sdims[i] (in float32)."""
    grid = np.array(np.meshgrid(*[range(size) for size in shape], indexing="ij"), dtype=np.float32)
    for axis, std in enumerate(sdims):
        grid[axis] /= std
    return grid


def create_pairwise_gaussian(sdims, shape) -> np.ndarray:
    """Position features [len(shape), N] float32 of an array of `shape` (any dimension),
    axis i divided by sdims[i]; for 2-D, (y, x) order. Pass to `addPairwiseEnergy`."""
    shape = tuple(int(size) for size in shape)
    sdims = _check_stds("sdims", sdims, len(shape))
    return _scaled_grid(sdims, shape).reshape([len(sdims), -1])


def create_pairwise_bilateral(sdims, schan, img, chdim=-1) -> np.ndarray:
    """Position features (as `create_pairwise_gaussian`) followed by the channels of `img`
    divided by `schan` (a number or one per channel): [len(sdims) + channels, N] float32.
    `chdim` is img's channel axis, or -1 for an image without one (e.g. an intensity volume)."""
    img = np.asarray(img)
    if chdim == -1:
        channels = img[np.newaxis].astype(np.float32)
    else:
        if not -img.ndim <= chdim < img.ndim:
            raise ValueError(f"chdim={chdim} is not an axis of img with shape {img.shape}")
        channels = np.moveaxis(img, chdim, 0).astype(np.float32)
    if isinstance(schan, numbers.Number):
        if not np.isfinite(schan) or schan <= 0:
            raise ValueError(f"schan must be finite and > 0, got {schan}")
        channels /= schan
    else:
        for channel, std in enumerate(_check_stds("schan", schan, channels.shape[0])):
            channels[channel] /= std
    spatial = channels.shape[1:]
    sdims = _check_stds("sdims", sdims, len(spatial))
    features = np.concatenate([_scaled_grid(sdims, spatial), channels])
    return features.reshape([features.shape[0], -1])


__all__ = [
    "compute_unary",
    "create_pairwise_bilateral",
    "create_pairwise_gaussian",
    "softmax_to_unary",
    "unary_from_labels",
    "unary_from_softmax",
]
