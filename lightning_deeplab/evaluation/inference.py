"""The evaluation protocol: whole-image and sliding-window inference with test-time
augmentation, and the report of one split's scores (a table and a JSON file).

Plain torch: ``model`` is any callable that maps an RGB 0-255 batch [B, 3, H, W] to class
scores at output stride 8 (:class:`~lightning_deeplab.models.DeepLabV2`, MSC fusion included)
and reads pixels of PAD_VALUE as padding (DeepLabV2 normalises them to its mean colour).

The size rule. Every network here turns an input side of ``8k + 1`` into ``k + 1`` scores whose
``i``-th sample sits on input pixel ``8i`` (the paper's crops, 321 and 513, follow the rule).
Inputs are therefore padded (bottom/right, with PAD_VALUE, which the network normalises
to 0, its mean colour) to ``8k + 1`` and the scores upsampled with ``align_corners=True``, which puts every score
back on the pixel it was computed at, before the padding is cropped away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Literal, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..constants import PAD_VALUE
from .metrics import DEFAULT_MIOU_OVER, scores_from_confusion
from ..models.msc import scaled_size
from ..crf.values import is_integer, is_real

#: Output stride of every DeepLab v2 network.
OUTPUT_STRIDE = 8
#: Valid values of :attr:`InferenceConfig.mode`.
INFERENCE_MODES = ("whole", "slide")
#: The smallest window (or fixed padded size) that still yields more than one score per side.
MIN_WINDOW = OUTPUT_STRIDE

Size = Union[int, tuple[int, int]]
Model = Callable[[Tensor], Tensor]


def _pair(name: str, value: Any, minimum: int) -> tuple[int, int]:
    """``value`` (an int or an (H, W) pair) as a pair of ints >= ``minimum``; errors name ``name``."""
    items = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(items) != 2 or any(not is_integer(v) for v in items):
        raise TypeError(f"inference.{name} must be an int or an (height, width) pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"inference.{name} must be >= {minimum} on each side, got {value!r}")
    return int(items[0]), int(items[1])


@dataclass(frozen=True)
class InferenceConfig:
    """How validation, test and predict run the network on whole images.

    Args:
        mode: ``"whole"``: the image in one pass, padded to the size rule (``8k + 1``), or to at
            least ``pad_to``. ``"slide"``: windows of ``window`` every ``stride`` pixels (the last
            ones shifted back inside the image), overlapping logits averaged; an image smaller
            than the window is padded to it.
        pad_to: whole mode: pad every image to at least this size (an int or (H, W); rounded up
            to the size rule). PASCAL VOC: 513, the paper's test size. None: the size rule only.
        window: slide mode: window size, an int or (H, W), >= 8; ``8k + 1`` keeps the scores on
            their pixels (Cityscapes 2048x1024: 513 or 1025).
        stride: slide mode: step between windows, 1 .. window (default: about 2/3 of the window).
        scales: test-time scales: the image is resized by each, run, resized back, and the
            softmax averaged. Independent of the network's own MSC max fusion.
        flip: also run the left-right mirrored image and average its (mirrored back) softmax.
    """

    mode: Literal["whole", "slide"] = "whole"
    pad_to: Optional[Size] = None
    window: Size = 513
    stride: Optional[Size] = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self) -> None:
        if self.mode not in INFERENCE_MODES:
            raise ValueError(f"inference.mode must be one of {INFERENCE_MODES}, got {self.mode!r}")
        window = _pair("window", self.window, MIN_WINDOW)
        if self.stride is None:
            stride = (max(1, math.ceil(window[0] * 2 / 3)), max(1, math.ceil(window[1] * 2 / 3)))
        else:
            stride = _pair("stride", self.stride, 1)
        if stride[0] > window[0] or stride[1] > window[1]:
            raise ValueError(
                f"inference.stride {self.stride!r} is larger than the window {self.window!r}: "
                "pixels between windows would never be predicted"
            )
        pad_to = None if self.pad_to is None else _pair("pad_to", self.pad_to, MIN_WINDOW)
        scales = self.scales
        if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or len(scales) == 0:
            raise TypeError(f"inference.scales must be a non-empty sequence of numbers, got {scales!r}")
        for scale in scales:
            if not is_real(scale) or not math.isfinite(scale) or scale <= 0:
                raise ValueError(f"inference.scales must hold positive finite numbers, got {scale!r} in {scales!r}")
        if not isinstance(self.flip, bool):
            raise TypeError(f"inference.flip must be a bool, got {self.flip!r}")
        for name, value in (
            ("window", window),
            ("stride", stride),
            ("pad_to", pad_to),
            ("scales", tuple(float(s) for s in scales)),
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def from_value(cls, value: Union["InferenceConfig", Mapping[str, Any], None]) -> "InferenceConfig":
        """``value`` as a config: itself, a mapping of its fields (as saved in checkpoints), or
        the defaults for None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in fields(cls)}
            if unknown:
                valid = [f.name for f in fields(cls)]
                raise TypeError(f"inference: unknown setting(s) {sorted(unknown)}; valid: {valid}")
            return cls(**value)
        raise TypeError(f"inference must be an InferenceConfig, a mapping or None, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for pairs), as stored in hyperparameters and reports."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ------------------------------------------------------------------------------- inference
def padded_side(side: int, minimum: int = 0) -> int:
    """The smallest ``8k + 1`` that is >= ``side`` and >= ``minimum``."""
    target = max(int(side), int(minimum), 1)
    return (target - 1 + OUTPUT_STRIDE - 1) // OUTPUT_STRIDE * OUTPUT_STRIDE + 1


def pad_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``image`` [B, 3, H, W] padded at the bottom/right to ``size`` with PAD_VALUE, which the
    network's normalisation turns into its mean colour (as the training crops' padding)."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image
    if size[0] < height or size[1] < width:
        raise ValueError(f"cannot pad an image of {height}x{width} to the smaller {size[0]}x{size[1]}")
    padded = torch.full((*image.shape[:-2], *size), PAD_VALUE, dtype=image.dtype, device=image.device)
    padded[..., :height, :width] = image
    return padded


