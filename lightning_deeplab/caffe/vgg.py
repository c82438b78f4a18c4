"""The released DeepLab VGG-16 caffemodels -> DeepLabV2 (backbone ``vgg16``) state dicts.

Covers DeepLab-LargeFOV (v1 and v2: conv1_1..conv5_3, fc6, fc7, fc8_<tag>), the v2 VGG-16
ASPP-L net (fc6_1..4, fc7_1..4, fc8_<tag>_1..4) and their ImageNet ``init`` models (the
conv layers and the decimated 1024-channel fc6 / fc7). Old-style V1 files (``layers``) read
the same way. Layer names, order and shapes follow the official prototxts; ``models/vgg.py``
and ``models/aspp.py`` hold the matching modules.

The state dict is whole-model (``backbone.features.*``, ``head.branches.{i}.fc6/fc7/fc8.*``)
when the file has a classifier of the wanted class count. Otherwise it holds the backbone
(``features.*``) and, for LargeFOV / init models, ``fc6.*`` / ``fc7.*``, which ``DeepLabV2``
copies into every branch of its VGG head; the classifier then stays randomly initialised.
"""

from collections.abc import Mapping
from typing import Optional

import torch
from torch import Tensor, nn

from .caffemodel import CaffeLayer
from .mapping import ConversionReport, blob_tensor, check_blob_count, listing
from .names import (
    ASPP_CLASSIFIER_PATTERN,
    ASPP_FC6_PATTERN,
    LARGEFOV_CLASSIFIER_PATTERN,
    LARGEFOV_FC6,
    LARGEFOV_FC7,
    VGG_CONV_NAMES,
)

#: The head of a VGG caffemodel with four fc6_{i} branches: the released v2 VGG-16 ASPP net is ASPP-L.
ASPP_HEAD = "aspp-l"
LARGEFOV_HEAD = "largefov"
_WEIGHT_BIAS = ("weight", "bias")


