"""Weights so large that the CRF's energies would overflow (to Inf, then NaN marginals) are
refused by name before anything runs."""

from __future__ import annotations

import pytest
import torch

from lightning_deeplab.crf import DenseCRF, GaussianCRF, dense_crf


def _inputs():
    generator = torch.Generator().manual_seed(0)
    unary = torch.rand(1, 3, 12, 16, generator=generator)
    image = torch.randint(0, 256, (1, 3, 12, 16), dtype=torch.uint8, generator=generator)
    return unary, image


@pytest.mark.parametrize("name", ["pos_w", "bi_w"])
@pytest.mark.parametrize("value", [3e38, -3e38, torch.tensor(3e38)])
def test_overflowing_weights_are_refused_by_name(name, value):
    unary, image = _inputs()
    with pytest.raises(ValueError, match=f"{name} must be finite and at most 1e\\+12 in magnitude"):
        DenseCRF(**{name: value})
    with pytest.raises(ValueError, match=f"{name} must be finite and at most 1e\\+12"):
        dense_crf(unary, image, **{name: value})


def test_a_huge_compatibility_or_gaussian_weight_is_refused_by_name():
    unary, image = _inputs()
    with pytest.raises(ValueError, match="compatibility has an entry of magnitude 3e\\+38"):
        dense_crf(unary, image, compatibility=torch.eye(3) * 3e38)
    with pytest.raises(ValueError, match=r"kernels\[0\].weight must be finite and at most"):
        GaussianCRF(weights=[3e38])


def test_the_largest_accepted_weights_give_finite_marginals():
    unary, image = _inputs()
    q = DenseCRF(pos_w=1e12, bi_w=-1e12, bi_xy_std=1e3, iterations=3)(unary, image)
    assert torch.isfinite(q).all()
    q = dense_crf(unary, image, pos_w=1e12, bi_w=1e12, normalization="after", compatibility=torch.eye(3) * 1e12)
    assert torch.isfinite(q).all()
