"""Every bad input to the CRF fails with a ValueError/TypeError naming what is wrong."""

import pytest
import torch

from lightning_deeplab.crf import DenseCRF, dense_crf, unary_from_logits, unary_from_softmax


def _good(batch=1, classes=3, height=6, width=7):
    # Seeded: the cases below must not depend on what a random image happens to hold.
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, classes, height, width, generator=gen), torch.randint(
        0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=gen
    )


def _with_value(tensor, value):
    tensor = tensor.clone()
    tensor.view(-1)[5] = value
    return tensor


unary, image = _good()

BAD_INPUTS = [
    # (unary, image, kwargs, error, message)
    ("x", image, {}, TypeError, "unary must be a torch.Tensor"),
    (unary, image.numpy(), {}, TypeError, "image must be a torch.Tensor"),
    (unary[0], image, {}, ValueError, "unary must be 4-D"),
    (unary, image[0], {}, ValueError, "image must be 4-D"),
    (unary[:, :1], image, {}, ValueError, "at least 2 classes"),
    (unary, image[:, :2], {}, ValueError, r"image must be \[B, 3, H, W\]"),
    (unary, torch.cat([image, image[:, :1]], 1), {}, ValueError, r"image must be \[B, 3, H, W\]"),
    (unary, image[:, :, :5], {}, ValueError, "does not match unary shape"),
    (unary, image[:, :, :, :6], {}, ValueError, "does not match unary shape"),
    (unary, torch.cat([image, image]), {}, ValueError, "does not match unary shape"),
    (unary, image.to(torch.int32), {}, TypeError, "image must be uint8"),
    # One value just outside [0, 255] on either side (a shifted random image may have none).
    (unary, _with_value(image.float(), 256.0), {}, ValueError, r"\[0, 255\]"),
    (unary, _with_value(image.float(), -1.0), {}, ValueError, r"\[0, 255\]"),
    (unary, _with_value(image.float(), float("nan")), {}, ValueError, "image contains NaN"),
    (unary.long(), image, {}, TypeError, "unary must be float16, bfloat16, float32 or float64"),
    (_with_value(unary, float("nan")), image, {}, ValueError, "unary contains NaN or Inf"),
    (_with_value(unary, float("inf")), image, {}, ValueError, "unary contains NaN or Inf"),
    (unary[:, :, :0], image[:, :, :0], {}, ValueError, "must not be empty"),
    (unary[:0], image[:0], {}, ValueError, "must not be empty"),
    (unary, image, {"pos_xy_std": 0.0}, ValueError, "pos_xy_std must be a finite number > 0"),
    (unary, image, {"bi_xy_std": -3.0}, ValueError, "bi_xy_std must be a finite number > 0"),
    (unary, image, {"bi_rgb_std": float("nan")}, ValueError, "bi_rgb_std must be a finite number > 0"),
    (unary, image, {"bi_rgb_std": "3"}, TypeError, "bi_rgb_std must be a number"),
    (unary, image, {"pos_w": float("inf")}, ValueError, "pos_w must be finite"),
    (unary, image, {"bi_w": torch.tensor([1.0, 2.0])}, ValueError, "bi_w must be a scalar"),
    (unary, image, {"iterations": -1}, ValueError, "iterations must be >= 0"),
    (unary, image, {"iterations": 2.5}, TypeError, "iterations must be an int"),
    (unary, image, {"normalization": "before"}, ValueError, "normalization must be one of"),
    (unary, image, {"compatibility": torch.eye(4)}, ValueError, r"compatibility must be \[C, C\]"),
    (unary, image, {"compatibility": torch.eye(3, dtype=torch.long)}, TypeError, "compatibility must be floating"),
    (
        unary,
        image,
        {"compatibility": _with_value(torch.eye(3), float("nan"))},
        ValueError,
        "compatibility contains NaN",
    ),
    # Lattice coordinates beyond the resolvable range (pydensecrf's int16 keys wrap far sooner).
    (unary, image, {"pos_xy_std": 1e-5}, ValueError, "pos_xy_std=1e-05 is too small"),
    (unary, image, {"bi_rgb_std": 1e-4}, ValueError, "bi_rgb_std=0.0001 are too small"),
]


@pytest.mark.parametrize("bad_unary, bad_image, kwargs, error, message", BAD_INPUTS)
def test_bad_input_is_refused(bad_unary, bad_image, kwargs, error, message):
    with pytest.raises(error, match=message):
        dense_crf(bad_unary, bad_image, **kwargs)


def test_refuses_an_image_so_large_that_indices_overflow():
    # Only the shape matters: validation stops before touching the values.
    huge_unary = torch.zeros(1, 2, 1, 1).expand(1, 2, 20000, 20000)
    huge_image = torch.zeros(1, 3, 1, 1, dtype=torch.uint8).expand(1, 3, 20000, 20000)
    with pytest.raises(ValueError, match="too large"):
        dense_crf(huge_unary, huge_image)


def test_refuses_a_large_image_with_a_small_position_std():
    unary = torch.zeros(1, 2, 1, 1).expand(1, 2, 4000, 8000)
    image = torch.zeros(1, 3, 1, 1, dtype=torch.uint8).expand(1, 3, 4000, 8000)
    with pytest.raises(ValueError, match=r"pos_xy_std=0.05 is too small for a 4000x8000 image"):
        dense_crf(unary, image, pos_xy_std=0.05)


def test_refuses_tensors_on_different_devices():
    meta_image = torch.empty(1, 3, 6, 7, dtype=torch.uint8, device="meta")
    with pytest.raises(ValueError, match="unary is on cpu but image is on meta"):
        dense_crf(unary, meta_image)


def test_constructor_validates_its_arguments():
    with pytest.raises(ValueError, match="normalization"):
        DenseCRF(normalization="none")
    with pytest.raises(ValueError, match="bi_xy_std"):
        DenseCRF(bi_xy_std=0)
    with pytest.raises(ValueError, match="iterations"):
        DenseCRF(iterations=-2)
    with pytest.raises(ValueError, match="compatibility"):
        DenseCRF(compatibility=torch.ones(3, 4))


def test_unary_helpers_validate_their_input():
    with pytest.raises(TypeError, match="probs must be a floating-point tensor"):
        unary_from_softmax(torch.ones(1, 2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"probs must be \[B, C, H, W\]"):
        unary_from_softmax(torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="clip"):
        unary_from_softmax(torch.rand(1, 2, 3, 3), clip=0.0)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        unary_from_logits([1.0, 2.0])


def test_one_test_of_a_number_refuses_bools_and_takes_numpy_scalars():
    import numpy as np

    from lightning_deeplab.crf.values import is_integer, is_real

    assert is_integer(3) and is_integer(np.int64(3)) and not is_integer(True) and not is_integer(3.0)
    assert is_real(3) and is_real(np.float32(0.5)) and not is_real(False) and not is_real("3")


def test_the_label_softmax_is_a_softmax_for_few_and_many_labels():
    import torch

    from lightning_deeplab.crf.mean_field import FEW_LABELS, label_softmax

    for labels in (2, 5, FEW_LABELS - 1, FEW_LABELS, 21):
        energies = torch.randn(2, 300, labels, dtype=torch.float64) * 30
        energies[0, 0] = 1e4  # large energies: no overflow (the row's maximum is taken out first)
        torch.testing.assert_close(label_softmax(energies), torch.softmax(energies, dim=-1), rtol=0, atol=1e-12)
