import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lightning_deeplab.constants import IGNORE_INDEX
from lightning_deeplab.data import SYNTHETIC_CLASSES, VOC_PALETTE, SyntheticSource, generate_synthetic_voc
from lightning_deeplab.data import synthetic as synthetic_module

SMALL = {"num_train": 10, "num_val": 4, "image_size": (48, 64), "seed": 3}


def tree_bytes(voc_root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(voc_root)): p.read_bytes() for p in sorted(voc_root.rglob("*")) if p.is_file()}


def load_split(voc_root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    ids = (voc_root / "ImageSets/Segmentation" / f"{split}.txt").read_text().split()
    images = np.stack([np.asarray(Image.open(voc_root / "JPEGImages" / f"{i}.jpg")) for i in ids])
    labels = np.stack([np.asarray(Image.open(voc_root / "SegmentationClass" / f"{i}.png")) for i in ids])
    return images.astype(np.float32), labels


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    return generate_synthetic_voc(tmp_path_factory.mktemp("synthetic"), **SMALL)


@pytest.fixture(scope="module")
def demo_sized_tree(tmp_path_factory) -> Path:
    """Images at the default size, enough of them for statistics."""
    return generate_synthetic_voc(tmp_path_factory.mktemp("synthetic_stats"), num_train=40, num_val=12, seed=1)


def test_layout_is_the_voc_layout(small_tree):
    assert small_tree.parts[-2:] == ("VOCdevkit", "VOC2012")
    lists = {
        s: (small_tree / "ImageSets/Segmentation" / f"{s}.txt").read_text().split()
        for s in ("train", "val", "trainval", "train_aug")
    }
    assert len(lists["train"]) == 10 and len(lists["val"]) == 4
    assert lists["trainval"] == lists["train"] + lists["val"] and lists["train_aug"] == lists["train"]
    assert not set(lists["train"]) & set(lists["val"])
    for name in lists["trainval"]:
        image = Image.open(small_tree / "JPEGImages" / f"{name}.jpg")
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 48)
        official = Image.open(small_tree / "SegmentationClass" / f"{name}.png")
        aug = Image.open(small_tree / "SegmentationClassAug" / f"{name}.png")
        assert official.mode == "P" and aug.mode == "L"
        assert np.array_equal(np.asarray(official.getpalette()).reshape(-1, 3)[:256], VOC_PALETTE)
        assert np.array_equal(np.asarray(official), np.asarray(aug))


def test_labels_have_objects_and_ignore_borders_between_classes(demo_sized_tree):
    _, labels = load_split(demo_sized_tree, "train")
    values = set(np.unique(labels).tolist())
    assert values == set(range(len(SYNTHETIC_CLASSES))) | {IGNORE_INDEX}  # every class occurs
    assert all(np.any((lab > 0) & (lab != IGNORE_INDEX)) for lab in labels)  # objects in each image
    # every change of class is separated by 255: no two different classes touch directly
    for a, b in ((labels[:, :, 1:], labels[:, :, :-1]), (labels[:, 1:], labels[:, :-1])):
        both_valid = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
        assert np.all(a[both_valid] == b[both_valid])
    # ... by a thin band: a few pixels wide, a small share of the image
    assert 0.02 < np.mean(labels == IGNORE_INDEX) < 0.2
    for label in labels[:5]:
        eroded = cv2.erode((label == IGNORE_INDEX).astype(np.uint8), np.ones((5, 5), np.uint8))
        assert not eroded.any()  # no 5x5 square of border anywhere


def test_classes_are_recognisable_from_local_colour_and_texture(demo_sized_tree):
    """A per-pixel Gaussian classifier on the 5x5 mean and spread of each colour channel,
    fitted on train, segments val almost perfectly: no shape or context is needed."""

    def features(images):
        out = []
        for image in images:
            mean = cv2.blur(image, (5, 5))
            spread = np.sqrt(np.maximum(cv2.blur(image * image, (5, 5)) - mean * mean, 0))
            out.append(np.concatenate([mean, spread], axis=-1))
        return np.stack(out)

    train_images, train_labels = load_split(demo_sized_tree, "train")
    val_images, val_labels = load_split(demo_sized_tree, "val")
    train_x, val_x = features(train_images), features(val_images)
    scores = []
    for cls in range(len(SYNTHETIC_CLASSES)):
        x = train_x[train_labels == cls]
        cov = np.cov(x.T) + np.eye(x.shape[1])
        diff = val_x - x.mean(0)
        scores.append(
            -0.5 * np.einsum("...i,ij,...j->...", diff, np.linalg.inv(cov), diff) - 0.5 * np.linalg.slogdet(cov)[1]
        )
    pred = np.argmax(np.stack(scores, -1), -1)
    valid = val_labels != IGNORE_INDEX
    ious = [
        np.sum((pred == c) & (val_labels == c) & valid) / np.sum(((pred == c) | (val_labels == c)) & valid)
        for c in range(len(SYNTHETIC_CLASSES))
    ]
    assert min(ious) > 0.75 and np.mean(ious) > 0.92, ious


