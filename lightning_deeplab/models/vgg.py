"""The VGG-16 backbone of DeepLab-LargeFOV (conv1_1 .. pool5, and LargeFOV's pool5a), output stride 8.

The layers keep torchvision's ``vgg16().features`` indices, so torchvision state dicts load as
they are. Caffe names map onto them in order: conv1_1 -> features.0, conv1_2 -> features.2,
conv2_1 -> features.5, conv2_2 -> features.7, conv3_1..3 -> features.10/12/14,
conv4_1..3 -> features.17/19/21, conv5_1..3 -> features.24/26/28.
"""

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

#: Indices in ``features`` of the five max-pools and of the conv5 layers.
POOL_INDICES = (4, 9, 16, 23, 30)
CONV5_INDICES = (24, 26, 28)
#: conv5 dilation: pool4 no longer halves the resolution.
CONV5_DILATION = 2
#: Width of fc6 / fc7 in DeepLab-LargeFOV (VGG's 4096, decimated by 4).
FC_CHANNELS = 1024
#: fc6 kernel in DeepLab-LargeFOV (VGG's 7x7, decimated to 3x3).
FC6_KERNEL = 3


def caffe_average_pool_3x3() -> nn.AvgPool2d:
    """DeepLab-LargeFOV's ``pool5a``: AVE pooling, kernel 3, stride 1, pad 1.

    Caffe's AVE pooling divides each window's sum by the window's area clipped to the padded
    input, ``(min(start + k, size + pad) - start)`` per axis (padding counted). With kernel 3,
    stride 1, pad 1 every window lies inside the padded input, so the divisor is 9 everywhere,
    which is torch's ``count_include_pad=True``.
    """
    return nn.AvgPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)


class VGG16Backbone(nn.Module):
    """VGG-16 conv layers with DeepLab's pooling: features of 512 channels at output stride 8.

    pool1-3 are 3x3 stride 2 pad 1 in ceil mode (321 -> 161 -> 81 -> 41), pool4 and pool5 are
    3x3 stride 1 pad 1, and conv5_1..3 have dilation 2. No normalisation layers: ``norm``
    does not apply to this backbone. fc6/fc7 live in the head (:class:`~.aspp.VGGASPP`), because
    the ASPP variant has one fc6/fc7 per branch.

    Args:
        pool5a: append DeepLab-LargeFOV's ``pool5a`` (:func:`caffe_average_pool_3x3`) after pool5,
            as ``features.31``. The official LargeFOV prototxt has it; the VGG-16 ASPP ones do not.
    """

    out_channels = 512

    def __init__(self, pool5a: bool = False) -> None:
        super().__init__()
        self.features = make_layers(cfgs["D"], batch_norm=False)
        for index in POOL_INDICES:
            stride = 2 if index < 23 else 1
            self.features[index] = nn.MaxPool2d(kernel_size=3, stride=stride, padding=1, ceil_mode=True)
        for index in CONV5_INDICES:
            conv = self.features[index]
            conv.dilation = (CONV5_DILATION, CONV5_DILATION)
            conv.padding = (CONV5_DILATION, CONV5_DILATION)
        self.pool5a = bool(pool5a)
        if self.pool5a:
            self.features.append(caffe_average_pool_3x3())

    def forward(self, x: Tensor) -> Tensor:
        """Features of ``x`` (normalised image, [B, 3, H, W]) at output stride 8."""
        return self.features(x)


def decimate_vgg_classifier(state: Mapping[str, Tensor], fc_channels: int = FC_CHANNELS) -> dict[str, Tensor]:
    """fc6/fc7 initial weights from torchvision's VGG-16 ``classifier`` by decimation (as the paper did).

    torchvision's fc6 (``classifier.0``, 4096 x 512*7*7) keeps every 4th output and spatial taps
    0, 3, 6 of its 7x7 window; fc7 (``classifier.3``, 4096 x 4096) keeps every 4th output and
    input. Returns ``{"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}`` as conv weights.
    """
    fc6_weight, fc6_bias = state["classifier.0.weight"], state["classifier.0.bias"]
    fc7_weight, fc7_bias = state["classifier.3.weight"], state["classifier.3.bias"]
    outputs, inputs = fc6_weight.shape
    window = round((inputs / 512) ** 0.5)
    if outputs % fc_channels or 512 * window * window != inputs or fc7_weight.shape != (outputs, outputs):
        raise ValueError(
            f"cannot decimate a VGG classifier with fc6 {tuple(fc6_weight.shape)} and fc7 "
            f"{tuple(fc7_weight.shape)} to {fc_channels} channels"
        )
    step = outputs // fc_channels
    taps = torch.linspace(0, window - 1, FC6_KERNEL).round().long()
    fc6 = fc6_weight.reshape(outputs, 512, window, window)[::step][:, :, taps][:, :, :, taps]
    return {
        "fc6.weight": fc6.contiguous(),
        "fc6.bias": fc6_bias[::step].clone(),
        "fc7.weight": fc7_weight[::step, ::step].reshape(fc_channels, fc_channels, 1, 1).clone(),
        "fc7.bias": fc7_bias[::step].clone(),
    }
