"""Batching samples of different sizes: pad to the largest, with values that never count."""

from __future__ import annotations

from typing import Sequence

import torch

from ..constants import IGNORE_INDEX, PAD_VALUE


def pad_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack [3, h, w] images into [B, 3, H, W] (the largest size), padded at the bottom/right
    with PAD_VALUE, which the network's normalisation turns into its mean colour."""
    height = max((image.shape[-2] for image in images), default=0)
    width = max((image.shape[-1] for image in images), default=0)
    dtype = images[0].dtype if images else torch.float32
    batch = torch.full((len(images), 3, height, width), PAD_VALUE, dtype=dtype)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[-2], : image.shape[-1]] = image
    return batch


def pad_collate(samples: Sequence[dict]) -> dict:
    """Stack samples into ``{"image": [B, 3, H, W], "mask": [B, H, W], "name": [str]}``.

    Images smaller than the batch's largest are padded at the bottom/right, images with
    PAD_VALUE (see :func:`pad_images`) and masks with the ignore index, so the padding is left
    out of the loss and the metrics.
    """
    if not samples:
        raise ValueError("pad_collate needs at least one sample")
    for sample in samples:
        image, mask = sample["image"], sample["mask"]
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"sample {sample['name']!r}: image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size"
            )
    images = pad_images([s["image"] for s in samples])
    masks = torch.full((len(samples), *images.shape[-2:]), IGNORE_INDEX, dtype=torch.long)
    for i, sample in enumerate(samples):
        masks[i, : sample["mask"].shape[-2], : sample["mask"].shape[-1]] = sample["mask"]
    return {"image": images, "mask": masks, "name": [s["name"] for s in samples]}
