"""What converting Caffe layers into a state dict shares between the ResNet converter
(:mod:`.convert`) and the VGG-16 one (:mod:`.vgg`): the report of a conversion and the checks
that turn a layer's blobs into tensors of the expected shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np

from .caffemodel import CaffeBlob, CaffeLayer

# torch is imported where used, so that `convert-caffe --help` answers without it.
if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: The head the released ResNet models were trained with.
RELEASED_HEAD = "aspp-l"
_MAX_LISTED = 10


@dataclass
class ConversionReport:
    """What a conversion did: which Caffe layers filled which tensors, and what was left out."""

    source: str
    backbone: str
    #: The head the state dict is for (``aspp-l`` or, for VGG-16, ``largefov``).
    head: str = RELEASED_HEAD
    #: Classes of the head in the state dict; None when the head was left out.
    num_classes: Optional[int] = None
    #: ``"caffe_layer[blob] -> state_dict_key"`` for every tensor written.
    mapped: list[str] = field(default_factory=list)
    #: Layers of the MSC branches (copies of shared weights), skipped.
    msc_copies: list[str] = field(default_factory=list)
    #: Layers with blobs that fill nothing, as ``"name (type, shapes)"``.
    unmapped: list[str] = field(default_factory=list)
    #: Why the head is not in the state dict (it then stays randomly initialised).
    head_note: Optional[str] = None
    #: BatchNorm layers whose scale-factor blob was 0 (statistics taken as 0, as Caffe does).
    zero_scale_factors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for people: backbone, head, and everything skipped or unmapped."""
        lines = [
            f"source: {self.source}",
            f"backbone: {self.backbone} (style 'caffe'), {len(self.mapped)} tensors mapped",
        ]
        if self.num_classes is not None:
            lines.append(f"head: {self.head}, {self.num_classes} classes (whole-model state dict)")
        else:
            lines.append(
                f"head: NOT converted, stays randomly initialised (backbone-only state dict): {self.head_note}"
            )
        if self.msc_copies:
            lines.append(f"skipped: {len(self.msc_copies)} layers of the MSC branches (copies of shared weights)")
        if self.zero_scale_factors:
            lines.append(
                "BatchNorm scale factor 0 (Caffe then uses mean 0, variance 0; so does the checkpoint) in: "
                + listing(self.zero_scale_factors)
            )
        if self.unmapped:
            lines.append(f"unmapped: {len(self.unmapped)} layers with weights: {listing(self.unmapped)}")
        else:
            lines.append("unmapped: none")
        return "\n".join(lines)


def check_blob_count(layer: CaffeLayer, allowed: tuple[int, ...], meaning: str, source: str) -> None:
    if len(layer.blobs) not in allowed:
        raise ValueError(
            f"{source}: layer {layer.name!r} ({layer.type}) has {len(layer.blobs)} blobs, expected "
            f"{' or '.join(map(str, allowed))} ({meaning})"
        )


def blob_tensor(layer: CaffeLayer, index: int, shape: torch.Size, key: str, source: str) -> Tensor:
    """Blob ``index`` of ``layer`` as a float32 tensor of ``shape``.

    Legacy blobs are 4-D with padding dims of 1 (a bias stored as 1x1x1xN): a blob fits when
    its shape equals ``shape`` once dims of size 1 are dropped from both.
    """
    import torch

    blob: CaffeBlob = layer.blobs[index]
    squeezed = tuple(dim for dim in blob.shape if dim != 1)
    if squeezed != tuple(dim for dim in shape if dim != 1) or blob.data.size != shape.numel():
        raise ValueError(
            f"{source}: shape mismatch: {layer.name!r} blob {index} has shape {blob.shape}, "
            f"but {key} needs {tuple(shape)}"
        )
    return torch.from_numpy(np.array(blob.data, dtype=np.float32)).reshape(shape)  # a writable copy


def describe_layer(layer: CaffeLayer) -> str:
    shapes = ", ".join("x".join(map(str, blob.shape)) or "scalar" for blob in layer.blobs)
    return f"{layer.name} ({layer.type or 'unknown type'}, {shapes})"


def listing(items) -> str:
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")
