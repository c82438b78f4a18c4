import numpy as np
import pytest

from lightning_deeplab.constants import IGNORE_INDEX, PAD_VALUE
from lightning_deeplab.data import build_train_transform
from lightning_deeplab.data.transforms import seed_transform


def column_ramp(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Image whose red channel is the column index, mask the column index // 4: any geometric
    step applied to one and not the other (or differently) breaks ``mask == red // 4``."""
    x = np.broadcast_to(np.arange(width, dtype=np.float32), (height, width))
    image = np.stack([x, np.full_like(x, 50), np.full_like(x, 60)], axis=-1)
    return image, (x // 4).astype(np.uint8)


def test_output_is_a_crop_of_the_requested_size():
    transform = build_train_transform(48, scale_range=(0.5, 1.5))
    seed_transform(transform, 0)
    for h, w in [(120, 160), (20, 30), (48, 48)]:
        image, mask = column_ramp(h, w)
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (48, 48, 3) and out["image"].dtype == np.float32
        assert out["mask"].shape == (48, 48) and out["mask"].dtype == np.uint8


def test_padding_is_pad_value_and_the_ignore_index():
    transform = build_train_transform(64, scale_range=(1.0, 1.0), hflip=False)
    image = np.full((20, 30, 3), 10.0, np.float32)
    mask = np.ones((20, 30), np.uint8)
    out = transform(image=image, mask=mask)
    # scale 1 and a crop as large as the padded image: the image stays at the top-left
    assert np.array_equal(out["mask"][:20, :30], mask)
    assert np.all(out["image"][:20, :30] == 10.0)
    pad = np.ones((64, 64), bool)
    pad[:20, :30] = False
    assert np.all(out["mask"][pad] == IGNORE_INDEX)
    assert np.all(out["image"][pad] == PAD_VALUE)


def test_flip_is_applied_to_image_and_mask_together():
    transform = build_train_transform(40, scale_range=(1.0, 1.0), hflip=True)
    seed_transform(transform, 1)
    image, mask = column_ramp(60, 64)
    flipped = 0
    for _ in range(20):
        out = transform(image=image, mask=mask)
        assert np.array_equal(out["mask"], (out["image"][..., 0] // 4).astype(np.uint8))
        step = np.diff(out["image"][0, :, 0])
        assert np.all(step == 1) or np.all(step == -1)
        flipped += bool(np.all(step == -1))
    assert 0 < flipped < 20  # both outcomes occur


def test_without_hflip_nothing_is_mirrored():
    transform = build_train_transform(40, scale_range=(1.0, 1.0), hflip=False)
    image, mask = column_ramp(60, 64)
    for _ in range(10):
        assert np.all(np.diff(transform(image=image, mask=mask)["image"][0, :, 0]) == 1)


def test_scale_stays_in_the_range_and_masks_stay_nearest():
    transform = build_train_transform(100, scale_range=(0.5, 1.5), hflip=False)
    seed_transform(transform, 2)
    image = np.full((40, 40, 3), 200.0, np.float32)
    mask = np.full((40, 40), 3, np.uint8)
    sides = []
    for _ in range(40):
        out = transform(image=image, mask=mask)
        assert set(np.unique(out["mask"]).tolist()) <= {3, IGNORE_INDEX}  # no blended labels
        rows, cols = np.nonzero(out["mask"] == 3)
        sides.append(rows.max() + 1)  # content sits at the top-left corner (crop = padded size)
        assert cols.max() + 1 == rows.max() + 1  # isotropic
    sides = np.array(sides)
    assert sides.min() >= 20 and sides.max() <= 60
    assert sides.min() < 28 and sides.max() > 52  # the whole range is used


def test_seeding_makes_the_stream_repeatable():
    image, mask = column_ramp(90, 90)
    outs = []
    for _ in range(2):
        transform = build_train_transform(32)
        seed_transform(transform, 123)
        outs.append([transform(image=image, mask=mask)["image"] for _ in range(3)])
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop_size": 0}, "crop_size"),
        ({"crop_size": 32.0}, "crop_size"),
        ({"crop_size": 32, "scale_range": (1.5, 0.5)}, "scale_range"),
        ({"crop_size": 32, "scale_range": (0.0, 1.0)}, "scale_range"),
        ({"crop_size": 32, "scale_range": (1.0,)}, "scale_range"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_train_transform(**kwargs)
