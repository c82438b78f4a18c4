"""The torch API with any Gaussian kernels (`gaussian_crf`, `GaussianCRF`, the N-d feature
helpers): DeepLab's `dense_crf` is an instance of it, it matches pydensecrf2 on volumes and
every compatibility form, is batched and differentiable, and refuses bad input clearly."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import pydensecrf.densecrf as ref_dcrf
import pydensecrf.utils as ref_utils
from lightning_deeplab.crf import (
    MAX_FEATURE_DIM,
    DenseCRF,
    GaussianCRF,
    PairwiseKernel,
    bilateral_features_nd,
    dense_crf,
    gaussian_crf,
    position_features_nd,
    unary_from_softmax,
)
from lightning_deeplab.crf import checks

from crf_inputs import densecrf_constant, image_tensor, noisy_probs, photo


def _deeplab_kernels(image, pos_w=3.0, pos_xy=1.0, bi_w=4.0, bi_xy=67.0, bi_rgb=3.0):
    # DeepLab's kernels are in (x, y) order; the N-d helpers use array order (y, x).
    position = position_features_nd(image.shape[2:], pos_xy, batch=image.shape[0]).flip(1)
    bilateral = bilateral_features_nd(image, bi_xy, bi_rgb)
    bilateral = torch.cat([bilateral[:, :2].flip(1), bilateral[:, 2:]], dim=1)
    return [(position, pos_w), PairwiseKernel(bilateral, bi_w)]


def test_dense_crf_is_the_two_kernel_instance_bit_for_bit():
    image = image_tensor(photo("astronaut", 24, 32), photo("coffee", 24, 32))
    unary = unary_from_softmax(noisy_probs(2, 4, 24, 32, 0))
    expected = dense_crf(unary, image)
    assert torch.equal(gaussian_crf(unary, _deeplab_kernels(image)), expected)
    module = GaussianCRF(weights=[3.0, 4.0])
    assert torch.equal(module(unary, [kernel[0] for kernel in _deeplab_kernels(image)]), expected)
    # Flattened [B, d, N] features are the same kernels.
    flat = [(kernel[0].flatten(2), kernel[1]) for kernel in _deeplab_kernels(image)]
    assert torch.equal(gaussian_crf(unary, flat), expected)


def test_the_helpers_build_scaled_index_grids():
    grid = position_features_nd((3, 4, 5), std=(2.0, 1.0, 4.0), spacing=(3.0, 1.0, 0.5), batch=2)
    assert grid.shape == (2, 3, 3, 4, 5) and grid.dtype == torch.float32
    assert grid[1, 0, 2, 0, 0] == 2 * 3.0 / 2.0 and grid[0, 2, 0, 0, 4] == 4 * 0.5 / 4.0
    assert grid[0, 1, 1, 3, 2] == 3.0
    volume = torch.arange(60, dtype=torch.float32).reshape(1, 1, 3, 4, 5)
    bilateral = bilateral_features_nd(volume, std=2.0, channel_std=10.0)
    assert bilateral.shape == (1, 4, 3, 4, 5)
    assert torch.equal(bilateral[:, 3:], volume / 10.0)
    expected = ref_utils.create_pairwise_bilateral((2, 2, 2), (10,), volume[0, 0].numpy(), chdim=-1)
    np.testing.assert_array_equal(bilateral.flatten(2)[0].numpy(), expected)


def _reference_volume(sm, volume, compat):
    classes = sm.shape[0]
    d = ref_dcrf.DenseCRF(volume.size, classes)
    d.setUnaryEnergy(ref_utils.unary_from_softmax(sm))
    d.addPairwiseEnergy(ref_utils.create_pairwise_gaussian(sdims=(1, 1, 1), shape=volume.shape), compat=compat)
    d.addPairwiseEnergy(
        ref_utils.create_pairwise_bilateral(sdims=(3, 3, 3), schan=(15,), img=volume, chdim=-1),
        compat=5,
        normalization=densecrf_constant(ref_dcrf, "NORMALIZE_AFTER"),
    )
    return np.array(d.inference(5)).reshape(sm.shape)


@pytest.mark.parametrize("form", ["potts", "vector", "matrix"])
def test_a_volume_matches_pydensecrf_with_every_compatibility_form(form):
    depth, height, width, classes = 8, 10, 12, 4
    rng = np.random.default_rng(0)
    volumes = (rng.uniform(0, 60, (2, depth, height, width)) + np.linspace(0, 150, width)).astype(np.float32)
    probs = torch.stack([noisy_probs(depth, classes, height, width, seed).permute(1, 0, 2, 3) for seed in (1, 2)])
    vector = rng.uniform(1, 4, classes).astype(np.float32)
    matrix = rng.uniform(-3, 1, (classes, classes)).astype(np.float32)
    compat, weight, ours = {
        "potts": (3.0, 3.0, None),
        "vector": (-vector, 1.0, torch.from_numpy(vector)),
        "matrix": (matrix, 1.0, torch.from_numpy(-(matrix + matrix.T) / 2)),
    }[form]
    unary = unary_from_softmax(probs)  # [B, C, D, H, W]
    q = gaussian_crf(
        unary,
        [
            (position_features_nd((depth, height, width), 1.0), weight, ours),
            (bilateral_features_nd(torch.from_numpy(volumes)[:, None], 3.0, 15.0), 5.0, None, "after"),
        ],
        iterations=5,
    )
    assert q.shape == probs.shape
    for b in range(2):
        reference = _reference_volume(probs[b].numpy(), volumes[b], compat)
        assert np.abs(q[b].numpy() - reference).max() <= 1e-4
        assert (q[b].argmax(0).numpy() == reference.argmax(0)).mean() >= 0.9999


def test_the_maximum_feature_dimension_is_the_lattice_s():
    assert MAX_FEATURE_DIM == 16
    unary = torch.rand(1, 3, 50)
    gaussian_crf(unary, [(torch.rand(1, 16, 50), 1.0)], iterations=1)
    with pytest.raises(ValueError, match="1 to 16 feature dimensions, got d = 17"):
        gaussian_crf(unary, [(torch.rand(1, 17, 50), 1.0)])


def test_batched_equals_one_at_a_time_and_features_broadcast():
    unary = torch.rand(2, 3, 4, 5, 6)
    intensity = torch.rand(2, 1, 4, 5, 6) * 100
    position = position_features_nd((4, 5, 6), 2.0)  # batch 1, shared by all volumes
    batch = gaussian_crf(unary, [(position, 2.0), (bilateral_features_nd(intensity, 3.0, 20.0), 3.0)])
    for b in range(2):
        single = gaussian_crf(
            unary[b : b + 1], [(position, 2.0), (bilateral_features_nd(intensity[b : b + 1], 3.0, 20.0), 3.0)]
        )
        torch.testing.assert_close(batch[b : b + 1], single, atol=1e-6, rtol=0)


def test_gradients_reach_unary_weights_and_compatibility():
    unary = torch.rand(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    features = position_features_nd((3, 4), 1.5)
    weight = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    compat = torch.eye(3, dtype=torch.float64).requires_grad_()
    torch.autograd.gradcheck(
        lambda u, w, m: gaussian_crf(u, [(features, w, m, "symmetric")], iterations=1), (unary, weight, compat)
    )
    layer = GaussianCRF(weights=[1.0, 2.0], compatibilities=[None, torch.eye(3)], trainable=True)
    q = layer(unary.float().detach(), [features, features * 2])
    q[:, 0].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    assert sorted(layer.state_dict()) == ["compatibility_1", "weight_0", "weight_1"]


def test_settings_stay_out_of_checkpoints_unless_trainable():
    assert DenseCRF().state_dict() == {} and GaussianCRF([1.0]).state_dict() == {}
    assert sorted(DenseCRF(trainable=True).state_dict()) == ["bi_w", "pos_w"]
    crf = DenseCRF(pos_w=5.0)
    crf.load_state_dict(DenseCRF(pos_w=1.0).state_dict())  # nothing to overwrite
    assert float(crf.pos_w) == 5.0


unary, position = torch.rand(1, 3, 4, 5), position_features_nd((4, 5), 1.0)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((unary, (position, 1.0)), TypeError, r"kernels\[0\] must be a PairwiseKernel"),
        ((unary, position), TypeError, "kernels must be a list"),
        ((unary[0, 0], [(position, 1.0)]), ValueError, r"unary must be a non-empty \[B, C, \*spatial\]"),
        ((unary, [(position[:, :, :3], 1.0)]), ValueError, r"kernels\[0\].features must be \[1 or 1, d, 20\]"),
        ((unary, [(position.expand(2, -1, -1, -1), 1.0)]), ValueError, r"kernels\[0\].features must be"),
        ((unary, [(position.long(), 1.0)]), TypeError, "must be floating point"),
        ((unary, [(position.to("meta"), 1.0)]), ValueError, "features is on meta but unary is on cpu"),
        ((unary, [(position, float("nan"))]), ValueError, r"kernels\[0\].weight must be finite"),
        ((unary, [(position, 1.0, torch.ones(4))]), ValueError, r"compatibility must be \[C\] or \[C, C\] with C = 3"),
        ((unary, [(position, 1.0, torch.ones(3, 2))]), ValueError, r"compatibility must be \[C\] or \[C, C\]"),
        ((unary, [(position, 1.0, None, "mean")]), ValueError, r"normalization must be one of"),
        ((unary, [(position * float("inf"), 1.0)]), ValueError, "features contains NaN or Inf"),
        ((unary, [(position * 1e6, 1.0)]), ValueError, "too large for the lattice"),
        ((unary.numpy(), [(position, 1.0)]), TypeError, "got a NumPy array; convert it with torch.from_numpy"),
    ],
)
def test_bad_input_is_refused(args, error, message):
    with pytest.raises(error, match=message):
        gaussian_crf(*args)


def test_the_module_validates_its_settings_once():
    with pytest.raises(ValueError, match="normalizations must have one entry per kernel"):
        GaussianCRF([1.0, 2.0], normalizations=["after"])
    with pytest.raises(ValueError, match=r"kernels\[1\].normalization"):
        GaussianCRF([1.0, 2.0], normalizations=["after", "sym"])
    with pytest.raises(ValueError, match="expected 2 feature tensors"):
        GaussianCRF([1.0, 2.0])(unary, [position])
    with pytest.raises(TypeError, match="check_values must be None, True or False"):
        DenseCRF(check_values="yes")


def test_a_float_image_in_0_1_is_warned_about_once(monkeypatch):
    monkeypatch.setattr(checks, "_warned_unit_range", False)
    probs = noisy_probs(1, 3, 12, 14, 0)
    image = torch.rand(1, 3, 12, 14)
    with pytest.warns(UserWarning, match="expects raw RGB values in 0-255"):
        DenseCRF()(unary_from_softmax(probs), image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dense_crf(unary_from_softmax(probs), image)  # once per process
        monkeypatch.setattr(checks, "_warned_unit_range", False)
        dense_crf(unary_from_softmax(probs), image * 255)  # 0-255 floats: no warning


def test_numpy_inputs_are_converted_or_refused_with_the_conversion():
    probs = noisy_probs(1, 3, 12, 14, 0)[0].numpy()
    assert torch.equal(unary_from_softmax(probs), unary_from_softmax(torch.from_numpy(probs)[None]))
    image = photo("astronaut", 12, 14)
    with pytest.raises(TypeError, match=r"convert it with torch.from_numpy\(image\).permute\(2, 0, 1\)\[None\]"):
        dense_crf(unary_from_softmax(probs), image)


def test_importing_the_package_loads_no_compiled_code():
    code = (
        "import sys, lightning_deeplab.crf, lightning_deeplab.pydensecrf.densecrf\n"
        "assert 'lightning_deeplab._C' not in sys.modules, 'loaded at import'\n"
        "import torch; from lightning_deeplab.crf import dense_crf, _ops\n"
        "dense_crf(torch.rand(1, 2, 3, 4), torch.zeros(1, 3, 3, 4, dtype=torch.uint8))\n"
        "print(_ops.OPS_SOURCE)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("compiled", "jit")
