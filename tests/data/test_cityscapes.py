import numpy as np
import pytest
import torch
from dataset_layouts import cityscapes_stem, write_cityscapes, write_gray, write_rgb
from PIL import Image

from lightning_deeplab.constants import IGNORE_INDEX
from lightning_deeplab.data import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CityscapesSegmentation
from lightning_deeplab.data.cityscapes import CITYSCAPES_ID_TO_TRAIN_ID

H, W = 8, 16


def every_id_label() -> np.ndarray:
    """An 8x16 raw-id map holding every id 0-33 (and 255, an 8-bit license plate), row-major."""
    ids = np.array(list(range(34)) + [IGNORE_INDEX] * (H * W - 34), dtype=np.uint8)
    return ids.reshape(H, W)


def test_label_ids_map_to_the_19_train_ids(tmp_path):
    stem = cityscapes_stem("aachen", 0)
    root = write_cityscapes(tmp_path, "val", {"aachen": {stem: every_id_label()}})
    mask = CityscapesSegmentation(root, "val")[0]["mask"].reshape(-1)
    mapped = dict(zip(range(34), mask[:34].tolist()))
    # facts of the official table (cityscapesScripts labels.py)
    facts = {
        0: 255,
        1: 255,
        4: 255,
        6: 255,
        7: 0,
        8: 1,
        9: 255,
        10: 255,
        11: 2,
        12: 3,
        13: 4,
        14: 255,
        15: 255,
        16: 255,
        17: 5,
        18: 255,
        19: 6,
        20: 7,
        21: 8,
        22: 9,
        23: 10,
        24: 11,
        25: 12,
        26: 13,
        27: 14,
        28: 15,
        29: 255,
        30: 255,
        31: 16,
        32: 17,
        33: 18,
    }
    for raw, train_id in facts.items():
        assert mapped[raw] == train_id, raw
    # every train id comes from exactly one raw id; the other 15 ids are ignored
    evaluated = sorted(v for v in mapped.values() if v != IGNORE_INDEX)
    assert evaluated == list(range(19))
    assert torch.all(mask[34:] == IGNORE_INDEX)  # 255 (license plate) stays ignored
    assert mapped == CITYSCAPES_ID_TO_TRAIN_ID


def test_train_id_files_are_preferred_when_present(tmp_path):
    with_train_ids, without = cityscapes_stem("bonn", 0), cityscapes_stem("bonn", 1)
    raw = np.full((H, W), 26, np.uint8)  # car -> 13
    train_ids = np.full((H, W), 5, np.uint8)  # deliberately different from the raw file
    root = write_cityscapes(
        tmp_path, "train", {"bonn": {with_train_ids: raw, without: raw}}, train_ids={with_train_ids: train_ids}
    )
    dataset = CityscapesSegmentation(root, "train")
    by_name = {s.name: s for s in dataset.samples}
    assert by_name[with_train_ids].label.name.endswith("_gtFine_labelTrainIds.png")
    assert by_name[without].label.name.endswith("_gtFine_labelIds.png")
    masks = {dataset[i]["name"]: dataset[i]["mask"] for i in range(2)}
    assert set(masks[with_train_ids].unique().tolist()) == {5}
    assert set(masks[without].unique().tolist()) == {13}


