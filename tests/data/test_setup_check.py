"""Bad data fails at ``setup``, before training: every problem of every split, with its file and
list line, in one error; 16-bit images are scaled, not clipped; padding follows the model's style."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_run import quiet_args
from voc_layout import block_label, write_palette_png

from lightning_deeplab.constants import PAD_VALUE
from lightning_deeplab.data import SegmentationDataModule, VOCSource
from lightning_deeplab.data import check as check_module
from lightning_deeplab.data.check import BadSamples
from lightning_deeplab.data.files import read_rgb_image

SIZE = (24, 32)  # (height, width)


def voc_dm(root, **kwargs) -> SegmentationDataModule:
    options = {
        "train_split": "train",
        "val_split": "val",
        "crop_size": 16,
        "batch_size": 1,
        "val_batch_size": 2,
        "num_workers": 0,
        **kwargs,
    }
    return SegmentationDataModule(VOCSource(root), **options)


@pytest.fixture
def bad_voc(make_voc):
    """train: ok, a label of the wrong size, an RGB label; val: ok, an image that is no image,
    a missing label."""
    names = ["ok", "wrong_size", "rgb_label", "ok2", "not_image", "gone"]
    root = make_voc({n: SIZE for n in names}, {"train": names[:3], "val": names[3:]})
    voc = root / "VOCdevkit" / "VOC2012"
    write_palette_png(voc / "SegmentationClass" / "wrong_size.png", block_label(20, 32))
    Image.new("RGB", SIZE[::-1], (128, 0, 0)).save(voc / "SegmentationClass" / "rgb_label.png")
    (voc / "JPEGImages" / "not_image.jpg").write_text("this is not a JPEG")
    (voc / "SegmentationClass" / "gone.png").unlink()
    return root, voc


def test_every_problem_of_every_split_is_reported_at_setup_with_file_and_line(bad_voc):
    root, voc = bad_voc
    dm = voc_dm(root)
    with pytest.raises(BadSamples) as caught:
        dm.setup("fit")
    problems = caught.value.problems
    assert len(problems) == 4, problems
    split_dir = voc / "ImageSets" / "Segmentation"
    expected = [
        (f"{split_dir / 'train.txt'}:2:", "wrong_size.png", "20x32 (HxW)"),
        (f"{split_dir / 'train.txt'}:3:", "rgb_label.png", "mode 'RGB'"),
        (f"{split_dir / 'val.txt'}:2:", "not_image.jpg", "not a readable image"),
        (f"{split_dir / 'val.txt'}:3:", "gone.png", "does not exist"),
    ]
    for problem, (where, file, what) in zip(problems, expected):
        assert problem.startswith(where) and file in problem and what in problem, problem
    message = str(caught.value)
    assert all(problem in message for problem in problems) and "check_files false" in message
    assert "ok.jpg" not in message and "ok2" not in message


def test_only_the_splits_of_the_stage_are_checked(bad_voc, make_voc):
    root, voc = bad_voc
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("ok2\n")
    voc_dm(root).setup("validate")  # the train split's problems do not matter for validate
    with pytest.raises(BadSamples, match="train.txt:2"):
        voc_dm(root).setup("fit")


def test_without_the_check_missing_files_still_fail_and_decoding_names_the_file(bad_voc):
    root, voc = bad_voc
    with pytest.raises(FileNotFoundError, match="val.txt:3: label .*gone.png does not exist"):
        voc_dm(root, check_files=False).setup("fit")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("ok2\n")
    dm = voc_dm(root, check_files=False)
    dm.setup("fit")  # the headers are not read...
    with pytest.raises(ValueError, match="wrong_size.png is 20x32"):
        dm.dataset("train").read(1)  # ...so the wrong size is found when the sample is decoded


def test_large_splits_show_a_progress_bar(make_voc, monkeypatch, capsys):
    root = make_voc({n: SIZE for n in "abc"}, {"train": list("abc"), "val": list("ab")})
    monkeypatch.setattr(check_module, "PROGRESS_MIN_SAMPLES", 3)
    voc_dm(root).setup("fit")
    err = capsys.readouterr().err
    assert "checking train split 'train'" in err and "3/3" in err
    assert "checking val split" not in err  # 2 samples: no bar


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "wide.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = read_rgb_image(path)
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    assert image[0, :, 0].tolist() == [0, 1, 128, 255] and (image[..., 0] == image[..., 2]).all()
    float_path = tmp_path / "float.tif"
    Image.fromarray(np.zeros((2, 2), np.float32)).save(float_path)
    with pytest.raises(ValueError, match="float.tif.*float"):
        read_rgb_image(float_path)


def test_padding_is_marked_for_the_network_to_fill(make_voc):
    root = make_voc({"small": (20, 30), "big": SIZE}, {"train": ["big"], "val": ["small", "big"]})
    dm = voc_dm(root)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert bool((batch["image"][0, :, 20:, :] == PAD_VALUE).all()) and bool(
        (batch["image"][0, :, :, 30:] == PAD_VALUE).all()
    )
    assert bool((batch["image"][0, :, :20, :30] >= 0).all())
    train = voc_dm(root, crop_size=40, scale_range=(1.0, 1.0), hflip=False)
    train.setup("fit")
    crop = next(iter(train.train_dataloader()))["image"][0]
    assert bool((crop[:, 39, 39] == PAD_VALUE).all())


def test_deeplab_validate_stops_at_setup_on_bad_data(bad_voc, tmp_path):
    from lightning_deeplab.commands.cli import DeepLabCLI

    root, _ = bad_voc
    args = quiet_args(
        str(root),
        "--data.source",
        "VOCSource",
        "--data.val_split",
        "val",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
    )
    with pytest.raises(BadSamples) as caught:
        DeepLabCLI(args=["validate", *args])
    assert len(caught.value.problems) == 2
    assert "val.txt:2: image" in caught.value.problems[0] and "val.txt:3: label" in caught.value.problems[1]
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing ran
