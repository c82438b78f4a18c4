"""Batching samples of different sizes: pad to the largest, with values that never count."""
from __future__ import annotations

from typing import Sequence

import torch

from ..constants import IGNORE_INDEX, PAD_MEAN_RGB


def pad_collate(samples: Sequence[dict]) -> dict:
    """Stack samples into ``{"image": [B, 3, H, W], "mask": [B, H, W], "name": [str]}``.

    Images smaller than the batch's largest are padded at the bottom/right, images with the
    mean colour (which the model normalises to ~0) and masks with the ignore index, so the
    padding is left out of the loss and the metrics.
    """
    if not samples:
        raise ValueError("pad_collate needs at least one sample")
    height = max(s["image"].shape[-2] for s in samples)
    width = max(s["image"].shape[-1] for s in samples)
    first = samples[0]["image"]
    images = torch.empty((len(samples), 3, height, width), dtype=first.dtype)
    images[:] = torch.tensor(PAD_MEAN_RGB, dtype=first.dtype).view(3, 1, 1)
    masks = torch.full((len(samples), height, width), IGNORE_INDEX, dtype=torch.long)
    for i, sample in enumerate(samples):
        image, mask = sample["image"], sample["mask"]
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"sample {sample['name']!r}: image {tuple(image.shape)} and mask "
                f"{tuple(mask.shape)} differ in size"
            )
        h, w = image.shape[-2:]
        images[i, :, :h, :w] = image
        masks[i, :h, :w] = mask
    return {"image": images, "mask": masks, "name": [s["name"] for s in samples]}