def convert_vgg_layers(
    weighted: Mapping[str, CaffeLayer], num_classes: Optional[int], report: ConversionReport, source: str
) -> tuple[dict[str, Tensor], set[str]]:
    """The state dict of a DeepLab VGG-16 caffemodel and the names of the layers it used.

    Fills ``report.head``, ``report.num_classes`` (None when the classifier is left out),
    ``report.head_note`` and ``report.mapped``. Raises ValueError naming the layer when a conv
    layer is missing or a blob does not fit its module.
    """
    missing = [name for name in VGG_CONV_NAMES if name not in weighted]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} VGG-16 conv layers are missing (or have no weights): {listing(missing)}"
        )
    branch_numbers = sorted(int(m["branch"]) for name in weighted if (m := ASPP_FC6_PATTERN.match(name)))
    head = ASPP_HEAD if branch_numbers else LARGEFOV_HEAD
    rates = 4 if branch_numbers else 1
    if branch_numbers and branch_numbers != list(range(1, rates + 1)):
        raise ValueError(f"{source}: VGG-16 ASPP branches fc6_1..fc6_{rates} expected, found fc6_{branch_numbers}")
    report.head = head

    def fit_pair(layer: CaffeLayer, key: str, shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
        check_blob_count(layer, (2,), "weights, bias", source)
        out = {}
        for index, suffix in enumerate(_WEIGHT_BIAS):
            out[f"{key}.{suffix}"] = blob_tensor(layer, index, shapes[f"{key}.{suffix}"], f"{key}.{suffix}", source)
            report.mapped.append(f"{layer.name}[{index}] -> {key}.{suffix}")
        return out

    with torch.device("meta"):
        probe = _vgg_model(head, num_classes=1)
    shapes = {key: value.shape for key, value in probe.state_dict().items()}
    conv_keys = [f"backbone.features.{i}" for i, m in enumerate(probe.backbone.features) if isinstance(m, nn.Conv2d)]
    state: dict[str, Tensor] = {}
    for name, key in zip(VGG_CONV_NAMES, conv_keys):
        state.update(fit_pair(weighted[name], key, shapes))
    used = set(VGG_CONV_NAMES)

    fc_names = [(f"fc6_{i}", f"fc7_{i}") for i in branch_numbers] if branch_numbers else [(LARGEFOV_FC6, LARGEFOV_FC7)]
    absent = [name for pair in fc_names for name in pair if name not in weighted]
    if absent:
        raise ValueError(f"{source}: VGG-16 {head} layers are missing (or have no weights): {listing(absent)}")
    fc_state: dict[str, Tensor] = {}
    for index, (fc6, fc7) in enumerate(fc_names):
        for name, module in ((fc6, "fc6"), (fc7, "fc7")):
            fc_state.update(fit_pair(weighted[name], f"head.branches.{index}.{module}", shapes))
            used.add(name)

    classifier = _find_classifier(weighted, head, rates, report, source)
    classes = _classifier_classes(classifier, source) if classifier else None
    if classes is not None and num_classes is not None and classes != num_classes:
        report.head_note = (
            f"the classifier {classifier[0].name}..{classifier[-1].name} has {classes} classes, "
            f"{num_classes} were asked for"
        )
        used.update(layer.name for layer in classifier)
        classes = None
    if classes is None:
        return _without_classifier(state, fc_state, head, report, used), used

    with torch.device("meta"):
        shapes = {key: value.shape for key, value in _vgg_model(head, classes).state_dict().items()}
    for index, layer in enumerate(classifier):
        state.update(fit_pair(layer, f"head.branches.{index}.fc8", shapes))
        used.add(layer.name)
    state.update(fc_state)
    report.num_classes = classes
    return state, used


def _vgg_model(head: str, num_classes: int) -> nn.Module:
    from ..models import DeepLabV2

    return DeepLabV2("vgg16", head, num_classes=num_classes, msc_scales=None, style="caffe")


def _find_classifier(
    weighted: Mapping[str, CaffeLayer], head: str, rates: int, report: ConversionReport, source: str
) -> Optional[list[CaffeLayer]]:
    """The fc8 layer(s) in branch order, or None (``report.head_note`` says why)."""
    if head == LARGEFOV_HEAD:
        found = [layer for name, layer in weighted.items() if LARGEFOV_CLASSIFIER_PATTERN.match(name)]
        if len(found) > 1:
            raise ValueError(f"{source}: several LargeFOV classifiers: {listing(layer.name for layer in found)}")
        if not found:
            report.head_note = "no LargeFOV classifier (fc8 or fc8_<tag>) in the caffemodel"
        return found or None
    groups: dict[str, dict[int, CaffeLayer]] = {}
    for name, layer in weighted.items():
        match = ASPP_CLASSIFIER_PATTERN.match(name)
        if match:
            groups.setdefault(match["tag"], {})[int(match["branch"])] = layer
    complete = {tag: group for tag, group in groups.items() if sorted(group) == list(range(1, rates + 1))}
    if len(complete) > 1:
        raise ValueError(f"{source}: several ASPP classifiers: {listing(f'fc8_{tag}_*' for tag in complete)}")
    if not complete:
        partial = sorted(layer.name for group in groups.values() for layer in group.values())
        report.head_note = f"no ASPP classifier (fc8_<tag>_1..{rates}) in the caffemodel" + (
            f"; incomplete classifier layers: {listing(partial)}" if partial else ""
        )
        return None
    group = next(iter(complete.values()))
    return [group[index] for index in range(1, rates + 1)]


def _classifier_classes(classifier: list[CaffeLayer], source: str) -> int:
    shapes = {layer.blobs[0].shape for layer in classifier}
    first = next(iter(shapes))
    if len(shapes) != 1 or len(first) not in (2, 4) or (len(first) == 4 and first[2:] != (1, 1)):
        raise ValueError(
            f"{source}: VGG-16 classifier weights must all be (classes, 1024, 1, 1); got "
            + ", ".join(f"{layer.name} {layer.blobs[0].shape}" for layer in classifier)
        )
    return first[0]


def _without_classifier(
    state: dict[str, Tensor], fc_state: dict[str, Tensor], head: str, report: ConversionReport, used: set[str]
) -> dict[str, Tensor]:
    """Backbone keys (``features.*``), plus LargeFOV's ``fc6.*`` / ``fc7.*`` for every branch of a VGG head."""
    backbone = {key.removeprefix("backbone."): value for key, value in state.items()}
    renamed = {f"-> {key}": f"-> {key.removeprefix('backbone.')}" for key in state}
    if head == LARGEFOV_HEAD:
        fc = {key.removeprefix("head.branches.0."): value for key, value in fc_state.items()}
        renamed.update({f"-> {key}": f"-> {key.removeprefix('head.branches.0.')}" for key in fc_state})
        backbone.update(fc)
        note = "fc6 / fc7 are kept (a VGG-16 head copies them into every branch)"
    else:
        fc_layers = sorted({line.split("[", 1)[0] for line in report.mapped if "-> head." in line})
        used.difference_update(fc_layers)  # listed as unmapped: four distinct branches fit no backbone dict
        report.mapped = [line for line in report.mapped if "-> head." not in line]
        note = "the fc6_i / fc7_i branches are not converted either (they belong to a whole-model state dict)"
    report.mapped = [_rename(line, renamed) for line in report.mapped]
    report.head_note = f"{report.head_note}; {note}"
    return backbone


def _rename(line: str, renamed: Mapping[str, str]) -> str:
    source, arrow, key = line.partition(" -> ")
    return f"{source} -> {renamed.get(f'-> {key}', f'-> {key}')[3:]}" if arrow else line
