import numpy as np
import pytest
import torch
from dataset_layouts import write_gray, write_rgb
from PIL import Image

from lightning_deeplab.constants import IGNORE_INDEX
from lightning_deeplab.data import VOC_PALETTE, FolderSegmentation, FolderSource, read_class_list

H, W = 6, 8
CLASSES = "# my classes\nbackground\nroad 128 64 128\n\ntraffic light 250 170 30\n"


def write_palette_mask(path, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8))
    image.putpalette(VOC_PALETTE.reshape(-1).tolist())
    image.save(path)


def write_folder_tree(root, splits: dict[str, dict[str, np.ndarray]], classes: str = CLASSES):
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(classes)
    images = {}
    for split, masks in splits.items():
        for seed, (name, mask) in enumerate(masks.items()):
            images[name] = write_rgb(root / "images" / split / f"{name}.png", *mask.shape, seed=seed)
            write_gray(root / "masks" / split / f"{name}.png", mask)
    return root, images


def test_class_list_with_optional_colours(tmp_path):
    (tmp_path / "classes.txt").write_text(CLASSES)
    names, palette = read_class_list(tmp_path / "classes.txt")
    assert names == ("background", "road", "traffic light")  # comment and blank line skipped
    assert tuple(palette[1]) == (128, 64, 128) and tuple(palette[2]) == (250, 170, 30)
    assert np.array_equal(palette[0], VOC_PALETTE[0])  # no colour given: the VOC colour map's
    assert np.array_equal(palette[IGNORE_INDEX], VOC_PALETTE[IGNORE_INDEX])


def test_folder_split_pairs_images_and_masks_by_name(tmp_path):
    masks = {"b": np.full((H, W), 2, np.uint8), "a": np.full((H, W), 1, np.uint8)}
    masks["a"][0, 0] = IGNORE_INDEX
    root, images = write_folder_tree(tmp_path, {"train": masks})
    write_palette_mask(root / "masks/train/b.png", masks["b"])  # palette masks are read as indices
    dataset = FolderSegmentation(root, "train", num_classes=3)
    assert [dataset[i]["name"] for i in range(2)] == ["a", "b"]
    a = dataset[0]
    assert torch.equal(a["image"], torch.from_numpy(images["a"]).permute(2, 0, 1).float())
    assert torch.equal(a["mask"], torch.from_numpy(masks["a"]).long())
    assert set(dataset[1]["mask"].unique().tolist()) == {2}


def test_list_file_split(tmp_path):
    root, _ = write_folder_tree(tmp_path, {"all": {"x": np.zeros((H, W), np.uint8), "y": np.ones((H, W), np.uint8)}})
    (root / "lists").mkdir()
    absolute = f"{root}/images/all/x.png masks/all/x.png"
    (root / "lists/val.txt").write_text(f"images/all/y.png masks/all/y.png\n\n{absolute}\n")
    dataset = FolderSegmentation(root, "lists/val.txt", num_classes=3)
    assert [s.name for s in dataset.samples] == ["y", "x"]
    assert set(dataset[0]["mask"].unique().tolist()) == {1}


def test_source_reads_classes_lazily(tmp_path):
    source = FolderSource(tmp_path / "not_yet_there")  # constructing touches no file
    with pytest.raises(FileNotFoundError, match=r"class list .*not_yet_there/classes\.txt does not exist"):
        source.class_names
    root, _ = write_folder_tree(tmp_path / "data", {"val": {"a": np.zeros((H, W), np.uint8)}})
    source = FolderSource(root)
    assert source.num_classes == 3 and tuple(source.palette[1]) == (128, 64, 128)
    source.prepare()
    assert len(source.dataset("val")) == 1


# -- bad data ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("a\nb\na\n", r"classes\.txt:3: class 'a' is listed twice \(first as class 0\)"),
        ("a\nb 1 2 300\n", r"classes\.txt:2: colour \(1, 2, 300\) must be three ints"),
        ("# nothing\n\n", r"classes\.txt names no classes"),
        ("".join(f"c{i}\n" for i in range(256)), r"names 256 classes; at most 255"),
    ],
)
def test_bad_class_lists(tmp_path, text, message):
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_class_list(tmp_path / "classes.txt")


