import pytest
import torch

from lightning_deeplab.constants import IGNORE_INDEX, PAD_VALUE
from lightning_deeplab.data import pad_collate


def sample(name: str, h: int, w: int, value: float, cls: int) -> dict:
    return {"image": torch.full((3, h, w), value), "mask": torch.full((h, w), cls, dtype=torch.long), "name": name}


def test_batch_is_padded_to_the_largest_sample():
    batch = pad_collate([sample("a", 3, 4, 1.0, 2), sample("b", 5, 2, 7.0, 0)])
    assert batch["image"].shape == (2, 3, 5, 4) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 5, 4) and batch["mask"].dtype == torch.int64
    assert batch["name"] == ["a", "b"]
    # a: 3x4 content, two padded rows below
    assert torch.all(batch["image"][0, :, :3, :] == 1.0) and torch.all(batch["mask"][0, :3] == 2)
    assert torch.all(batch["image"][0, :, 3:, :] == PAD_VALUE)
    assert torch.all(batch["mask"][0, 3:] == IGNORE_INDEX)
    # b: 5x2 content, two padded columns on the right
    assert torch.all(batch["image"][1, :, :, :2] == 7.0) and torch.all(batch["mask"][1, :, :2] == 0)
    assert torch.all(batch["image"][1, :, :, 2:] == PAD_VALUE)
    assert torch.all(batch["mask"][1, :, 2:] == IGNORE_INDEX)


def test_equal_sizes_are_just_stacked():
    samples = [sample("a", 4, 4, 1.0, 1), sample("b", 4, 4, 2.0, 2)]
    batch = pad_collate(samples)
    assert torch.equal(batch["image"], torch.stack([s["image"] for s in samples]))
    assert torch.equal(batch["mask"], torch.stack([s["mask"] for s in samples]))


def test_image_and_mask_of_different_sizes_are_refused():
    bad = {"image": torch.zeros(3, 4, 4), "mask": torch.zeros(4, 5, dtype=torch.long), "name": "odd"}
    with pytest.raises(ValueError, match="'odd'"):
        pad_collate([bad])
