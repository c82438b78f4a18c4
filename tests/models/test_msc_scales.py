"""MSC helpers: resized input sizes (Caffe's Interp and PyTorch's), the max fusion, and the input-range warning."""

import math
import warnings

import numpy as np
import pytest
import torch

from lightning_deeplab.models import DeepLabV2, fuse_max, scaled_size, validate_scales
from lightning_deeplab.models.msc import caffe_factors, caffe_scaled_size, resize_input


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


# ------------------------------------------------------------------ msc_resize="caffe": Caffe's Interp
@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [
        (500, 0.75, 373),  # shrink_factor 4, zoom_factor 3: (499 // 4 + 1 - 1) * 3 + 1
        (500, 0.5, 250),  # shrink_factor 2: 499 // 2 + 1
        (321, 0.75, 241),
        (321, 0.5, 161),
        (513, 0.75, 385),
        (513, 0.5, 257),
        (353, 0.75, 265),
        (10, 1.5, 13),  # zoom 3, shrink 2: (9 // 2) * 3 + 1
    ],
)
def test_caffe_scaled_size_follows_the_interp_layer(size: int, scale: float, expected: int) -> None:
    assert caffe_scaled_size(size, scale) == expected


def test_caffe_factors_and_unrepresentable_scales() -> None:
    assert caffe_factors(0.75) == (3, 4) and caffe_factors(0.5) == (1, 2) and caffe_factors(0.7) == (7, 10)
    with pytest.raises(ValueError, match="msc_resize='caffe'"):
        caffe_factors(math.pi / 4)
    with pytest.raises(ValueError, match="zoom/shrink"):
        DeepLabV2("resnet18", "aspp-s", msc_scales=(1.0, 1 / math.sqrt(2)), style="caffe")
    DeepLabV2("resnet18", "aspp-s", msc_scales=(1.0, 1 / math.sqrt(2)), style="caffe", msc_resize="pytorch")


def _caffe_interp2(data: np.ndarray, height2: int, width2: int) -> np.ndarray:
    """caffe_cpu_interp2 of DeepLab's Caffe (util/interp.cpp), written out: float32 ratios, truncation."""
    channels, height1, width1 = data.shape
    if (height1, width1) == (height2, width2):
        return data.copy()
    rheight = np.float32((height1 - 1) / (height2 - 1)) if height2 > 1 else np.float32(0)
    rwidth = np.float32((width1 - 1) / (width2 - 1)) if width2 > 1 else np.float32(0)
    out = np.zeros((channels, height2, width2), np.float32)
    for h2 in range(height2):
        h1r = np.float32(rheight * np.float32(h2))
        h1 = int(h1r)
        h1p = 1 if h1 < height1 - 1 else 0
        h1lambda = np.float32(h1r - h1)
        h0lambda = np.float32(1) - h1lambda
        for w2 in range(width2):
            w1r = np.float32(rwidth * np.float32(w2))
            w1 = int(w1r)
            w1p = 1 if w1 < width1 - 1 else 0
            w1lambda = np.float32(w1r - w1)
            w0lambda = np.float32(1) - w1lambda
            out[:, h2, w2] = h0lambda * (w0lambda * data[:, h1, w1] + w1lambda * data[:, h1, w1 + w1p]) + h1lambda * (
                w0lambda * data[:, h1 + h1p, w1] + w1lambda * data[:, h1 + h1p, w1 + w1p]
            )
    return out


def test_caffe_resize_equals_the_interp_formula() -> None:
    x = torch.randn(1, 2, 50, 37)
    resized = resize_input(x, 0.75, "caffe")
    assert resized.shape[-2:] == (caffe_scaled_size(50, 0.75), caffe_scaled_size(37, 0.75)) == (37, 28)
    np.testing.assert_allclose(resized[0].numpy(), _caffe_interp2(x[0].numpy(), 37, 28), rtol=1e-5, atol=1e-5)
    pytorch = resize_input(x, 0.75, "pytorch")
    assert pytorch.shape[-2:] == (38, 28)  # ceil(50 * 0.75): the sizes differ
    # The score maps go back to the full-scale size with the same Interp before the max.
    small = torch.randn(1, 2, 5, 4)
    fused = fuse_max([torch.full((1, 2, 9, 7), -100.0), small], "caffe")
    np.testing.assert_allclose(fused[0].numpy(), _caffe_interp2(small[0].numpy(), 9, 7), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fused, fuse_max([torch.full((1, 2, 9, 7), -100.0), small], "pytorch"))


def test_msc_resize_follows_the_style_and_changes_the_fused_output() -> None:
    assert DeepLabV2("resnet18", "aspp-s", style="caffe").msc_resize == "caffe"
    assert DeepLabV2("resnet18", "aspp-s", style="pytorch").msc_resize == "pytorch"
    with pytest.raises(ValueError, match="msc_resize"):
        DeepLabV2("resnet18", "aspp-s", msc_resize="bicubic")
    torch.manual_seed(0)
    caffe = DeepLabV2("resnet18", "aspp-s", num_classes=3, msc_scales=(1.0, 0.75, 0.5)).eval()
    pytorch = DeepLabV2("resnet18", "aspp-s", num_classes=3, msc_scales=(1.0, 0.75, 0.5), msc_resize="pytorch").eval()
    pytorch.load_state_dict(caffe.state_dict())
    x = torch.rand(1, 3, 100, 100) * 255
    with torch.no_grad():
        caffe_maps, pytorch_maps = caffe.forward_multi(x), pytorch.forward_multi(x)
        assert torch.equal(caffe_maps[0], pytorch_maps[0])  # full scale: no resize
        # The 0.75 branch: 100 -> 76 (Interp) vs 75 (ceil) input pixels.
        branch = caffe.head(caffe.backbone(resize_input(caffe.normalize_input(x), 0.75, "caffe")))
        torch.testing.assert_close(caffe_maps[1], branch)
        assert not torch.allclose(caffe_maps[-1], pytorch_maps[-1])


def test_a_unit_range_input_warns_once() -> None:
    model = DeepLabV2("resnet18", "aspp-s", num_classes=2, msc_scales=None).eval()
    with torch.no_grad(), pytest.warns(UserWarning, match="expects RGB images in 0-255"):
        model(torch.rand(1, 3, 33, 33))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.rand(1, 3, 33, 33))  # checked on the first call only
        DeepLabV2("resnet18", "aspp-s", num_classes=2, msc_scales=None).eval()(torch.rand(1, 3, 33, 33) * 255)