def test_object_edges_are_colour_edges(demo_sized_tree):
    images, labels = load_split(demo_sized_tree, "train")
    gradient = np.stack(
        [
            sum(
                np.abs(cv2.Sobel(im[..., k], cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(im[..., k], cv2.CV_32F, 0, 1))
                for k in range(3)
            )
            for im in images
        ]
    )
    border = labels == IGNORE_INDEX
    interior = np.stack(
        [cv2.erode((lab != IGNORE_INDEX).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0 for lab in labels]
    )
    assert gradient[border].mean() > 3 * gradient[interior].mean()


def _miou(preds, labels, num_classes: int) -> float:
    valid = labels != IGNORE_INDEX
    confusion = np.bincount(num_classes * labels[valid].astype(int) + preds[valid], minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    tp = np.diag(confusion)
    return float(np.mean(tp / (confusion.sum(0) + confusion.sum(1) - tp)))


def test_coarse_predictions_miss_boundaries_that_a_dense_crf_recovers(demo_sized_tree):
    """The best an output-stride-8 network can output (the true labels averaged over 8x8 cells,
    bilinearly upsampled) is wrong along object boundaries; a dense CRF on the image removes
    most of that error, because the object edges are colour edges."""
    import pydensecrf.densecrf as dcrf  # a test dependency (`make install`): never skipped
    import torch

    images, labels = load_split(demo_sized_tree, "val")
    n = len(SYNTHETIC_CLASSES)
    onehot = torch.from_numpy(np.stack([labels == c for c in range(n)], 1).astype(np.float32))
    cells = torch.nn.functional.avg_pool2d(onehot, 8, ceil_mode=True)
    cells = 0.9 * cells / cells.sum(1, keepdim=True).clamp_min(1e-6) + 0.1 / n
    logits = torch.nn.functional.interpolate(cells.log(), size=labels.shape[1:], mode="bilinear")
    probs = logits.softmax(1).numpy()
    coarse = probs.argmax(1)
    refined = []
    for image, prob in zip(images, probs):
        h, w = image.shape[:2]
        crf = dcrf.DenseCRF2D(w, h, n)
        crf.setUnaryEnergy(np.ascontiguousarray(-np.log(prob.reshape(n, -1))))
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=20, srgb=13, rgbim=np.array(image, np.uint8, order="C"), compat=5)
        refined.append(np.argmax(np.array(crf.inference(10)).reshape(n, h, w), 0))
    coarse_miou, crf_miou = _miou(coarse, labels, n), _miou(np.stack(refined), labels, n)
    assert coarse_miou < 0.99  # (about 0.985 here)
    assert 1 - crf_miou < 0.5 * (1 - coarse_miou), (coarse_miou, crf_miou)  # (about 0.995)


def test_deterministic_for_a_seed(small_tree, tmp_path):
    again = generate_synthetic_voc(tmp_path / "again", **SMALL)
    assert tree_bytes(again) == tree_bytes(small_tree)
    other = generate_synthetic_voc(tmp_path / "other", **{**SMALL, "seed": 4})
    assert (other / "JPEGImages/train_00000.jpg").read_bytes() != (
        small_tree / "JPEGImages/train_00000.jpg"
    ).read_bytes()


def test_idempotent_and_regenerated_when_parameters_change(tmp_path):
    voc = generate_synthetic_voc(tmp_path, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in voc.rglob("*")}
    assert generate_synthetic_voc(tmp_path, **SMALL) == voc
    assert {p: p.stat().st_mtime_ns for p in voc.rglob("*")} == stamps  # nothing rewritten
    generate_synthetic_voc(tmp_path, **{**SMALL, "num_val": 5})
    assert len((voc / "ImageSets/Segmentation/val.txt").read_text().split()) == 5
    assert json.loads((voc / synthetic_module.MARKER_NAME).read_text())["num_val"] == 5


def test_interrupted_generation_leaves_nothing_and_is_redone(small_tree, tmp_path, monkeypatch):
    real_render, calls = synthetic_module.render_sample, []

    def render_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt  # as if the user stopped the run half-way
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic_module, "render_sample", render_then_fail)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_voc(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []  # neither a tree nor a temporary folder is left
    monkeypatch.setattr(synthetic_module, "render_sample", real_render)
    assert tree_bytes(generate_synthetic_voc(tmp_path, **SMALL)) == tree_bytes(small_tree)


def test_incomplete_tree_is_regenerated_not_read(small_tree, tmp_path):
    voc = generate_synthetic_voc(tmp_path, **SMALL)
    # a tree cut short: marker and some files gone (e.g. a copy that was interrupted)
    (voc / synthetic_module.MARKER_NAME).unlink()
    for image in sorted((voc / "JPEGImages").iterdir())[5:]:
        image.unlink()
    source = SyntheticSource(tmp_path, **SMALL)
    dataset = source.dataset("train")
    assert len(dataset) == 10 and dataset[9]["image"].shape == (3, 48, 64)
    assert tree_bytes(voc) == tree_bytes(small_tree)


def test_leftovers_of_a_dead_generator_are_removed(tmp_path):
    stale = tmp_path / f"{synthetic_module._PARTIAL_PREFIX}999999999-abc"  # beyond any pid
    (stale / "VOC2012").mkdir(parents=True)
    generate_synthetic_voc(tmp_path, **SMALL)
    assert not stale.exists()


def test_a_foreign_voc_tree_is_never_replaced(make_voc):
    root = make_voc({"a": (24, 32)}, {"val": ["a"]})
    with pytest.raises(FileExistsError, match="VOCdevkit"):
        generate_synthetic_voc(root, **SMALL)
    assert (root / "VOCdevkit/VOC2012/JPEGImages/a.jpg").is_file()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"image_size": (16, 64)}, "image_size"),
        ({"image_size": (48, 64, 3)}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic_voc(tmp_path, **{**SMALL, **kwargs})
    assert not (tmp_path / "VOCdevkit").exists()


def test_square_size_from_one_int(tmp_path):
    voc = generate_synthetic_voc(tmp_path, num_train=1, num_val=1, image_size=40)
    assert Image.open(voc / "JPEGImages/train_00000.jpg").size == (40, 40)
    assert os.path.isfile(voc / "SegmentationClassAug/val_00000.png")
