"""`deeplab predict`: images of any size from a folder, a list or one file; palette label PNGs,
overlays and probabilities written at each image's size; unreadable files reported and skipped."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_deeplab.commands.cli import DeepLabCLI
from lightning_deeplab.data import VOC_PALETTE
from lightning_deeplab.data.images import PredictImages, find_predict_images, predict_collate
from lightning_deeplab.callbacks.prediction_writer import SegmentationWriter
from tiny_run import quiet_args, save_untrained_checkpoint

REPO = Path(__file__).resolve().parents[1]
SIZES = {"a": (37, 45), "c": (30, 52), "sub/b": (50, 41)}  # (height, width)


def write_images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        path = folder / (name + (".jpg" if name == "sub/b" else ".png"))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (folder / "notes.md").write_text("not an image: ignored in a folder")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder of images and a checkpoint of the demo network (untrained: the files, not the
    predictions, are under test)."""
    root = tmp_path_factory.mktemp("predict")
    write_images(root / "images")
    base = quiet_args(str(root / "unused-data-root"))
    cli = save_untrained_checkpoint(base, root / "model.ckpt")
    return SimpleNamespace(
        root=root, images=root / "images", ckpt=str(root / "model.ckpt"), args=base, num_classes=cli.model.num_classes
    )


def test_predict_folder_through_the_cli(setup, tmp_path, capsys):
    out = tmp_path / "out"
    DeepLabCLI(
        args=[
            "predict",
            *setup.args,
            "--ckpt_path",
            setup.ckpt,
            "--data.predict_path",
            str(setup.images),
            "--data.val_batch_size",
            "3",
            "--output_dir",
            str(out),
            "--overlay",
            "side_by_side",
            "--save_probabilities",
            "true",
            "--crf",
            "true",
        ]
    )
    err = capsys.readouterr().err
    # the corrupt file is named and skipped; the others (in its batch too) are all written
    assert "bad.png" in err and "skipped" in err
    assert not list(out.rglob("bad.*"))
    for name, (h, w) in SIZES.items():
        label = Image.open(out / "labels" / f"{name}.png")
        assert label.mode == "P" and label.size == (w, h)
        palette = np.array(label.getpalette(), dtype=np.uint8).reshape(-1, 3)
        assert np.array_equal(palette[: setup.num_classes], VOC_PALETTE[: setup.num_classes])
        probs = np.load(out / "probabilities" / f"{name}.npy")
        assert probs.dtype == np.float16 and probs.shape == (setup.num_classes, h, w)
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
        # pixel values are class indices: the argmax of the saved probabilities
        values = np.array(label)
        assert values.max() < setup.num_classes
        agree = (values == probs.astype(np.float32).argmax(0)).mean()
        assert agree > 0.99  # float16 rounding may flip near-ties
        overlay = Image.open(out / "overlays" / f"{name}.jpg")
        assert overlay.size[0] == 2 * w and overlay.size[1] > h  # image | colour labels, a legend above
        # --crf: the refined maps beside the network's, from the same run
        crf_label = Image.open(out / "labels_crf" / f"{name}.png")
        assert crf_label.mode == "P" and crf_label.size == (w, h)
        assert Image.open(out / "overlays_crf" / f"{name}.jpg").size[0] == 2 * w
    assert not np.array_equal(
        np.array(Image.open(out / "labels" / "a.png")), np.array(Image.open(out / "labels_crf" / "a.png"))
    )


def test_predict_options_are_listed_in_predict_help(capsys):
    with pytest.raises(SystemExit):
        DeepLabCLI(args=["predict", "--help"])
    help_text = capsys.readouterr().out
    for option in (
        "--crf",
        "--save_probabilities",
        "--output_dir",
        "--overlay {blend,side_by_side,none}",
        "--overwrite",
    ):
        assert option in help_text


