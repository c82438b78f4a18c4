import os

import numpy as np
import pytest
import scipy.io
from dataset_layouts import write_sbd_cls, write_sbd_release
from PIL import Image
from voc_layout import block_label, write_voc_tree

from lightning_deeplab.constants import IGNORE_INDEX
from lightning_deeplab.data import VOCSegmentation
from lightning_deeplab.data.sbd import convert_sbd, main, read_sbd_label
from lightning_deeplab.fileio import PARTIAL_SUFFIX

H, W = 12, 16
VOC_SPLITS = {"train": ["2007_a", "2008_b"], "val": ["2009_c", "2010_d"]}
SBD_SPLITS = {"train": ["2008_b", "2011_e"], "val": ["2009_c", "2011_f"]}


def sbd_label(cls: int) -> np.ndarray:
    """A block of ``cls`` on background: SBD labels have no 255 borders."""
    label = np.zeros((H, W), np.uint8)
    label[3:9, 4:12] = cls
    return label


@pytest.fixture
def trees(tmp_path):
    """VOC: train a, b; val c, d (official labels: a class-15 block with a 255 rim).
    SBD: train b, e; val c, f (labels: blocks of class 2, 5, 7, 9). The VOC tree lacks f's image."""
    voc_ids = VOC_SPLITS["train"] + VOC_SPLITS["val"] + ["2011_e"]  # e's image is in VOC, unlabelled there
    voc_root = write_voc_tree(tmp_path / "voc", {i: (H, W) for i in voc_ids}, VOC_SPLITS)
    voc = voc_root / "VOCdevkit/VOC2012"
    (voc / "SegmentationClass/2011_e.png").unlink()
    for name in voc_ids:
        (voc / "SegmentationClassAug" / f"{name}.png").unlink()  # not converted yet
    labels = {"2008_b": sbd_label(2), "2011_e": sbd_label(5), "2009_c": sbd_label(7), "2011_f": sbd_label(9)}
    sbd = write_sbd_release(tmp_path / "sbd", labels, SBD_SPLITS)
    return sbd, voc_root, voc


def aug(voc, name) -> np.ndarray:
    image = Image.open(voc / "SegmentationClassAug" / f"{name}.png")
    assert image.mode == "L"
    return np.asarray(image)


def test_train_aug_is_voc_train_plus_sbd_minus_voc_val(trees):
    sbd, voc_root, voc = trees
    result = convert_sbd(sbd, voc_root / "VOCdevkit")
    # (VOC train {a, b} + SBD train {b, e} + SBD val {c, f}) - VOC val {c, d}, sorted
    expected = ["2007_a", "2008_b", "2011_e", "2011_f"]
    assert (voc / "ImageSets/Segmentation/train_aug.txt").read_text() == "".join(f"{i}\n" for i in expected)
    assert result.train_aug == 4 and result.train_aug_file == voc / "ImageSets/Segmentation/train_aug.txt"
    # labels: the union of SBD (b, c, e, f) and the VOC-labelled images (a, b, c, d)
    assert sorted(p.stem for p in (voc / "SegmentationClassAug").iterdir()) == [
        "2007_a",
        "2008_b",
        "2009_c",
        "2010_d",
        "2011_e",
        "2011_f",
    ]
    assert (result.sbd_labels, result.voc_labels, result.overlap, result.images_copied) == (2, 4, 2, 1)
    assert not [p for p in voc.rglob("*") if p.name.endswith(PARTIAL_SUFFIX)]  # no partial files left


def test_official_labels_take_precedence_by_default(trees):
    sbd, voc_root, voc = trees
    convert_sbd(sbd, voc_root)
    official = block_label(H, W)  # what write_voc_tree wrote: class 15 block, 255 rim
    for name in ("2007_a", "2008_b", "2009_c", "2010_d"):
        assert np.array_equal(aug(voc, name), official), name
    assert np.array_equal(aug(voc, "2011_e"), sbd_label(5))  # SBD-only images: SBD labels
    assert np.array_equal(aug(voc, "2011_f"), sbd_label(9))
    assert IGNORE_INDEX in aug(voc, "2008_b")


def test_sbd_labels_on_request(trees):
    sbd, voc_root, voc = trees
    result = convert_sbd(sbd / "dataset", voc, labels="sbd")
    assert np.array_equal(aug(voc, "2008_b"), sbd_label(2))
    assert np.array_equal(aug(voc, "2009_c"), sbd_label(7))
    assert np.array_equal(aug(voc, "2007_a"), block_label(H, W))  # VOC-only: VOC label
    assert (result.sbd_labels, result.voc_labels) == (4, 2)