def test_mask_value_outside_the_classes(tmp_path):
    mask = np.zeros((H, W), np.uint8)
    mask[1, 1] = 3  # three classes: 0, 1, 2
    root, _ = write_folder_tree(tmp_path, {"val": {"a": mask}})
    with pytest.raises(ValueError, match=r"masks/val/a\.png holds values \{3\} outside the classes \[0, 3\)"):
        FolderSegmentation(root, "val", num_classes=3)[0]


def test_missing_mask_names_the_image_and_the_mask(tmp_path):
    root, _ = write_folder_tree(tmp_path, {"val": {"a": np.zeros((H, W), np.uint8)}})
    write_rgb(root / "images/val/lonely.jpg", H, W, suffix_format="JPEG")
    message = r"mask of image .*images/val/lonely\.jpg: .*masks/val/lonely\.png does not exist"
    with pytest.raises(FileNotFoundError, match=message):
        FolderSegmentation(root, "val", num_classes=3)


def test_list_file_problems_name_the_line(tmp_path):
    root, _ = write_folder_tree(tmp_path, {"val": {"a": np.zeros((H, W), np.uint8)}})
    (root / "bad.txt").write_text("images/val/a.png masks/val/a.png\nimages/val/a.png masks/val/gone.png\n")
    with pytest.raises(FileNotFoundError, match=r"bad\.txt:2: mask .*masks/val/gone\.png does not exist"):
        FolderSegmentation(root, "bad.txt", num_classes=3)
    (root / "bad.txt").write_text("images/val/a.png\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: expected '<image path> <mask path>'"):
        FolderSegmentation(root, "bad.txt", num_classes=3)
    (root / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"empty split: list file .*empty\.txt lists no samples"):
        FolderSegmentation(root, "empty.txt", num_classes=3)
    with pytest.raises(FileNotFoundError, match=r"list file .*absent\.txt does not exist"):
        FolderSegmentation(root, "absent.txt", num_classes=3)


def test_empty_and_missing_split_folders(tmp_path):
    root, _ = write_folder_tree(tmp_path, {"val": {"a": np.zeros((H, W), np.uint8)}})
    message = r"image folder .*images/train of split 'train' not found; splits present: \['val'\]"
    with pytest.raises(FileNotFoundError, match=message):
        FolderSegmentation(root, "train", num_classes=3)
    (root / "images/test").mkdir()
    (root / "masks/test").mkdir()
    (root / "images/test/notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"empty split: no images .* in .*images/test"):
        FolderSegmentation(root, "test", num_classes=3)


def test_two_images_with_one_name_are_ambiguous(tmp_path):
    root, _ = write_folder_tree(tmp_path, {"val": {"a": np.zeros((H, W), np.uint8)}})
    write_rgb(root / "images/val/a.jpg", H, W, suffix_format="JPEG")
    with pytest.raises(ValueError, match=r"share the name 'a'"):
        FolderSegmentation(root, "val", num_classes=3)


def test_colour_mask_truncated_image_and_size_mismatch(tmp_path):
    root, _ = write_folder_tree(tmp_path, {"val": {"a": np.zeros((H, W), np.uint8)}})
    Image.new("RGB", (W, H), (128, 64, 128)).save(root / "masks/val/a.png")
    with pytest.raises(ValueError, match=r"masks/val/a\.png has PIL mode 'RGB'"):
        FolderSegmentation(root, "val", num_classes=3)[0]
    write_gray(root / "masks/val/a.png", np.zeros((H, W + 1), np.uint8))
    with pytest.raises(ValueError, match=r"masks/val/a\.png is 6x9 \(HxW\) but its image is 6x8"):
        FolderSegmentation(root, "val", num_classes=3)[0]
    image = root / "images/val/a.png"
    image.write_bytes(image.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"cannot read image .*images/val/a\.png"):
        FolderSegmentation(root, "val", num_classes=3)[0]