def test_same_names_are_both_kept_and_earlier_outputs_are_never_replaced(setup, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for file, (h, w) in (("x.jpg", (20, 24)), ("x.png", (22, 26))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / file)
    out = tmp_path / "out"
    args = [
        "predict",
        *setup.args,
        "--ckpt_path",
        setup.ckpt,
        "--data.predict_path",
        str(folder),
        "--output_dir",
        str(out),
        "--overlay",
        "none",
    ]
    DeepLabCLI(args=args)
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["x.png", "x.png.png"]
    assert Image.open(out / "labels" / "x.png").size == (24, 20)  # x.jpg keeps the plain name
    assert Image.open(out / "labels" / "x.png.png").size == (26, 22)
    err = capsys.readouterr().err
    assert "2 image(s) written" in err and "share a name" in err and "x.png -> x.png" in err

    before = (out / "labels" / "x.png").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match=r"already holds 2 prediction file\(s\).*--overwrite true"):
        DeepLabCLI(args=args)
    assert (out / "labels" / "x.png").stat().st_mtime_ns == before
    DeepLabCLI(args=[*args, "--overwrite", "true"])
    assert (out / "labels" / "x.png").stat().st_mtime_ns != before


def test_writer_options_with_a_writer_callback_are_refused(setup, tmp_path):
    args = [
        "predict",
        *setup.args,
        "--data.predict_path",
        str(setup.images),
        "--trainer.callbacks+=lightning_deeplab.callbacks.prediction_writer.SegmentationWriter",
        "--trainer.callbacks.output_dir",
        str(tmp_path / "a"),
    ]
    with pytest.raises(ValueError, match="--crf cannot be used with a prediction writer"):
        DeepLabCLI(args=[*args, "--crf", "true"])


def test_predict_without_a_writer_saves_under_the_run_and_reads_a_list(setup, tmp_path):
    listing = setup.images / "some.txt"
    listing.write_text("# two of them\nsub/b.jpg\n\n" + str(setup.images / "a.png") + "\n")
    run = tmp_path / "run"
    DeepLabCLI(
        args=["predict", *setup.args, "--data.predict_path", str(listing), "--trainer.default_root_dir", str(run)]
    )
    out = run / "predictions"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["labels/a.png", "labels/sub/b.png", "overlays/a.jpg", "overlays/sub/b.jpg"]
    width, height = Image.open(out / "overlays" / "a.jpg").size
    assert width == 45 and height > 37  # a blend, its legend above


def test_missing_predict_path_is_named(setup, tmp_path):
    missing = tmp_path / "no-such-images"
    with pytest.raises(FileNotFoundError, match="predict_path.*no-such-images"):
        DeepLabCLI(args=["predict", *setup.args, "--data.predict_path", str(missing)])


def test_finding_images_in_a_folder_a_list_and_one_file(tmp_path):
    write_images(tmp_path)
    names = [name for name, _ in find_predict_images(tmp_path)]
    assert names == ["a", "bad", "c", "sub/b"]
    assert find_predict_images(tmp_path / "c.png") == [("c", tmp_path / "c.png")]
    (tmp_path / "dup.txt").write_text("a.png\nsub/../a.png\n")
    with pytest.raises(ValueError, match=r"dup.txt:2: .*a.png is listed twice \(first on line 1\)"):
        find_predict_images(tmp_path / "dup.txt")
    # different files of one name are both kept: the later ones keep their extension
    (tmp_path / "same.txt").write_text("a.png\nsub/a.jpg\nother/a.png\nsub/b.jpg\n")
    (tmp_path / "other").mkdir()
    assert [name for name, _ in find_predict_images(tmp_path / "same.txt")] == ["a", "sub/a", "other/a", "sub/b"]
    for file in ("x.jpg", "x.png", "x.png.jpg"):  # "x.png" is the plain name of x.png.jpg: not given to x.png
        (tmp_path / "same" / file).parent.mkdir(exist_ok=True)
        (tmp_path / "same" / file).write_bytes(b"")
    renamed = []
    items = find_predict_images(tmp_path / "same", renamed)
    assert [(path.name, name) for name, path in items] == [("x.jpg", "x"), ("x.png", "x.png.1"), ("x.png.jpg", "x.png")]
    assert [(path.name, name) for path, name in renamed] == [("x.png", "x.png.1")]
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="empty.txt names no images"):
        find_predict_images(tmp_path / "empty.txt")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="nothing holds no images"):
        find_predict_images(tmp_path / "nothing")