def test_missing_images_are_copied_and_the_result_reads_as_train_aug(trees):
    sbd, voc_root, voc = trees
    assert not (voc / "JPEGImages/2011_f.jpg").exists()
    convert_sbd(sbd, voc_root, workers=2)
    assert (voc / "JPEGImages/2011_f.jpg").read_bytes() == (sbd / "dataset/img/2011_f.jpg").read_bytes()
    assert oct((voc / "JPEGImages/2011_f.jpg").stat().st_mode & 0o777) != oct(0o600)  # not owner-only
    dataset = VOCSegmentation(voc_root, "train_aug")
    masks = {dataset[i]["name"]: dataset[i]["mask"].numpy() for i in range(len(dataset))}
    assert list(masks) == ["2007_a", "2008_b", "2011_e", "2011_f"]
    assert np.array_equal(masks["2011_f"], sbd_label(9))


def test_command_prints_counts(trees, capsys):
    sbd, voc_root, voc = trees
    assert main(["--sbd", str(sbd), "--voc", str(voc_root / "VOCdevkit"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "6 labels (2 from SBD, 4 from VOC; 2 images had both)" in out
    assert "1 SBD images copied" in out and "train_aug.txt: 4 ids" in out


def test_command_reports_errors_with_status_1(trees, capsys):
    sbd, voc_root, _ = trees
    assert main(["--sbd", str(sbd.parent / "nowhere"), "--voc", str(voc_root)]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_gtcls_struct_is_read_in_its_real_layout(tmp_path):
    label = sbd_label(20)
    write_sbd_cls(tmp_path / "x.mat", label)
    content = scipy.io.loadmat(str(tmp_path / "x.mat"))
    assert set(content["GTcls"].dtype.names) == {"Segmentation", "Boundaries", "CategoriesPresent"}
    read = read_sbd_label(tmp_path / "x.mat")
    assert read.dtype == np.uint8 and np.array_equal(read, label)


# -- bad data ----------------------------------------------------------------------------------


def test_label_outside_the_classes_names_the_file(trees):
    sbd, voc_root, voc = trees
    write_sbd_cls(sbd / "dataset/cls/2011_e.mat", sbd_label(21))
    with pytest.raises(ValueError, match=r"cls/2011_e\.mat holds values \[21\] outside the classes 0-20"):
        convert_sbd(sbd, voc_root)
    assert not (voc / "ImageSets/Segmentation/train_aug.txt").exists()  # the list comes last


def test_listed_annotation_missing_names_list_and_line(trees):
    sbd, voc_root, _ = trees
    (sbd / "dataset/cls/2011_f.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"dataset/val\.txt:2: .*cls/2011_f\.mat does not exist"):
        convert_sbd(sbd, voc_root)


def test_image_missing_everywhere(trees):
    sbd, voc_root, _ = trees
    (sbd / "dataset/img/2011_f.jpg").unlink()
    message = r"image 2011_f: neither .*JPEGImages/2011_f\.jpg nor .*img/2011_f\.jpg"
    with pytest.raises(FileNotFoundError, match=message):
        convert_sbd(sbd, voc_root)


def test_label_size_differs_from_image(trees):
    sbd, voc_root, _ = trees
    write_sbd_cls(sbd / "dataset/cls/2011_e.mat", np.zeros((H, W + 4), np.uint8))
    with pytest.raises(ValueError, match=r"cls/2011_e\.mat is 12x20 \(HxW\) but its image is 12x16"):
        convert_sbd(sbd, voc_root)


def test_not_a_cls_file(trees):
    sbd, voc_root, _ = trees
    scipy.io.savemat(str(sbd / "dataset/cls/2011_e.mat"), {"GTinst": {"Segmentation": sbd_label(1)}})
    with pytest.raises(ValueError, match=r"2011_e\.mat has no GTcls\.Segmentation"):
        convert_sbd(sbd, voc_root)
    (sbd / "dataset/cls/2011_e.mat").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read SBD annotation .*2011_e\.mat"):
        convert_sbd(sbd, voc_root)


def test_malformed_list_and_missing_voc_list(trees):
    sbd, voc_root, voc = trees
    (sbd / "dataset/train.txt").write_text("2008_b\n2011_e extra\n")
    with pytest.raises(ValueError, match=r"dataset/train\.txt:2: expected one image id"):
        convert_sbd(sbd, voc_root)
    os.remove(voc / "ImageSets/Segmentation/val.txt")
    (sbd / "dataset/train.txt").write_text("2008_b\n")
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/val\.txt does not exist"):
        convert_sbd(sbd, voc_root)


@pytest.mark.parametrize("kwargs, message", [({"labels": "both"}, "labels"), ({"workers": 0}, "workers")])
def test_bad_arguments(trees, kwargs, message):
    sbd, voc_root, _ = trees
    with pytest.raises(ValueError, match=message):
        convert_sbd(sbd, voc_root, **kwargs)
