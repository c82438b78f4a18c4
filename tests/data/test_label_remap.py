from pathlib import Path

import numpy as np
import pytest

from lightning_deeplab.data.remap import LabelRemap, as_integer_labels, present_values

REMAP = LabelRemap({0: 255, 1: 0, 2: 1, 7: 2, 255: 255}, "test ids")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_lookup_of_every_integer_type(dtype):
    label = np.array([[0, 1, 2], [7, 255, 1]], dtype=dtype)
    out = REMAP(label, Path("x.png"))
    assert out.dtype == np.uint8 and out.tolist() == [[255, 0, 1], [2, 255, 0]]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_values_outside_the_table_are_listed(dtype):
    label = np.array([[3, 1], [300 if dtype != np.uint8 else 254, 6]], dtype=dtype)
    with pytest.raises(ValueError, match=r"x\.png holds values \{3, 6, (300|254)\} that are not test ids"):
        REMAP(label, Path("x.png"))
    with pytest.raises(ValueError, match=r"\{-1\}"):
        REMAP(np.array([[-1, 1]]), Path("x.png"))


def test_whole_floats_are_integers_and_fractions_are_refused():
    assert REMAP(np.array([[1.0, 7.0]]), Path("m.mat")).tolist() == [[0, 2]]
    with pytest.raises(ValueError, match=r"m\.mat has dtype float64 with values that are not whole"):
        as_integer_labels(np.array([[1.5]]), Path("m.mat"))
    with pytest.raises(ValueError, match="not whole"):
        as_integer_labels(np.array([[np.nan]]), Path("m.mat"))


def test_present_values_agrees_with_unique():
    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.uint16, np.int64):
        label = rng.choice([0, 5, 33, 200], size=(64, 48)).astype(dtype)
        assert present_values(label).tolist() == np.unique(label).tolist() == [0, 5, 33, 200]


def test_bad_tables():
    with pytest.raises(ValueError, match="at least one"):
        LabelRemap({}, "x")
    with pytest.raises(ValueError, match="class indices"):
        LabelRemap({0: 300}, "x")
    with pytest.raises(ValueError, match=">= 0"):
        LabelRemap({-1: 0}, "x")
