"""DeepLab v2's training step: the LightningModule, its SGD with the poly schedule, and the
loss of training through the dense CRF."""

from .module import DeepLabV2Module

__all__ = ["DeepLabV2Module"]
