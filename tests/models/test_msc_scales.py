"""MSC helpers: resized input sizes and the max fusion."""

import pytest
import torch

from lightning_deeplab.models import fuse_max, scaled_size, validate_scales


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [
        (321, 0.75, 241),  # the Caffe Interp sizes of the paper's 321 crops
        (321, 0.5, 161),
        (513, 0.75, 385),
        (513, 0.5, 257),
        (100, 0.7, 70),  # 100 * 0.7 is 70.00000000000001 in floating point
        (128, 0.5, 64),
        (5, 0.1, 1),
        (10, 1.5, 15),
    ],
)
def test_scaled_size_is_the_ceiling(size: int, scale: float, expected: int) -> None:
    assert scaled_size(size, scale) == expected


def test_validate_scales_returns_floats_and_turns_none_into_one_scale() -> None:
    assert validate_scales(None) == (1.0,)
    assert validate_scales([1, 0.75]) == (1.0, 0.75)
    assert validate_scales((0.5, 0.25)) == (0.5, 0.25)  # no 1.0: allowed, the first scale sets the size


def test_fuse_max_resizes_to_the_first_map() -> None:
    big = torch.zeros(1, 2, 4, 4)
    small = torch.tensor([[[[1.0, -1.0], [-1.0, -1.0]], [[-2.0, -2.0], [-2.0, -2.0]]]])
    fused = fuse_max([big, small])
    assert fused.shape == (1, 2, 4, 4)
    # Channel 1 of the small map is -2 everywhere: the zeros win. Channel 0's top-left
    # corner, upsampled from the value 1, beats 0.
    assert torch.equal(fused[0, 1], torch.zeros(4, 4))
    assert fused[0, 0, 0, 0] == 1.0 and fused[0, 0, 3, 3] == 0.0
