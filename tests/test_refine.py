"""`deeplab crf`: refining saved probabilities equals the CRF applied in-process; bad arrays are
reported by file and skipped, the rest written; usage errors exit 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_deeplab.commands.cli import DeepLabCLI
from lightning_deeplab.commands.main import main
from lightning_deeplab.crf import DenseCRF, unary_from_logits, unary_from_softmax
from tiny_run import quiet_args, save_untrained_checkpoint

REPO = Path(__file__).resolve().parents[1]
SIZES = {"p": (30, 40), "q": (30, 40), "r": (26, 34), "sub/s": (30, 40)}  # (height, width)


def smooth_image(rng, h, w) -> np.ndarray:
    """Two flat colour regions with noise: a picture whose edges the colour kernel can follow."""
    image = np.empty((h, w, 3), np.float32)
    image[:, : w // 2] = (200, 60, 40)
    image[:, w // 2 :] = (40, 90, 210)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """Images and the probabilities `deeplab predict --save_probabilities true` saved for them."""
    root = tmp_path_factory.mktemp("refine")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        path = root / "images" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(rng, h, w)).save(path)
    base = quiet_args(str(root / "unused"))
    save_untrained_checkpoint(base, root / "model.ckpt")
    DeepLabCLI(
        args=[
            "predict",
            *base,
            "--ckpt_path",
            str(root / "model.ckpt"),
            "--data.predict_path",
            str(root / "images"),
            "--output_dir",
            str(root / "predicted"),
            "--overlay",
            "none",
            "--save_probabilities",
            "true",
        ]
    )
    return root


def in_process(probs: np.ndarray, image_path: Path, unary_of=unary_from_softmax, **settings) -> torch.Tensor:
    image = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1)[None]
    unary = unary_of(torch.from_numpy(probs.astype(np.float32))[None])
    return DenseCRF(**settings)(unary, image)[0]


def test_refining_saved_probabilities_equals_the_crf_in_process(predicted, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(
        [
            "crf",
            "--probabilities",
            str(predicted / "predicted" / "probabilities"),
            "--images",
            str(predicted / "images"),
            "--output_dir",
            str(out),
            "--bi_w",
            "6",
            "--batch_size",
            "2",
            "--save_probabilities",
            "--device",
            "cpu",
        ]
    )
    assert status == 0
    assert "4 refined label map(s)" in capsys.readouterr().err
    changed = 0
    for name in SIZES:
        probs = np.load(predicted / "predicted" / "probabilities" / f"{name}.npy")
        expected = in_process(probs, predicted / "images" / f"{name}.png", bi_w=6.0)
        label = Image.open(out / "labels" / f"{name}.png")
        assert label.mode == "P" and label.size == probs.shape[:0:-1]
        assert np.array_equal(np.array(label), expected.argmax(0).numpy())
        refined = np.load(out / "probabilities" / f"{name}.npy")
        assert refined.dtype == np.float16
        np.testing.assert_allclose(refined.astype(np.float32), expected.numpy(), atol=2e-3)
        changed += int((np.array(label) != probs.argmax(0)).sum())
    assert changed > 0  # the CRF did change labels: the comparison is not between two copies of the input


def test_logits_and_bad_arrays_are_reported_and_skipped(predicted, tmp_path, capsys):
    arrays = tmp_path / "arrays"
    rng = np.random.default_rng(1)
    logits = {name: rng.normal(0, 3, (6, h, w)).astype(np.float32) for name, (h, w) in SIZES.items()}
    for name, values in logits.items():
        (arrays / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(arrays / f"{name}.npy", values)
    np.save(arrays / "orphan.npy", logits["p"])  # no image of that name
    np.save(arrays / "small.npy", logits["r"])
    shutil.copy(predicted / "images" / "p.png", tmp_path / "small.png")  # 30x40 image, 26x34 array
    np.save(arrays / "classes.npy", logits["p"][:4])  # 4 classes, the others 6
    images = tmp_path / "images"
    shutil.copytree(predicted / "images", images)
    shutil.copy(tmp_path / "small.png", images / "small.png")
    shutil.copy(images / "p.png", images / "classes.png")
    out = tmp_path / "out"
    status = main(
        [
            "crf",
            "--probabilities",
            str(arrays),
            "--images",
            str(images),
            "--output_dir",
            str(out),
            "--logits",
            "--iterations",
            "3",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert "3 array(s) skipped" in err
    assert "orphan.npy: no image named 'orphan'" in err
    assert "small.npy: is 26x34 (HxW) but its image" in err
    assert "classes.npy: has 4 classes, but most arrays have 6" in err
    assert sorted(p.relative_to(out / "labels").as_posix() for p in (out / "labels").rglob("*.png")) == [
        "p.png",
        "q.png",
        "r.png",
        "sub/s.png",
    ]
    expected = in_process(logits["r"], images / "r.png", unary_from_logits, iterations=3)
    assert np.array_equal(np.array(Image.open(out / "labels" / "r.png")), expected.argmax(0).numpy())

    # logits given as probabilities: refused with the hint, not silently clamped
    status = main(
        ["crf", "--probabilities", str(arrays), "--images", str(images), "--output_dir", str(tmp_path / "out2")]
    )
    assert status == 1 and "not probabilities (pass --logits" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--normalization", "sideways"], "normalization"),
        (["--bi_xy_std", "0"], "bi_xy_std"),
        (["--batch_size", "0"], "batch_size"),
        (["--bi_w_std", "3"], "unrecognized arguments: --bi_w_std"),
        (["--bi", "3"], "unrecognized arguments: --bi"),
        (["--device", "abacus"], "--device 'abacus'"),
    ],
)
def test_usage_errors_exit_2_naming_the_option(predicted, tmp_path, capsys, extra, pattern):
    args = [
        "crf",
        "--probabilities",
        str(predicted / "predicted" / "probabilities"),
        "--images",
        str(predicted / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        *extra,
    ]
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2 and pattern in capsys.readouterr().err


def test_missing_inputs_and_an_earlier_output_are_refused(predicted, tmp_path, capsys):
    base = ["crf", "--images", str(predicted / "images"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as caught:
        main([*base, "--probabilities", str(tmp_path / "nowhere")])
    assert caught.value.code == 2 and "--probabilities" in capsys.readouterr().err
    listing = tmp_path / "list.txt"
    listing.write_text(f"{predicted / 'predicted' / 'probabilities' / 'p.npy'}\n")
    probs = ["--probabilities", str(listing)]
    assert main([*base, *probs]) == 0  # a list file of arrays; its name is the file's stem
    assert (tmp_path / "out" / "labels" / "p.png").is_file()
    with pytest.raises(SystemExit) as caught:
        main([*base, *probs])
    assert caught.value.code == 2 and "already holds outputs" in capsys.readouterr().err
    assert main([*base, *probs, "--overwrite"]) == 0


def test_help_imports_no_torch():
    code = (
        "import sys; from lightning_deeplab.commands import crf_refine; crf_refine.build_parser().format_help(); "
        "print(sorted({'torch', 'numpy', 'pytorch_lightning'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"


def test_the_crf_a_checkpoint_learned(predicted, tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    matrix = torch.eye(6) + 0.2 * torch.rand(6, 6, generator=gen)
    learned = {"crf.pos_w": torch.tensor(2.5), "crf.bi_w": torch.tensor(7.0), "crf.compatibility": matrix}
    ckpt = tmp_path / "stage2.ckpt"
    torch.save({"state_dict": {"model.head.weight": torch.zeros(1), **learned}}, ckpt)
    probabilities, images = str(predicted / "predicted" / "probabilities"), str(predicted / "images")
    common = ["crf", "--probabilities", probabilities, "--images", images, "--device", "cpu"]
    assert main([*common, "--output_dir", str(tmp_path / "out"), "--ckpt", str(ckpt), "--bi_xy_std", "40"]) == 0
    for name in SIZES:
        probs = np.load(predicted / "predicted" / "probabilities" / f"{name}.npy")
        expected = in_process(
            probs, predicted / "images" / f"{name}.png", pos_w=2.5, bi_w=7.0, bi_xy_std=40.0, compatibility=matrix
        )
        assert np.array_equal(np.array(Image.open(tmp_path / "out" / "labels" / f"{name}.png")), expected.argmax(0))
    capsys.readouterr()
    # a learned value given again, a checkpoint that learned nothing, a matrix of another size
    plain = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": {"model.head.weight": torch.zeros(1)}}, plain)
    other = tmp_path / "other.ckpt"
    torch.save(
        {"state_dict": {"model.head.weight": torch.zeros(1), **learned, "crf.compatibility": torch.eye(4)}}, other
    )
    for extra, pattern in [
        (["--ckpt", str(ckpt), "--bi_w", "3"], "--bi_w is learned in --ckpt"),
        (["--ckpt", str(plain)], "holds no learned CRF values"),
        (["--ckpt", str(other)], "compatibility is (4, 4) but there are 6 classes"),
    ]:
        with pytest.raises(SystemExit) as caught:
            main([*common, "--output_dir", str(tmp_path / "refused"), *extra])
        assert caught.value.code == 2 and pattern in capsys.readouterr().err


def test_one_array_or_a_binary_file_as_probabilities_is_refused_by_name(predicted, tmp_path, capsys):
    base = ["crf", "--images", str(predicted / "images"), "--output_dir", str(tmp_path / "out")]
    one = predicted / "predicted" / "probabilities" / "p.npy"
    binary = tmp_path / "arrays.txt"
    binary.write_bytes(one.read_bytes())
    for given, pattern in [(one, "is one array: give the folder"), (binary, "is neither a folder nor a text list")]:
        with pytest.raises(SystemExit) as caught:
            main([*base, "--probabilities", str(given)])
        err = capsys.readouterr().err
        assert caught.value.code == 2 and f"error: --probabilities {given} {pattern}" in err
        assert "codec" not in err


def test_an_images_folder_without_images_is_named_by_its_option(predicted, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as caught:
        main(
            [
                "crf",
                "--probabilities",
                str(predicted / "predicted" / "probabilities"),
                "--images",
                str(tmp_path / "empty"),
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
    err = capsys.readouterr().err
    assert caught.value.code == 2 and f"error: --images {tmp_path / 'empty'} holds no images" in err
    assert "predict_path" not in err


def test_probabilities_that_do_not_sum_to_one_are_refused_or_with_a_flag_refined(predicted, tmp_path, capsys):
    saved = predicted / "predicted" / "probabilities"
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    p = np.load(saved / "p.npy")
    assert p.dtype == np.float16  # as `deeplab predict` stores them: rounding must not count as unnormalised
    np.save(arrays / "p.npy", p)
    np.save(arrays / "q.npy", np.full(p.shape, 0.9, np.float32))
    np.save(arrays / "r.npy", np.zeros(np.load(saved / "r.npy").shape, np.float32))
    base = ["crf", "--probabilities", str(arrays), "--images", str(predicted / "images"), "--iterations", "2"]
    assert main([*base, "--output_dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "1 refined label map(s)" in err and "2 array(s) skipped" in err
    assert f"{arrays / 'q.npy'}: its 6 class probabilities sum to 5.4 at every pixel, up to 4.4 away from 1" in err
    assert f"{arrays / 'r.npy'}: its 6 class probabilities sum to 0 at every pixel, up to 1 away from 1" in err
    assert err.count("pass --logits for raw scores, or --allow_unnormalized") == 2
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == ["p.png"]

    assert main([*base, "--output_dir", str(tmp_path / "warned"), "--allow_unnormalized"]) == 0
    err = capsys.readouterr().err
    assert "3 refined label map(s)" in err and "skipped" not in err
    assert "warning: 2 of them refined from probabilities that do not sum to 1" in err
    assert f"{arrays / 'q.npy'}: its 6 class probabilities sum to 5.4" in err
