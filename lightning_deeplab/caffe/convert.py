"""Convert a released DeepLab ``.caffemodel`` (v2 ResNet, v1/v2 VGG-16) into a DeepLabV2 state dict.

The architecture is found from the layer names: ``conv1_1`` marks VGG-16 (converted by
:mod:`.vgg`: LargeFOV or ASPP-L), ``res2a_branch2a`` & co. a ResNet. For the ResNets the result
loads with ``load_pretrained(DeepLabV2(backbone=..., head="aspp-l", style="caffe"), PATH)``:

- with the classifier (the VOC model, ``fc1_voc12_c0..c3``): a whole-model state dict
  (``backbone.*``, ``head.branches.*``) for ``num_classes`` = the classifier's classes;
- without it (the COCO-pretrained ``init.caffemodel``, whose classifier is absent or has
  another class count, or a class count other than ``num_classes``): a backbone state dict,
  and the head of the model that loads it keeps its random initialisation.

BatchNorm blobs are (mean, variance, moving-average scale factor): the statistics are the first
two divided by the factor; a factor of 0 gives mean 0 and variance 0, as Caffe's
batch_norm_layer.cpp computes them (it multiplies by 0 instead of dividing). The Scale layer
after it holds (gamma, beta). Command line: ``python -m lightning_deeplab.caffe.convert IN.caffemodel OUT.pth
[--num-classes N] [--backbone resnet101|resnet50]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional


from ..fileio import atomic_output
from .caffemodel import CaffeLayer, read_caffemodel
from .mapping import RELEASED_HEAD, ConversionReport, blob_tensor, check_blob_count, describe_layer, listing
from .names import CAFFE_BACKBONES, CLASSIFIER_PATTERN, MSC_COPY_PATTERN, VGG_MARKER, ConvUnit, resnet_units

#: Backbone names ``--backbone`` takes: the Caffe ResNets and VGG-16.
CONVERTIBLE_BACKBONES = (*CAFFE_BACKBONES, "vgg16")
# torch and the models are imported where used, so that `--help` answers without torch.
if TYPE_CHECKING:
    import torch
    from torch import Tensor

_BACKBONE_PREFIX = "backbone."


def convert_caffemodel(
    path: "str | os.PathLike[str]", num_classes: Optional[int] = None, backbone: Optional[str] = None
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Read the ``.caffemodel`` at ``path`` and convert it; see :func:`convert_layers`."""
    return convert_layers(read_caffemodel(path), num_classes=num_classes, backbone=backbone, source=os.fspath(path))


def convert_layers(
    layers: Sequence[CaffeLayer],
    num_classes: Optional[int] = None,
    backbone: Optional[str] = None,
    source: str = "caffemodel",
) -> tuple[dict[str, Tensor], ConversionReport]:
    """A DeepLabV2 state dict (caffe style, ASPP-L) from the layers of a released DeepLab v2 ResNet.

    Args:
        layers: the net's layers, e.g. from :func:`~.caffemodel.read_caffemodel`.
        num_classes: the class count the checkpoint is for. None: the classifier's own count.
            A classifier with another count is left out (the report says so).
        backbone: ``"resnet101"`` or ``"resnet50"``; None: the one whose layer names the file uses.
        source: how errors and the report name the input.

    Returns the state dict and a :class:`ConversionReport`. Raises ValueError when a backbone
    layer is missing, has the wrong number of blobs, or a blob's shape does not fit its module.
    """
    from ..crf.values import is_integer  # imports torch: not at import time, for `--help`

    if num_classes is not None and (not is_integer(num_classes) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    weighted, msc_copies = _layers_with_weights(layers, source)
    backbone = _choose_backbone(weighted, backbone, source)
    report = ConversionReport(source=source, backbone=backbone, msc_copies=msc_copies)
    if backbone == "vgg16":
        from .vgg import convert_vgg_layers

        state, used = convert_vgg_layers(weighted, num_classes, report, source)
        report.unmapped = [describe_layer(layer) for name, layer in weighted.items() if name not in used]
        return state, report
    expected, feature_channels = _expected_shapes(backbone)

    state: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for unit in resnet_units(backbone):
        if all(name in weighted for name in (unit.conv, unit.batch_norm, unit.scale)):
            state.update(_convert_unit(unit, weighted, expected, report, source))
        missing.extend(name for name in (unit.conv, unit.batch_norm, unit.scale) if name not in weighted)
        used.update((unit.conv, unit.batch_norm, unit.scale))
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} layers of the {backbone} backbone are missing (or have no weights): "
            f"{listing(missing)}"
        )

    head, head_layers = _convert_classifier(weighted, feature_channels, num_classes, report, source)
    used.update(head_layers)
    if head:
        state.update(head)
    else:
        state = {key[len(_BACKBONE_PREFIX) :]: value for key, value in state.items()}
        report.mapped = [line.replace(f"-> {_BACKBONE_PREFIX}", "-> ") for line in report.mapped]
    report.unmapped = [describe_layer(layer) for name, layer in weighted.items() if name not in used]
    return state, report


