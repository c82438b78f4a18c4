"""Atrous spatial pyramid pooling heads: parallel atrous branches whose class scores are summed.

LargeFOV is the one-branch case (rate 12). Each head names its final classifier convs through
``classifier_convs()``: those are the layers the paper trains at 10x (weights) / 20x (biases)
the base learning rate.
"""

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .vgg import FC6_KERNEL, FC_CHANNELS

#: Dropout after fc6 and fc7 in the VGG heads.
VGG_DROPOUT = 0.5
#: std of the normal init of the classifier convs (bias 0).
CLASSIFIER_INIT_STD = 0.01


def _classifier_conv(in_channels: int, num_classes: int, kernel_size: int, rate: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, num_classes, kernel_size, padding=rate * (kernel_size // 2), dilation=rate)
    nn.init.normal_(conv.weight, mean=0.0, std=CLASSIFIER_INIT_STD)
    nn.init.zeros_(conv.bias)
    return conv


class SummedBranches(nn.Module):
    """Parallel branches (``self.branches``) on the same features, their class scores summed."""

    branches: nn.ModuleList

    def forward(self, features: Tensor) -> Tensor:
        """Class scores: the sum of the branches' outputs."""
        scores = self.branches[0](features)
        for branch in self.branches[1:]:
            scores = scores + branch(features)
        return scores


class ASPP(SummedBranches):
    """ResNet ASPP: one 3x3 conv per rate (dilation = padding = rate) straight to the class scores.

    Module names: ``branches.{i}`` for the i-th rate (Caffe ``fc1_voc12_c{i}``).
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(_classifier_conv(in_channels, num_classes, 3, rate) for rate in self.rates)

    def classifier_convs(self) -> list[nn.Conv2d]:
        """The convs that produce class scores (all of them here)."""
        return list(self.branches)


class VGGBranch(nn.Module):
    """One DeepLab-VGG branch: fc6 (3x3, rate r, 1024) -> fc7 (1x1, 1024) -> fc8 (1x1, classes).

    ReLU and dropout 0.5 follow fc6 and fc7.
    """

    def __init__(self, in_channels: int, num_classes: int, rate: int) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, FC_CHANNELS, FC6_KERNEL, padding=rate * (FC6_KERNEL // 2), dilation=rate)
        self.fc7 = nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1)
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(VGG_DROPOUT)  # element-wise, as Caffe's
        self.fc8 = _classifier_conv(FC_CHANNELS, num_classes, 1)

    def forward(self, features: Tensor) -> Tensor:
        """Class scores of this branch."""
        x = self.dropout(self.relu(self.fc6(features)))
        x = self.dropout(self.relu(self.fc7(x)))
        return self.fc8(x)


class VGGASPP(SummedBranches):
    """VGG-16 head: one :class:`VGGBranch` per rate, scores summed (LargeFOV: the single rate 12).

    Only fc8 is the classifier for the learning-rate groups; fc6 and fc7 (initialised from
    VGG's fully connected layers) train with the backbone at the base rate.
    Module names: ``branches.{i}.fc6 / fc7 / fc8`` (Caffe ``fc6_{i}``, ``fc7_{i}``, ``fc8_*_{i}``).
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(VGGBranch(in_channels, num_classes, rate) for rate in self.rates)

    def classifier_convs(self) -> list[nn.Conv2d]:
        """The fc8 of every branch."""
        return [branch.fc8 for branch in self.branches]

    def load_fc6_fc7(self, state: Mapping[str, Tensor]) -> None:
        """Copy ``{"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}`` into every branch."""
        with torch.no_grad():
            for branch in self.branches:
                for name, value in state.items():
                    target = branch.get_parameter(name)
                    if target.shape != value.shape:
                        raise ValueError(
                            f"{name}: checkpoint shape {tuple(value.shape)} != model {tuple(target.shape)}"
                        )
                    target.copy_(value)