def upsample_aligned(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """Scores of an ``8k + 1`` input bilinearly upsampled to that input's ``size``, each score
    staying on its pixel (``align_corners=True``)."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=True)


def _check_image(image: Tensor) -> None:
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != 3 or not image.is_floating_point():
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a float tensor [B, 3, H, W] (RGB, 0-255), got {got}")


def whole_logits(model: Model, image: Tensor, pad_to: Optional[tuple[int, int]] = None) -> Tensor:
    """Logits [B, C, H, W] of the whole image in one pass: padded to the size rule (at least
    ``pad_to``), run, upsampled to the padded size, cropped back to the image."""
    _check_image(image)
    height, width = image.shape[-2:]
    minimum = pad_to or (0, 0)
    size = (padded_side(height, minimum[0]), padded_side(width, minimum[1]))
    logits = upsample_aligned(model(pad_image(image, size)), size)
    return logits[..., :height, :width]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along one side: every ``stride``, the last one moved back so
    that it ends on the border (windows never reach past the image)."""
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return [min(i * stride, length - window) for i in range(count)]


def slide_logits(model: Model, image: Tensor, window: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Logits [B, C, H, W] averaged over overlapping windows (each window run whole, its logits
    upsampled to the window); an image smaller than the window is padded to it."""
    _check_image(image)
    height, width = image.shape[-2:]
    size = (max(height, window[0]), max(width, window[1]))
    padded = pad_image(image, size)
    total: Optional[Tensor] = None
    count = torch.zeros((1, 1, *size), dtype=torch.float32, device=image.device)
    for top in window_starts(size[0], window[0], stride[0]):
        for left in window_starts(size[1], window[1], stride[1]):
            rows, cols = slice(top, top + window[0]), slice(left, left + window[1])
            logits = upsample_aligned(model(padded[..., rows, cols]), window).float()
            if total is None:
                total = logits.new_zeros((image.shape[0], logits.shape[1], *size))
            total[..., rows, cols] += logits
            count[..., rows, cols] += 1
    assert total is not None  # window_starts yields at least one window per side
    return (total / count)[..., :height, :width]


def infer_logits(model: Model, image: Tensor, config: InferenceConfig) -> Tensor:
    """Logits [B, C, H, W] at the image size for one pass in ``config.mode`` (no augmentation)."""
    if config.mode == "slide":
        return slide_logits(model, image, config.window, config.stride)
    return whole_logits(model, image, config.pad_to)


def infer_probabilities(model: Model, image: Tensor, config: Optional[InferenceConfig] = None) -> Tensor:
    """Class probabilities [B, C, H, W] (float32, softmax over C) at the size of ``image``.

    One pass per (scale, flip) of ``config``: the image resized by the scale (sides
    ``ceil(side * scale)``, bilinear) and optionally mirrored, run in ``config.mode``, its logits
    mirrored back, resized to the image and turned into probabilities; the result is their mean.
    """
    config = config or InferenceConfig()
    _check_image(image)
    height, width = image.shape[-2:]
    total: Optional[Tensor] = None
    runs = 0
    for scale in config.scales:
        scaled = image
        if scale != 1.0:
            scaled_hw = (scaled_size(height, scale), scaled_size(width, scale))
            scaled = F.interpolate(image, size=scaled_hw, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if config.flip else (False,):
            logits = infer_logits(model, scaled.flip(-1) if mirrored else scaled, config)
            if mirrored:
                logits = logits.flip(-1)
            if scale != 1.0:
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probs = logits.float().softmax(dim=1)
            total = probs if total is None else total + probs
            runs += 1
    assert total is not None
    return total / runs if runs > 1 else total


# ------------------------------------------------------------------------------ the report
def _finite_or_none(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def _scores_dict(confusion: Tensor, class_names: Sequence[str], miou_over: str) -> dict[str, Any]:
    scores = scores_from_confusion(confusion, miou_over)
    if len(class_names) != confusion.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {tuple(confusion.shape)} confusion matrix")
    return {
        "mIoU": _finite_or_none(float(scores["mIoU"])),
        "pixel_acc": _finite_or_none(float(scores["pixel_acc"])),
        "mean_acc": _finite_or_none(float(scores["mean_acc"])),
        "fw_iou": _finite_or_none(float(scores["fw_iou"])),
        "miou_over": miou_over,
        "iou": {name: _finite_or_none(float(v)) for name, v in zip(class_names, scores["iou"])},
        "confusion": confusion.long().tolist(),
    }


def scores_report(
    class_names: Sequence[str],
    confusion: Tensor,
    confusion_crf: Optional[Tensor] = None,
    miou_over: str = DEFAULT_MIOU_OVER,
) -> dict[str, Any]:
    """The protocol's scores of one split, without and (when given) with the CRF.

    ``confusion``: the [C, C] matrix summed over the whole split (rows: ground truth, columns:
    prediction). Returns ``{"classes", "num_pixels", "without_crf": {mIoU, pixel_acc, mean_acc,
    fw_iou, miou_over, iou: {class: IoU}, confusion}, "with_crf": ... or None}``; a class present
    neither in the ground truth nor in the predictions has IoU None; ``miou_over`` says which
    classes the means run over (see :mod:`lightning_deeplab.evaluation.metrics`; default: all, as DeepLab's
    official evaluation).
    """
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix, got shape {tuple(confusion.shape)}")
    return {
        "classes": list(class_names),
        "num_pixels": int(confusion.sum()),
        "without_crf": _scores_dict(confusion, class_names, miou_over),
        "with_crf": None if confusion_crf is None else _scores_dict(confusion_crf, class_names, miou_over),
    }


_SUMMARY_ROWS = (
    ("mIoU", "mIoU"),
    ("pixel accuracy", "pixel_acc"),
    ("mean accuracy", "mean_acc"),
    ("frequency-weighted IoU", "fw_iou"),
)


def format_scores_table(report: Mapping[str, Any], title: str = "") -> str:
    """A text table of a :func:`scores_report`: one row per class (IoU, %), then mIoU, pixel
    accuracy, mean accuracy and frequency-weighted IoU; columns without and with the CRF."""
    columns = [("IoU", report["without_crf"])]
    if report.get("with_crf") is not None:
        columns.append(("IoU with CRF", report["with_crf"]))

    def cell(value: Optional[float]) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    rows = [(name, [cell(s["iou"][name]) for _, s in columns]) for name in report["classes"]]
    summary = [(label, [cell(s[key]) for _, s in columns]) for label, key in _SUMMARY_ROWS]
    first = max(len(r[0]) for r in rows + summary + [("class", [])])
    widths = [max(len(head), 6) for head, _ in columns]

    def line(label: str, cells: Sequence[str]) -> str:
        return "  ".join([label.ljust(first), *(c.rjust(w) for c, w in zip(cells, widths))]).rstrip()

    rule = "-" * (first + sum(w + 2 for w in widths))
    out = [title] if title else []
    out += [line("class", [head for head, _ in columns]), rule, *(line(n, c) for n, c in rows), rule]
    out += [line(n, c) for n, c in summary]
    return "\n".join(out)