def save_state_dict(state: Mapping[str, Tensor], path: "str | os.PathLike[str]") -> None:
    """``torch.save`` ``state`` to ``path`` atomically: a temporary file beside it, then a rename."""
    import torch

    with atomic_output(path, "wb", durable=True) as stream:
        torch.save(dict(state), stream)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: convert, print the mapping and the report, write OUTPUT. Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="deeplab convert-caffe",
        description="Convert a released DeepLab .caffemodel (v2 ResNet-101 ASPP-L; v1/v2 VGG-16 LargeFOV, "
        "v2 VGG-16 ASPP-L; their init models) into a DeepLabV2 checkpoint (style 'caffe') that "
        "load_pretrained(model, OUTPUT) loads; the architecture is found from the layer names.",
    )
    parser.add_argument("input", type=Path, help="the .caffemodel (e.g. the VOC model or init.caffemodel)")
    parser.add_argument("output", type=Path, help="where to write the state dict (.pth)")
    parser.add_argument(
        "--num-classes",
        type=_positive_int,
        default=None,
        help="classes of the checkpoint's head; a classifier with another count is left out",
    )
    parser.add_argument(
        "--backbone",
        choices=CONVERTIBLE_BACKBONES,
        default=None,
        help="the backbone (default: found from the layer names)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary, not every mapped tensor")
    args = parser.parse_args(argv)
    try:
        state, report = convert_caffemodel(args.input, num_classes=args.num_classes, backbone=args.backbone)
        save_state_dict(state, args.output)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not args.quiet:
        print("\n".join(report.mapped))
    print(report.summary())
    usage = f"DeepLabV2(backbone={report.backbone!r}, head={report.head!r}, style='caffe'"
    usage += f", num_classes={report.num_classes}" if report.num_classes is not None else ", num_classes=<yours>"
    print(f"wrote {args.output}; load it with load_pretrained({usage}), {str(args.output)!r})")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _layers_with_weights(layers: Sequence[CaffeLayer], source: str) -> tuple[dict[str, CaffeLayer], list[str]]:
    """Layers that hold blobs, by name, minus the MSC copies (returned by name)."""
    weighted: dict[str, CaffeLayer] = {}
    msc_copies = []
    for layer in layers:
        if not layer.blobs:
            continue
        if MSC_COPY_PATTERN.search(layer.name):
            msc_copies.append(layer.name)
            continue
        if layer.name in weighted:
            raise ValueError(
                f"{source}: two layers with weights are named {layer.name!r} "
                f"(bytes {weighted[layer.name].offset} and {layer.offset})"
            )
        weighted[layer.name] = layer
    return weighted, msc_copies


def _choose_backbone(weighted: Mapping[str, CaffeLayer], backbone: Optional[str], source: str) -> str:
    if backbone is not None:
        if backbone not in CONVERTIBLE_BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(CONVERTIBLE_BACKBONES)}, got {backbone!r}")
        return backbone
    if VGG_MARKER in weighted:
        return "vgg16"
    coverage = {name: sum(unit.conv in weighted for unit in resnet_units(name)) for name in CAFFE_BACKBONES}
    best = max(coverage, key=lambda name: coverage[name] / len(resnet_units(name)))
    if coverage[best] == 0:
        raise ValueError(
            f"{source}: no DeepLab ResNet layer (conv1, res2a_branch2a, ...) nor VGG-16 layer ({VGG_MARKER}) with "
            "weights; layers with "
            f"weights: {listing(weighted) or 'none'}"
        )
    return best


def _expected_shapes(backbone: str) -> tuple[dict[str, torch.Size], int]:
    """The backbone's state-dict shapes (``backbone.*`` keys) and its feature channels.

    Read from a model built on the meta device: no memory, no initialisation cost.
    """
    import torch

    from ..models import DeepLabV2

    with torch.device("meta"):
        model = DeepLabV2(backbone, RELEASED_HEAD, num_classes=1, msc_scales=None, style="caffe", norm="frozen")
    shapes = {_BACKBONE_PREFIX + key: value.shape for key, value in model.backbone.state_dict().items()}
    return shapes, model.backbone.out_channels