def test_samples_over_cities_in_order_with_exact_images(tmp_path):
    labels = {
        "zurich": {cityscapes_stem("zurich", 3): np.full((H, W), 7, np.uint8)},
        "aachen": {
            cityscapes_stem("aachen", 1): np.full((H, W), 8, np.uint8),
            cityscapes_stem("aachen", 0): np.full((H, W), 11, np.uint8),
        },
    }
    root = write_cityscapes(tmp_path / "cityscapes", "val", labels)
    dataset = CityscapesSegmentation(root, "val")
    assert [s.name for s in dataset.samples] == ["aachen_000000_000019", "aachen_000001_000019", "zurich_000003_000019"]
    sample = dataset[0]
    image = np.array(Image.open(root / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"))
    assert torch.equal(sample["image"], torch.from_numpy(image).permute(2, 0, 1).float())
    assert sample["mask"].dtype == torch.int64 and set(sample["mask"].unique().tolist()) == {2}
    # the folder holding a "cityscapes" folder is accepted too
    assert CityscapesSegmentation(tmp_path, "val").root == root


def test_test_split_has_no_labels_and_says_so(tmp_path):
    # the public test split: images, and placeholder labels that must not be used
    stem = cityscapes_stem("berlin", 0)
    write_rgb(tmp_path / "leftImg8bit/test/berlin" / f"{stem}_leftImg8bit.png", H, W)
    with pytest.warns(UserWarning, match="test.*not public"):
        dataset = CityscapesSegmentation(tmp_path, "test")
    sample = dataset[0]
    assert sample["image"].shape == (3, H, W)
    assert torch.all(sample["mask"] == IGNORE_INDEX)


def test_class_names_and_official_colours():
    assert len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[13] == "car" and CITYSCAPES_CLASSES[18] == "bicycle"
    official = {0: (128, 64, 128), 10: (70, 130, 180), 11: (220, 20, 60), 13: (0, 0, 142), 18: (119, 11, 32)}
    for train_id, colour in official.items():
        assert tuple(CITYSCAPES_PALETTE[train_id]) == colour
    assert tuple(CITYSCAPES_PALETTE[IGNORE_INDEX]) == (0, 0, 0)
    assert CITYSCAPES_PALETTE.shape == (256, 3) and not CITYSCAPES_PALETTE.flags.writeable
    assert len({tuple(c) for c in CITYSCAPES_PALETTE[:19]}) == 19


# -- bad data ----------------------------------------------------------------------------------


def one_image_tree(tmp_path, label=None):
    stem = cityscapes_stem("ulm", 0)
    label = np.full((H, W), 7, np.uint8) if label is None else label
    root = write_cityscapes(tmp_path, "val", {"ulm": {stem: label}})
    return root, root / "gtFine/val/ulm" / f"{stem}_gtFine_labelIds.png", stem


def test_unknown_raw_id_is_refused_naming_the_file(tmp_path):
    label = np.full((H, W), 7, np.uint8)
    label[0, :2] = (34, 200)
    root, label_file, _ = one_image_tree(tmp_path, label)
    with pytest.raises(ValueError, match=rf"{label_file.name} holds values \{{34, 200\}} that are not Cityscapes"):
        CityscapesSegmentation(root, "val")[0]


def test_train_id_file_outside_the_classes(tmp_path):
    root, label_file, stem = one_image_tree(tmp_path)
    write_gray(label_file.with_name(f"{stem}_gtFine_labelTrainIds.png"), np.full((H, W), 19, np.uint8))
    with pytest.raises(ValueError, match=r"labelTrainIds\.png holds values \{19\}"):
        CityscapesSegmentation(root, "val")[0]


def test_missing_label_names_the_expected_file(tmp_path):
    root, label_file, _ = one_image_tree(tmp_path)
    label_file.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{label_file.name}"):
        CityscapesSegmentation(root, "val")


def test_label_size_differs_from_image(tmp_path):
    root, label_file, _ = one_image_tree(tmp_path)
    write_gray(label_file, np.full((H, W + 2), 7, np.uint8))
    with pytest.raises(ValueError, match=rf"{label_file.name} is 8x18 .* image is 8x16"):
        CityscapesSegmentation(root, "val")[0]


def test_truncated_image(tmp_path):
    root, _, stem = one_image_tree(tmp_path)
    image = root / "leftImg8bit/val/ulm" / f"{stem}_leftImg8bit.png"
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(ValueError, match=rf"cannot read image .*{image.name}"):
        CityscapesSegmentation(root, "val")[0]


def test_missing_split_lists_the_splits_present(tmp_path):
    root, _, _ = one_image_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/train .*splits present: \['val'\]"):
        CityscapesSegmentation(root, "train")


def test_empty_split(tmp_path):
    (tmp_path / "leftImg8bit/val/ulm").mkdir(parents=True)
    (tmp_path / "gtFine/val/ulm").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"empty split: no \*_leftImg8bit\.png images .*leftImg8bit/val"):
        CityscapesSegmentation(tmp_path, "val")


def test_root_without_a_cityscapes_tree(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Cityscapes tree"):
        CityscapesSegmentation(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CityscapesSegmentation(tmp_path / "nowhere", "val")