def test_a_batch_of_unreadable_files_only_reports_them(tmp_path):
    write_images(tmp_path)
    (tmp_path / "missing.txt").write_text("bad.png\ngone.png\n")
    dataset = PredictImages(tmp_path / "missing.txt")
    batch = predict_collate([dataset[0], dataset[1]])
    assert batch["image"].shape[0] == 0 and batch["name"] == []
    assert [Path(p).name for p, _ in batch["skipped"]] == ["bad.png", "gone.png"]
    assert "gone.png" in batch["skipped"][1][1]

    from lightning_deeplab.models import DeepLabV2
    from lightning_deeplab.training.module import DeepLabV2Module

    network = DeepLabV2("resnet18", num_classes=3, msc_scales=None, style="pytorch", norm="bn")
    module = DeepLabV2Module(network, eval_crf=False)
    output = module.predict_step(batch, 0)
    assert output["probabilities"].shape[0] == 0 and len(output["skipped"]) == 2


class ClassZeroRefiner:
    """Stands in for the module: its CRF refinement moves every pixel to class 0."""

    def refine_probabilities(self, probs, image):
        assert image.shape[-2:] == probs.shape[-2:]  # refined per image, at its own size
        out = torch.zeros_like(probs)
        out[:, 0] = 1
        return out


def test_writer_with_crf_writes_both_label_maps_and_overlays(tmp_path, capsys):
    writer = SegmentationWriter(str(tmp_path), overlay="blend", overlay_alpha=1.0, crf=True)
    probs = torch.zeros(2, 3, 10, 12)
    probs[:, 2] = 1  # the network says class 2 everywhere
    image = torch.full((2, 3, 10, 12), 40.0)
    prediction = {
        "probabilities": probs,
        "image": image,
        "name": ["x", "y"],
        "size": [(10, 12), (6, 7)],
        "skipped": [("/data/broken.jpg", "cannot read image")],
    }
    trainer = SimpleNamespace(datamodule=None, world_size=1, global_rank=0)
    writer.on_predict_start(trainer, None)
    writer.write_on_batch_end(trainer, ClassZeroRefiner(), prediction, None, None, 0, 0)
    writer.on_predict_end(trainer, None)
    for name, (h, w) in (("x", (10, 12)), ("y", (6, 7))):
        for suffix, cls in (("", 2), ("_crf", 0)):  # the network's labels, and the CRF's
            labels = np.array(Image.open(tmp_path / f"labels{suffix}" / f"{name}.png"))
            assert labels.shape == (h, w) and (labels == cls).all()
            overlay = np.array(Image.open(tmp_path / f"overlays{suffix}" / f"{name}.jpg"))
            assert overlay.shape[1:] == (w, 3) and overlay.shape[0] > h  # a legend above
            # alpha 1: the colour of the class replaces the image
            assert np.abs(overlay[-h:].astype(int) - VOC_PALETTE[cls]).max() <= 3
    assert not (tmp_path / "probabilities").exists()
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "2 image(s) written" in err


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"overlay": "sideways"}, "overlay.*sideways"),
        ({"overlay_alpha": 1.5}, "overlay_alpha"),
        ({"output_dir": ""}, "output_dir"),
    ],
)
def test_bad_writer_options_are_named(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SegmentationWriter(**kwargs)


def test_predict_writes_only_under_its_output_dir(setup, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.finish()  # a run left open by an earlier test would be reused
    run, out = tmp_path / "run", tmp_path / "out"
    logger = setup.args.index("--trainer.logger")
    args = setup.args[:logger] + setup.args[logger + 2 :]  # the default logger
    DeepLabCLI(
        args=[
            "predict",
            *args,
            "--trainer.default_root_dir",
            str(run),
            "--ckpt_path",
            setup.ckpt,
            "--data.predict_path",
            str(setup.images),
            "--output_dir",
            str(out),
            "--overlay",
            "none",
        ]
    )
    assert sorted(p.name for p in (out / "labels").rglob("*.png")) == ["a.png", "b.png", "c.png"]
    assert not run.exists()  # no wandb run, no config.yaml in the run's root
    assert not (out / "wandb").exists() and not (out / "config.yaml").exists()
