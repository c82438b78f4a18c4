import sys

import numpy as np
import pytest
import torch
from dataset_layouts import write_cocostuff10k, write_cocostuff164k, write_gray, write_mat_label

from lightning_deeplab.constants import IGNORE_INDEX
from lightning_deeplab.data import COCO_STUFF_CLASSES, CocoStuff10k, CocoStuff164k

H, W = 6, 10


def test_class_list_is_the_171_used_ids():
    assert len(COCO_STUFF_CLASSES) == 171 and len(set(COCO_STUFF_CLASSES)) == 171
    # 80 things then 91 stuff classes, in id order
    assert COCO_STUFF_CLASSES[:3] == ("person", "bicycle", "car")
    assert COCO_STUFF_CLASSES[11] == "stop sign"  # id 13: id 12 (street sign) is unused
    assert COCO_STUFF_CLASSES[79] == "toothbrush" and COCO_STUFF_CLASSES[80] == "banner"
    assert COCO_STUFF_CLASSES[-1] == "wood"
    for unused in (
        "street sign",
        "hat",
        "shoe",
        "eye glasses",
        "plate",
        "mirror",
        "window",
        "desk",
        "door",
        "blender",
        "hair brush",
    ):
        assert unused not in COCO_STUFF_CLASSES


def stored_values_label(values) -> np.ndarray:
    label = np.full(H * W, IGNORE_INDEX, np.uint8)
    label[: len(values)] = values
    return label.reshape(H, W)


def test_164k_png_values_map_to_contiguous_classes(tmp_path):
    # stored value = id - 1: 0 person, 11 street sign (unused), 12 stop sign, 90 hair brush
    # (unused), 91 banner (first stuff), 181 wood, 255 unlabeled
    stored = [0, 11, 12, 90, 91, 181, 255]
    root = write_cocostuff164k(tmp_path, "val2017", {"000000000139": stored_values_label(stored)})
    dataset = CocoStuff164k(root, "val2017")
    mask = dataset[0]["mask"].reshape(-1)[: len(stored)].tolist()
    assert mask == [0, IGNORE_INDEX, 11, IGNORE_INDEX, 80, 170, IGNORE_INDEX]
    assert dataset[0]["name"] == "000000000139" and dataset[0]["image"].shape == (3, H, W)


def test_164k_split_aliases_and_order(tmp_path):
    labels = {name: np.zeros((H, W), np.uint8) for name in ("000000000285", "000000000009")}
    root = write_cocostuff164k(tmp_path, "train2017", labels)
    assert [s.name for s in CocoStuff164k(root, "train").samples] == ["000000000009", "000000000285"]


def test_164k_value_that_is_no_coco_stuff_id(tmp_path):
    root = write_cocostuff164k(tmp_path, "val2017", {"a": stored_values_label([3, 182, 254])})
    message = r"annotations/val2017/a\.png holds values \{182, 254\} that are not COCO-Stuff"
    with pytest.raises(ValueError, match=message):
        CocoStuff164k(root, "val2017")[0]