def _convert_unit(
    unit: ConvUnit,
    weighted: Mapping[str, CaffeLayer],
    expected: Mapping[str, torch.Size],
    report: ConversionReport,
    source: str,
) -> dict[str, Tensor]:
    conv, batch_norm, scale = weighted[unit.conv], weighted[unit.batch_norm], weighted[unit.scale]
    check_blob_count(conv, (1,), "weights only: the model's convs have no bias", source)
    check_blob_count(batch_norm, (2, 3), "mean, variance[, scale factor]", source)
    check_blob_count(scale, (2,), "gamma, beta", source)

    multiplier = 1.0  # Caffe: statistics * (factor == 0 ? 0 : 1 / factor)
    if len(batch_norm.blobs) == 3:
        factor_blob = batch_norm.blobs[2]
        if factor_blob.data.size != 1:
            raise ValueError(
                f"{source}: {batch_norm.name} blob 2 (scale factor) has shape {factor_blob.shape}, expected one value"
            )
        factor = float(factor_blob.data.reshape(-1)[0])
        if factor == 0.0:
            report.zero_scale_factors.append(batch_norm.name)
        multiplier = 0.0 if factor == 0.0 else 1.0 / factor

    values = {
        f"{unit.conv_module}.weight": (conv, 0, 1.0),
        f"{unit.norm_module}.running_mean": (batch_norm, 0, multiplier),
        f"{unit.norm_module}.running_var": (batch_norm, 1, multiplier),
        f"{unit.norm_module}.weight": (scale, 0, 1.0),
        f"{unit.norm_module}.bias": (scale, 1, 1.0),
    }
    converted = {}
    for key, (layer, index, multiplier) in values.items():
        tensor = blob_tensor(layer, index, expected[key], key, source)
        converted[key] = tensor * multiplier if multiplier != 1.0 else tensor
        report.mapped.append(f"{layer.name}[{index}] -> {key}")
    return converted


def _convert_classifier(
    weighted: Mapping[str, CaffeLayer],
    in_channels: int,
    num_classes: Optional[int],
    report: ConversionReport,
    source: str,
) -> tuple[dict[str, Tensor], set[str]]:
    """The ASPP-L head from ``fc1_{tag}_c0..c3``, or nothing (and ``report.head_note``)."""
    import torch

    from ..models import HEADS

    branches = len(HEADS[RELEASED_HEAD])
    groups: dict[str, dict[int, CaffeLayer]] = {}
    for name, layer in weighted.items():
        match = CLASSIFIER_PATTERN.match(name)
        if match:
            groups.setdefault(match["tag"] or "", {})[int(match["branch"])] = layer
    complete = {tag: group for tag, group in groups.items() if sorted(group) == list(range(branches))}
    if len(complete) > 1:
        raise ValueError(f"{source}: several ASPP classifiers: {listing(f'fc1_{tag}_c*' for tag in complete)}")
    if not complete:
        found = listing(sorted(name for group in groups.values() for name in (layer.name for layer in group.values())))
        report.head_note = f"no ASPP-L classifier (fc1_<tag>_c0..c{branches - 1}) in the caffemodel" + (
            f"; incomplete classifier layers: {found}" if found else ""
        )
        return {}, set()

    group = next(iter(complete.values()))
    layers = [group[index] for index in range(branches)]
    for layer in layers:
        check_blob_count(layer, (2,), "weights, bias", source)
    shapes = {layer.blobs[0].shape for layer in layers}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4 or next(iter(shapes))[1:] != (in_channels, 3, 3):
        raise ValueError(
            f"{source}: ASPP classifier weights must all be (classes, {in_channels}, 3, 3); got "
            + ", ".join(f"{layer.name} {layer.blobs[0].shape}" for layer in layers)
        )
    classes = next(iter(shapes))[0]
    names = {layer.name for layer in layers}
    if num_classes is not None and classes != num_classes:
        report.head_note = (
            f"the classifier {layers[0].name}..{layers[-1].name} has {classes} classes, {num_classes} were asked for"
        )
        return {}, names

    head = {}
    for index, layer in enumerate(layers):
        for blob_index, (suffix, shape) in enumerate((("weight", (classes, in_channels, 3, 3)), ("bias", (classes,)))):
            key = f"head.branches.{index}.{suffix}"
            head[key] = blob_tensor(layer, blob_index, torch.Size(shape), key, source)
            report.mapped.append(f"{layer.name}[{blob_index}] -> {key}")
    report.num_classes = classes
    return head, names


if __name__ == "__main__":
    sys.exit(main())
