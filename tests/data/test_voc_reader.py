from pathlib import Path

import numpy as np
import pytest
import torch
from voc_layout import block_label, write_palette_png
from PIL import Image

from lightning_deeplab.data import VOCSegmentation


def test_palette_labels_are_read_as_indices(make_voc):
    root = make_voc({"a": (24, 32)}, {"val": ["a"]})
    label_file = root / "VOCdevkit/VOC2012/SegmentationClass/a.png"
    assert Image.open(label_file).mode == "P"
    sample = VOCSegmentation(root, "val")[0]
    # the file's colours are (192, 128, 128) for person; the reader must return 15, not a colour
    assert torch.equal(sample["mask"], torch.from_numpy(block_label(24, 32)).long())
    assert set(sample["mask"].unique().tolist()) == {0, 15, 255}


def test_sample_types_and_values(make_voc):
    root = make_voc({"a": (24, 32)}, {"val": ["a"]})
    sample = VOCSegmentation(root, "val")[0]
    assert sample["name"] == "a"
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 24, 32)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (24, 32)
    # RGB order, 0-255 scale, not normalised (JPEG allows a few levels of error on a flat image)
    mean_colour = sample["image"].mean(dim=(1, 2))
    assert torch.allclose(mean_colour, torch.tensor([200.0, 40.0, 40.0]), atol=4)


def test_train_aug_reads_the_grayscale_aug_labels(make_voc):
    aug = np.full((24, 32), 7, np.uint8)
    root = make_voc({"a": (24, 32)}, {"train_aug": ["a"], "train": ["a"]}, aug_labels={"a": aug})
    assert Image.open(root / "VOCdevkit/VOC2012/SegmentationClassAug/a.png").mode == "L"
    assert set(VOCSegmentation(root, "train_aug")[0]["mask"].unique().tolist()) == {7}
    assert set(VOCSegmentation(root, "train")[0]["mask"].unique().tolist()) == {0, 15, 255}


def test_pair_format_split_lists(make_voc):
    aug = np.full((24, 32), 3, np.uint8)
    pairs = "/JPEGImages/a.jpg /SegmentationClassAug/a.png\n\n/JPEGImages/b.jpg /SegmentationClassAug/b.png\n"
    root = make_voc({"a": (24, 32), "b": (16, 16)}, {"train_aug": pairs}, aug_labels={"a": aug})
    dataset = VOCSegmentation(root, "train_aug")
    assert len(dataset) == 2  # the blank line is skipped
    assert [dataset[i]["name"] for i in range(2)] == ["a", "b"]
    assert set(dataset[0]["mask"].unique().tolist()) == {3}
    assert dataset[1]["image"].shape == (3, 16, 16)


@pytest.mark.parametrize("relative", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_root_may_name_any_level_of_the_tree(make_voc, relative):
    root = make_voc({"a": (24, 32)}, {"val": ["a"]})
    dataset = VOCSegmentation(root / relative, "val")
    assert dataset.voc_root == root / "VOCdevkit" / "VOC2012"
    assert dataset[0]["name"] == "a"


# -- bad data: every error names the file ------------------------------------------------------


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        VOCSegmentation(missing, "val")


def test_root_without_a_voc_tree(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(FileNotFoundError, match="no VOC 2012 tree"):
        VOCSegmentation(tmp_path, "val")


def test_missing_split_file(make_voc):
    root = make_voc({"a": (24, 32)}, {"val": ["a"]})
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/train_aug\.txt") as err:
        VOCSegmentation(root, "train_aug")
    assert "val" in str(err.value)  # lists the splits that are there


def test_listed_image_missing_names_file_and_line(make_voc):
    root = make_voc({"a": (24, 32)}, {"val": ["a", "ghost"]})
    with pytest.raises(FileNotFoundError, match=r"val\.txt:2: image .*JPEGImages/ghost\.jpg"):
        VOCSegmentation(root, "val")


def test_listed_label_missing_names_file_and_line(make_voc):
    root = make_voc({"a": (24, 32), "b": (24, 32)}, {"val": ["a", "b"]})
    (root / "VOCdevkit/VOC2012/SegmentationClass/b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.txt:2: label .*SegmentationClass/b\.png"):
        VOCSegmentation(root, "val")


def test_malformed_line(make_voc):
    root = make_voc({"a": (24, 32)}, {"val": "a\na b c\n"})
    with pytest.raises(ValueError, match=r"val\.txt:2"):
        VOCSegmentation(root, "val")


def test_empty_split(make_voc):
    root = make_voc({"a": (24, 32)}, {"val": "\n\n"})
    with pytest.raises(ValueError, match=r"val\.txt lists no samples"):
        VOCSegmentation(root, "val")


def _one_sample_tree(make_voc) -> tuple[Path, Path]:
    root = make_voc({"a": (24, 32)}, {"val": ["a"]})
    return root, root / "VOCdevkit/VOC2012"


def test_label_value_outside_the_classes(make_voc):
    root, voc = _one_sample_tree(make_voc)
    label = block_label(24, 32)
    label[0, 0] = 21  # VOC has 21 classes: 0..20, and 255
    write_palette_png(voc / "SegmentationClass/a.png", label)
    dataset = VOCSegmentation(root, "val")
    with pytest.raises(ValueError, match=r"SegmentationClass/a\.png holds values \{21\}"):
        dataset[0]


def test_label_size_differs_from_image(make_voc):
    root, voc = _one_sample_tree(make_voc)
    write_palette_png(voc / "SegmentationClass/a.png", block_label(24, 30))
    with pytest.raises(ValueError, match=r"SegmentationClass/a\.png is 24x30 .* image is 24x32"):
        VOCSegmentation(root, "val")[0]


def test_colour_label_is_refused(make_voc):
    root, voc = _one_sample_tree(make_voc)
    Image.new("RGB", (32, 24), (192, 128, 128)).save(voc / "SegmentationClass/a.png")
    with pytest.raises(ValueError, match=r"SegmentationClass/a\.png has PIL mode 'RGB'"):
        VOCSegmentation(root, "val")[0]


def test_truncated_image(make_voc):
    root, voc = _one_sample_tree(make_voc)
    image_file = voc / "JPEGImages/a.jpg"
    image_file.write_bytes(image_file.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cannot read image .*JPEGImages/a\.jpg"):
        VOCSegmentation(root, "val")[0]


def test_grayscale_aug_label_outside_classes(make_voc):
    bad = np.full((24, 32), 40, np.uint8)
    root = make_voc({"a": (24, 32)}, {"train_aug": ["a"]}, aug_labels={"a": bad})
    with pytest.raises(ValueError, match=r"SegmentationClassAug/a\.png holds values \{40\}"):
        VOCSegmentation(root, "train_aug")[0]
    # the same file is fine for a dataset with more classes
    assert VOCSegmentation(root, "train_aug", num_classes=41)[0]["mask"].max() == 40
