"""The training augmentation of DeepLab v2, as an albumentations pipeline.

Random scale (image bilinear, mask nearest) -> pad to the crop (image with PAD_VALUE, which the
network's normalisation turns into its mean colour; mask with the ignore index; bottom/right like
the original data layer) -> random crop -> horizontal flip. No normalisation here: the model
normalises its own input, so images stay RGB 0-255.
"""

from __future__ import annotations

import random
from typing import Sequence

import albumentations as A
import cv2
import numpy as np

from ..constants import IGNORE_INDEX, PAD_VALUE
from ..crf.values import is_integer


def check_scale_range(scale_range: Sequence[float]) -> tuple[float, float]:
    """Validate ``(low, high)`` with ``0 < low <= high`` and return it as floats."""
    if len(scale_range) != 2:
        raise ValueError(f"scale_range must be (low, high), got {scale_range!r}")
    low, high = float(scale_range[0]), float(scale_range[1])
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
    return low, high


def build_train_transform(
    crop_size: int,
    scale_range: Sequence[float] = (0.5, 1.5),
    hflip: bool = True,
) -> A.Compose:
    """The paper's training augmentation, producing ``crop_size`` x ``crop_size`` samples.

    Call it as ``transform(image=float32 HxWx3, mask=uint8 HxW)`` (float, so the padding can
    hold PAD_VALUE, a value no 0-255 pixel has).
    """
    if not is_integer(crop_size) or crop_size < 1:
        raise ValueError(f"crop_size must be a positive int, got {crop_size!r}")
    low, high = check_scale_range(scale_range)
    steps: list = [
        A.RandomScale(
            scale_limit=(low - 1.0, high - 1.0),  # albumentations adds 1 to the limits
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            p=1.0,
        ),
        A.PadIfNeeded(
            min_height=crop_size,
            min_width=crop_size,
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=(PAD_VALUE,) * 3,
            fill_mask=IGNORE_INDEX,
        ),
        A.RandomCrop(height=crop_size, width=crop_size),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    # strict: a misspelt or 1.x-only argument is an error, not a silently ignored warning
    transform = A.Compose(steps, strict=True)
    seed_transform(transform, None)
    return transform


def seed_transform(transform: A.Compose, seed: int | None) -> None:
    """Give every step of ``transform`` one shared random stream seeded with ``seed``.

    albumentations seeds each step with the same seed, so the steps' draws would be correlated
    (e.g. the flip decided by the same number as the scale); one shared stream avoids that.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