def test_164k_missing_annotation_and_size_mismatch(tmp_path):
    root = write_cocostuff164k(tmp_path, "val2017", {"a": np.zeros((H, W), np.uint8), "b": np.zeros((H, W), np.uint8)})
    write_gray(root / "annotations/val2017/a.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(ValueError, match=r"a\.png is 7x10 .* image is 6x10"):
        CocoStuff164k(root, "val2017")[0]
    (root / "annotations/val2017/b.png").unlink()
    message = r"annotation of image .*images/val2017/b\.jpg: .*b\.png does not exist"
    with pytest.raises(FileNotFoundError, match=message):
        CocoStuff164k(root, "val2017")


def test_164k_empty_or_missing_split(tmp_path):
    root = write_cocostuff164k(tmp_path, "val2017", {"a": np.zeros((H, W), np.uint8)})
    with pytest.raises(FileNotFoundError, match=r"images/train2017 .*splits present: \['val2017'\]"):
        CocoStuff164k(root, "train2017")
    (root / "images/test2017").mkdir()
    (root / "annotations/test2017").mkdir()
    with pytest.raises(ValueError, match=r"empty split: no \.jpg images in .*images/test2017"):
        CocoStuff164k(root, "test2017")
    (tmp_path / "no_annotations" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"COCO-Stuff 164k folder .*no_annotations/annotations does not"):
        CocoStuff164k(tmp_path / "no_annotations", "val2017")


# -- COCO-Stuff 10k (.mat annotations) -----------------------------------------------------------


def test_10k_mat_ids_map_to_the_same_classes(tmp_path):
    # stored: the id itself (1-based), 0 = unlabeled
    ids = [1, 12, 13, 92, 182, 0]
    label = np.zeros(H * W, np.uint16)
    label[: len(ids)] = ids
    name = "COCO_train2014_000000000077"
    root = write_cocostuff10k(tmp_path, {name: label.reshape(H, W)}, {"train": [name]})
    sample = CocoStuff10k(root, "train")[0]
    assert sample["name"] == name and sample["mask"].dtype == torch.int64
    assert sample["mask"].reshape(-1)[: len(ids)].tolist() == [0, IGNORE_INDEX, 11, 80, 170, IGNORE_INDEX]
    assert torch.all(sample["mask"].reshape(-1)[len(ids) :] == IGNORE_INDEX)  # the zeros: unlabeled


def test_10k_labels_stored_as_matlab_doubles(tmp_path):
    root = write_cocostuff10k(tmp_path, {"a": np.ones((H, W), np.uint16)}, {"train": ["a"]})
    write_mat_label(root / "annotations/a.mat", np.full((H, W), 92.0))  # MATLAB's default type
    assert set(CocoStuff10k(root, "train")[0]["mask"].unique().tolist()) == {80}


def test_10k_lists(tmp_path):
    labels = {f"COCO_train2014_{i:012d}": np.ones((H, W), np.uint16) for i in range(3)}
    names = list(labels)
    root = write_cocostuff10k(tmp_path, labels, {"train": f"{names[2]}\n\n{names[0]}.jpg\n", "test": [names[1]]})
    assert [s.name for s in CocoStuff10k(root, "train").samples] == [names[2], names[0]]
    assert len(CocoStuff10k(root, "test")) == 1


@pytest.mark.parametrize(
    "content, error, message",
    [
        ("a\nghost\n", FileNotFoundError, r"train\.txt:2: image .*images/ghost\.jpg does not exist"),
        ("a\na b\n", ValueError, r"train\.txt:2: expected one image name"),
        ("\n", ValueError, r"empty split: split list .*train\.txt lists no images"),
    ],
)
def test_10k_bad_lists(tmp_path, content, error, message):
    root = write_cocostuff10k(tmp_path, {"a": np.ones((H, W), np.uint16)}, {"train": content})
    with pytest.raises(error, match=message):
        CocoStuff10k(root, "train")


def test_10k_missing_annotation_and_split(tmp_path):
    root = write_cocostuff10k(tmp_path, {"a": np.ones((H, W), np.uint16)}, {"train": ["a"]})
    with pytest.raises(FileNotFoundError, match=r"imageLists/val\.txt not found; splits present: \['train'\]"):
        CocoStuff10k(root, "val")
    (root / "annotations/a.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.txt:1: annotation .*annotations/a\.mat"):
        CocoStuff10k(root, "train")


def test_10k_bad_annotations(tmp_path):
    root = write_cocostuff10k(tmp_path, {"a": np.ones((H, W), np.uint16)}, {"train": ["a"]})
    mat = root / "annotations/a.mat"
    write_mat_label(mat, np.full((H, W), 183, np.uint16))  # v1.0's "other" id, dropped in v1.1
    with pytest.raises(ValueError, match=r"a\.mat holds values \{183\} that are not COCO-Stuff 10k"):
        CocoStuff10k(root, "train")[0]
    write_mat_label(mat, np.ones((H, W + 1), np.uint16))
    with pytest.raises(ValueError, match=r"a\.mat is 6x11 .* image is 6x10"):
        CocoStuff10k(root, "train")[0]
    mat.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(ValueError, match=r"cannot read annotation .*a\.mat"):
        CocoStuff10k(root, "train")[0]
    import scipy.io

    scipy.io.savemat(str(mat), {"L": np.ones((H, W), np.uint16)})
    with pytest.raises(ValueError, match=r"a\.mat has no field 'S'; fields: \['L'\]"):
        CocoStuff10k(root, "train")[0]


def test_10k_without_scipy_says_what_to_install(tmp_path, monkeypatch):
    root = write_cocostuff10k(tmp_path, {"a": np.ones((H, W), np.uint16)}, {"train": ["a"]})
    dataset = CocoStuff10k(root, "train")  # opening the split needs no scipy
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError, match=r"a\.mat needs scipy: pip install scipy"):
        dataset[0]
