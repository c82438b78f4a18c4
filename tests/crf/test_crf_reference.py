"""Agreement with pydensecrf2 (Kraehenbuehl's C++ dense CRF) on real photos with a
DeepLab-like noisy unary: max |q - q_ref| <= 1e-4 and the same argmax on >= 99.99% of pixels."""

import numpy as np
import pytest
import torch

from lightning_deeplab.crf import DenseCRF, dense_crf, unary_from_softmax

from crf_inputs import (
    DEEPLAB_RESNET,
    DEEPLAB_VGG,
    WIDE_KERNELS,
    image_tensor,
    noisy_probs,
    photo,
    pydensecrf_marginals,
)

import pydensecrf  # noqa: E402,F401  the reference is a test dependency (`make install`): never skipped

MAX_ABS_DIFF = 1e-4
MIN_ARGMAX_AGREEMENT = 0.9999


def _assert_matches_reference(q: np.ndarray, q_ref: np.ndarray) -> None:
    assert q.shape == q_ref.shape
    max_diff = float(np.abs(q - q_ref).max())
    agreement = float((q.argmax(0) == q_ref.argmax(0)).mean())
    assert max_diff <= MAX_ABS_DIFF, f"max |q - q_ref| = {max_diff:.3g}"
    assert agreement >= MIN_ARGMAX_AGREEMENT, f"argmax agreement {agreement:.6f}"


def _compare(photos, params, classes=21, seed=0, **kwargs):
    height, width = photos[0].shape[:2]
    probs = noisy_probs(len(photos), classes, height, width, seed)
    pos_w, pos_xy, bi_w, bi_xy, bi_rgb = params
    q = dense_crf(
        unary_from_softmax(probs),
        image_tensor(*photos),
        pos_w=pos_w,
        pos_xy_std=pos_xy,
        bi_w=bi_w,
        bi_xy_std=bi_xy,
        bi_rgb_std=bi_rgb,
        **kwargs,
    )
    assert q.dtype == torch.float32
    ref_kwargs = {k: v for k, v in kwargs.items() if k in ("iterations", "normalization")}
    if "compatibility" in kwargs:
        ref_kwargs["compat_matrix"] = kwargs["compatibility"].numpy()
    for b, image in enumerate(photos):
        q_ref = pydensecrf_marginals(probs[b].numpy(), image, params, **ref_kwargs)
        _assert_matches_reference(q[b].numpy(), q_ref)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket"])
def test_pascal_size_deeplab_parameters(name):
    crf = DenseCRF()  # the defaults are DeepLab v2 ResNet-101's
    image = photo(name, 375, 500)
    probs = noisy_probs(1, 21, 375, 500, seed=1)
    q = crf(unary_from_softmax(probs), image_tensor(image))
    _assert_matches_reference(q[0].numpy(), pydensecrf_marginals(probs[0].numpy(), image))


def test_pascal_size_batch_of_two_second_parameter_set():
    _compare([photo("chelsea", 300, 451), photo("cat", 300, 451)], DEEPLAB_VGG, seed=2)


def test_wide_kernels_portrait():
    _compare([photo("immunohistochemistry", 500, 375)], WIDE_KERNELS, seed=3)


def test_after_normalization_matches_reference():
    _compare([photo("coffee", 375, 500)], DEEPLAB_RESNET, seed=4, normalization="after")


def test_compatibility_matrix_matches_reference():
    gen = torch.Generator().manual_seed(5)
    raw = torch.rand(8, 8, generator=gen) * 0.5
    matrix = torch.eye(8) + (raw + raw.T) / 2  # symmetric: pydensecrf symmetrises its matrix
    _compare([photo("astronaut", 120, 160)], DEEPLAB_RESNET, classes=8, seed=5, compatibility=matrix)


def test_cityscapes_like_half_size():
    _compare([photo("rocket", 512, 1024)], DEEPLAB_RESNET, classes=19, seed=6)


@pytest.mark.slow
def test_cityscapes_full_size():
    _compare([photo("hubble_deep_field", 1024, 2048)], DEEPLAB_RESNET, classes=19, seed=7)
