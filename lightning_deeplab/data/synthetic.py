"""A synthetic segmentation set written in the PASCAL VOC layout, for demos and tests.

Each image is a textured background with a few overlapping shapes. A shape's class decides its
outline, its colour and its texture, so the class can be told from local colour/texture alone,
and every object edge is a visible colour edge (the dense CRF's cue). Edges are anti-aliased and
slightly blurred, and the labels carry a band of 255 along object borders, like VOC.

Generation is deterministic for a seed and idempotent: the tree is built in a temporary folder
beside its final place, finished with a marker file, and moved into place in one rename, so an
interrupted run never leaves a tree that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ..constants import IGNORE_INDEX
from .files import write_index_png
from .palette import VOC_PALETTE
from .source import JointTransform, SegmentationSource
from .voc import AUG_LABEL_DIR, AUG_SPLIT, IMAGE_DIR, LABEL_DIR, SPLIT_DIR, VOCSegmentation

#: Class names of the synthetic set, indexed by label value.
SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "disc", "box", "triangle", "star", "blob")

#: Per object class: base RGB colour and texture. Saturated colours on a greyish background.
_STYLES = {
    1: ((205, 45, 40), "shading"),
    2: ((35, 80, 205), "stripes"),
    3: ((40, 165, 55), "dots"),
    4: ((225, 195, 35), "checker"),
    5: ((150, 55, 175), "speckle"),
}

#: Bump when the content changes, so trees written by an older generator are rewritten.
GENERATOR_VERSION = 1
MARKER_NAME = ".synthetic-complete.json"  # in VOC2012/, written last
OWNER_STAMP = ".synthetic-voc"  # in VOCdevkit/, marks a tree this module may delete
_PARTIAL_PREFIX = ".VOCdevkit.partial-"
_SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down: anti-aliased coverage
_BORDER_RADIUS = 1  # pixels within this distance of a label change become 255 (~2-3 px band)

ImageSize = Union[int, Sequence[int]]


def _as_size(image_size: ImageSize) -> tuple[int, int]:
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"image_size must be an int or (height, width), each >= 32, got {image_size!r}")
    return size  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# drawing


def _outline(cls: int, centre: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Polygon vertices ([N, 2], x/y in pixels) of one object of class ``cls``."""
    angle = rng.uniform(0, 2 * np.pi)
    if cls == 1:  # disc: an ellipse
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        local = np.stack([np.cos(t), rng.uniform(0.65, 1.0) * np.sin(t)], 1) * radius
    elif cls == 2:  # box: a rectangle
        half = np.array([1.0, rng.uniform(0.55, 1.0)]) * radius * 0.9
        local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    elif cls == 3:  # triangle
        t = np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(-0.25, 0.25, 3)
        local = np.stack([np.cos(t), np.sin(t)], 1) * radius * rng.uniform(0.95, 1.2, (3, 1))
    elif cls == 4:  # star: five points
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.45, 0.6)) * radius * 1.1
        local = np.stack([np.cos(t), np.sin(t)], 1) * r[:, None]
    else:  # blob: a radius modulated by a few low harmonics
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        r = np.ones_like(t)
        for k in (2, 3, 4):
            r += rng.uniform(0, 0.16) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        local = np.stack([np.cos(t), np.sin(t)], 1) * r[:, None] * radius
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return local @ rotation.T + centre


