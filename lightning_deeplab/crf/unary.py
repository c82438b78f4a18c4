"""Unary energies for the dense CRF, from class probabilities or raw network scores."""

from __future__ import annotations

import torch

#: Probabilities are clamped to [UNARY_CLIP, 1] before the log, as pydensecrf.utils does.
UNARY_CLIP = 1e-5


def _as_scores(name: str, scores) -> torch.Tensor:
    """NumPy arrays become tensors (a copy; detected without importing numpy, which crf/ does
    not depend on), [C, H, W] (one image) with a batch dimension added."""
    if type(scores).__module__ == "numpy":
        if getattr(scores, "ndim", None) not in (3, 4, 5):
            raise ValueError(
                f"{name} must be a [C, H, W], [B, C, H, W] or [B, C, D, H, W] array, got shape {scores.shape}"
            )
        scores = torch.tensor(scores)
        if scores.dim() == 3:
            scores = scores.unsqueeze(0)
    _check_scores(name, scores)
    return scores


def _check_scores(name: str, scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {scores.dtype}")
    if scores.dim() not in (4, 5):
        raise ValueError(f"{name} must be [B, C, H, W] or [B, C, D, H, W], got shape {tuple(scores.shape)}")


def unary_from_softmax(probs, clip: float = UNARY_CLIP) -> torch.Tensor:
    """Unary energies -log(clamp(p, clip, 1)) of class probabilities probs [B, C, H, W] or
    [B, C, D, H, W] (softmax over C), as `pydensecrf.utils.unary_from_softmax` computes them. The result
    has the dtype of `probs`. A NumPy array [C, H, W] or [B, C, H, W] is accepted and gives
    a tensor [B, C, H, W] (B = 1 for [C, H, W])."""
    probs = _as_scores("probs", probs)
    if not 0.0 < clip < 1.0:
        raise ValueError(f"clip must lie in (0, 1), got {clip}")
    if probs.requires_grad and torch.is_grad_enabled():
        return -torch.log(probs.clamp(min=clip, max=1.0))
    # In place on the clamped copy: one new array (at 4000x3000x21 each is ~1 GB), same bits.
    return probs.clamp(min=clip, max=1.0).log_().neg_()


def unary_from_logits(logits) -> torch.Tensor:
    """Unary energies -log_softmax(logits) of raw class scores logits [B, C, H, W] (or
    [B, C, D, H, W]).

    Unclipped, this is the unary of the official DeepLab Caffe CRF layer (which uses the
    negated scores; the two differ by a per-pixel constant, which the CRF ignores). NumPy
    arrays are accepted as in `unary_from_softmax`."""
    logits = _as_scores("logits", logits)
    return -torch.log_softmax(logits, dim=1)