def _coverage(polygon: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fraction of each pixel covered by ``polygon``: float32 HxW in [0, 1]."""
    h, w = size
    canvas = Image.new("L", (w * _SUPERSAMPLE, h * _SUPERSAMPLE), 0)
    points = ((polygon + 0.5) * _SUPERSAMPLE - 0.5).ravel().tolist()
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    fine = np.asarray(canvas, dtype=np.float32) / 255.0
    return cv2.resize(fine, (w, h), interpolation=cv2.INTER_AREA)


def _texture(kind: str, grid: tuple[np.ndarray, np.ndarray], centre, radius, rng) -> np.ndarray:
    """A pattern in [-1, 1] over the whole frame, oriented and phased at random."""
    ys, xs = grid
    angle = rng.uniform(0, np.pi)
    u = (xs - centre[0]) * np.cos(angle) + (ys - centre[1]) * np.sin(angle)
    v = -(xs - centre[0]) * np.sin(angle) + (ys - centre[1]) * np.cos(angle)
    if kind == "shading":
        return np.clip(u / radius, -1, 1)
    if kind == "stripes":
        return np.sin(2 * np.pi * u / rng.uniform(5, 7))
    if kind == "dots":
        period = rng.uniform(5.5, 7)
        return np.where(np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period) > 0.45, 1.0, -0.4)
    if kind == "checker":
        period = rng.uniform(7, 9)
        return np.sign(np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period))
    return np.clip(rng.normal(0, 0.6, xs.shape), -1, 1)  # speckle


def _background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Greyish ground with smooth blotches and fine grain: float32 HxWx3."""
    h, w = size
    base = rng.uniform(90, 165) + rng.uniform(-12, 12, 3)
    blotches = cv2.resize(rng.normal(0, 1, (4, 5)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 0.8)
    shade = 22 * blotches + 12 * grain
    return (base[None, None, :] + shade[..., None] * rng.uniform(0.8, 1.2, 3)).astype(np.float32)


def _border_band(label: np.ndarray) -> np.ndarray:
    """Pixels within ``_BORDER_RADIUS`` of a different label value."""
    padded = np.pad(label, _BORDER_RADIUS, mode="edge")
    h, w = label.shape
    band = np.zeros(label.shape, dtype=bool)
    span = 2 * _BORDER_RADIUS + 1
    for dy in range(span):
        for dx in range(span):
            band |= padded[dy : dy + h, dx : dx + w] != label
    return band


def render_sample(size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image (uint8 HxWx3) and its label (uint8 HxW, 255 on object borders)."""
    h, w = size
    grid = np.mgrid[0:h, 0:w].astype(np.float32)
    image = _background(size, rng)
    label = np.zeros(size, dtype=np.uint8)
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        radius = rng.uniform(0.14, 0.34) * min(h, w)
        centre = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h])
        cover = _coverage(_outline(cls, centre, radius, rng), size)
        label[cover >= 0.5] = cls
        softness = rng.uniform(0.0, 1.0)  # some objects get softer edges than others
        alpha = cv2.GaussianBlur(cover, (0, 0), softness) if softness > 0.3 else cover
        colour, kind = _STYLES[cls]
        colour = np.asarray(colour, np.float32) * rng.uniform(0.85, 1.1) + rng.uniform(-18, 18, 3)
        pattern = _texture(kind, (grid[0], grid[1]), centre, radius, rng)
        layer = colour[None, None, :] * (1 + 0.22 * pattern[..., None])
        image = image * (1 - alpha[..., None]) + layer * alpha[..., None]
    image = cv2.GaussianBlur(image, (0, 0), 0.6) + rng.normal(0, 2.5, image.shape)
    label[_border_band(label)] = IGNORE_INDEX
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


# ---------------------------------------------------------------------------------------------
# the tree on disk


def _read_marker(voc_root: Path) -> Optional[dict]:
    try:
        return json.loads((voc_root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _remove_stale_partials(root: Path) -> None:
    """Delete temporary trees left by generators that died (their process no longer runs)."""
    for partial in root.glob(_PARTIAL_PREFIX + "*"):
        try:
            pid = int(partial.name[len(_PARTIAL_PREFIX) :].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _write_tree(voc_root: Path, size: tuple[int, int], splits: dict[str, int], seed: int) -> None:
    for folder in (IMAGE_DIR, LABEL_DIR, AUG_LABEL_DIR, str(SPLIT_DIR)):
        (voc_root / folder).mkdir(parents=True)
    ids: dict[str, list[str]] = {}
    for split_index, (split, count) in enumerate(splits.items()):
        ids[split] = []
        for i in range(count):
            # one stream per image: an image does not change when the other split's size does
            rng = np.random.default_rng([seed, split_index, i])
            name = f"{split}_{i:05d}"
            image, label = render_sample(size, rng)
            Image.fromarray(image).save(voc_root / IMAGE_DIR / f"{name}.jpg", quality=92)
            write_index_png(voc_root / LABEL_DIR / f"{name}.png", label, VOC_PALETTE)
            write_index_png(voc_root / AUG_LABEL_DIR / f"{name}.png", label)
            ids[split].append(name)
    lists = {"train": ids["train"], "val": ids["val"], "trainval": ids["train"] + ids["val"]}
    lists[AUG_SPLIT] = ids["train"]  # so recipes that name the paper's split run on it
    for split, names in lists.items():
        (voc_root / SPLIT_DIR / f"{split}.txt").write_text("".join(n + "\n" for n in names))


def generate_synthetic_voc(
    root: Union[str, Path],
    num_train: int = 400,
    num_val: int = 60,
    image_size: ImageSize = (120, 160),
    seed: int = 0,
) -> Path:
    """Write the synthetic set to ``root/VOCdevkit/VOC2012`` unless it is already there; return
    that path.

    Args:
        root: folder to hold ``VOCdevkit/`` (created if missing).
        num_train, num_val: number of images in the ``train`` and ``val`` lists (``train_aug``
            repeats ``train``; ``trainval`` is both).
        image_size: ``(height, width)`` of every image, or one int for square images.
        seed: the same seed and sizes give byte-identical files.

    A tree written with other parameters (or left incomplete) is replaced; a ``VOCdevkit``
    that this function did not write is never touched (FileExistsError).
    """
    for arg, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    size = _as_size(image_size)
    root = Path(root).expanduser()
    devkit = root / "VOCdevkit"
    voc_root = devkit / "VOC2012"
    params = {
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": list(size),
        "seed": seed,
    }
    if _read_marker(voc_root) == params:
        return voc_root
    if devkit.exists():
        if not (devkit / OWNER_STAMP).is_file():
            raise FileExistsError(
                f"{devkit} exists and was not written by the synthetic generator; refusing to "
                "replace it (give the synthetic dataset a root of its own)"
            )
        shutil.rmtree(devkit)  # ours, but incomplete or made with other parameters
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    partial = Path(tempfile.mkdtemp(prefix=f"{_PARTIAL_PREFIX}{os.getpid()}-", dir=root))
    try:
        (partial / OWNER_STAMP).write_text("written by lightning_deeplab.data.synthetic\n")
        _write_tree(partial / "VOC2012", size, {"train": num_train, "val": num_val}, seed)
        (partial / "VOC2012" / MARKER_NAME).write_text(json.dumps(params))
        try:
            os.rename(partial, devkit)
        except OSError:
            # another process moved its identical tree into place first
            if _read_marker(voc_root) != params:
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return voc_root


class SyntheticSource(SegmentationSource):
    """The synthetic set under ``root``, generated on first use and read as a VOC tree.

    Args:
        root: the folder it is generated into (``root/VOCdevkit/VOC2012``).
        num_train, num_val: samples of the ``train`` (and ``train_aug``) and ``val`` splits.
        image_size: (height, width), or one int for square images.
        seed: seed of the generation.
    """

    class_names = SYNTHETIC_CLASSES
    palette = VOC_PALETTE
    generates_data = True

    def __init__(
        self,
        root: Union[str, Path],
        num_train: int = 400,
        num_val: int = 60,
        image_size: ImageSize = (120, 160),
        seed: int = 0,
    ) -> None:
        super().__init__(root)
        self.options = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed}

    @property
    def init_args(self) -> dict[str, Any]:
        return {**super().init_args, **self.options}

    def prepare(self) -> None:
        generate_synthetic_voc(self.root, **self.options)

    def dataset(self, split: str, transform: Optional[JointTransform] = None) -> VOCSegmentation:
        # a no-op when prepare() already ran; generates when used without a Trainer
        voc_root = generate_synthetic_voc(self.root, **self.options)
        return VOCSegmentation(voc_root, split, self.num_classes, transform)
