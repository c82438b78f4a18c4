"""The package as users install it: a wheel built with pip's build isolation (no torch in the
build, so pure Python with the kernel sources), installed into a fresh virtual environment beside
the pinned torch of this one, used from another folder: the command's help, the CRF (compiled on
first use into the kernel cache, loaded from it afterwards), pydensecrf's README example, and one
clear error where there is no compiler. Nothing may come from the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
import torch

from lightning_deeplab.crf import dense_crf

REPO = Path(__file__).resolve().parents[1]

CRF_SCRIPT = """
import sys, torch
import lightning_deeplab
from lightning_deeplab.crf import _ops, dense_crf
gen = torch.Generator().manual_seed(0)
unary = torch.rand(1, 4, 24, 32, generator=gen)
image = torch.randint(0, 256, (1, 3, 24, 32), dtype=torch.uint8, generator=gen)
torch.save(dense_crf(unary, image), sys.argv[1])
print("package:", lightning_deeplab.__file__)
print("source:", _ops.OPS_SOURCE)
"""

# pydensecrf's README usage, with the one word of the import changed
PYDENSECRF_SCRIPT = """
import numpy as np
import lightning_deeplab.pydensecrf.densecrf as dcrf
from lightning_deeplab.pydensecrf.utils import unary_from_softmax
rng = np.random.default_rng(0)
sm = rng.dirichlet(np.ones(5), size=(40, 56)).transpose(2, 0, 1).astype(np.float32)
image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
d = dcrf.DenseCRF2D(56, 40, 5)
d.setUnaryEnergy(unary_from_softmax(sm))
d.addPairwiseGaussian(sxy=3, compat=3)
d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
Q = np.array(d.inference(5))
assert Q.shape == (5, 40 * 56) and np.allclose(Q.sum(0), 1, atol=1e-5)
print("pydensecrf example:", Q.shape)
"""


def run(command: list, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.mark.slow
def test_the_wheel_installs_beside_torch_and_compiles_its_kernels_on_first_use(tmp_path):
    dist, venv, elsewhere, kernels = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere", tmp_path / "kernels"
    elsewhere.mkdir()
    run(
        [sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "-w", dist, "-q"], cwd=elsewhere
    )  # build isolation on
    (wheel,) = dist.glob("*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")  # no torch in the build: no compiled module
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in (
        "lightning_deeplab/csrc/lattice.h",
        "lightning_deeplab/csrc/cuda/launch.cuh",
        "lightning_deeplab/csrc/cpu/lattice_filter_cpu.cpp",
        "lightning_deeplab/configs/synthetic.yaml",
    ):
        assert shipped in names
    assert not [n for n in names if n.endswith(".so") or n.startswith("tests/") or "cuda_emulation" in n]

    run([sys.executable, "-m", "venv", venv], cwd=elsewhere)
    python, deeplab = venv / "bin" / "python", venv / "bin" / "deeplab"
    purelib = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=elsewhere).stdout.strip()
    )
    # beside the pinned torch (and the rest of the stack) of this environment: nothing downloaded
    (purelib / "pinned_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=elsewhere)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LIGHTNING_DEEPLAB_FORCE_JIT")}
    env.update({"LIGHTNING_DEEPLAB_KERNEL_DIR": str(kernels), "FORCE_CPU": "1", "NO_ALBUMENTATIONS_UPDATE": "1"})

    start = time.monotonic()
    help_text = run([deeplab, "--help"], cwd=elsewhere, env=env).stdout
    print(f"deeplab --help from the wheel: {time.monotonic() - start:.2f} s")
    assert "build-kernels" in help_text and "fit" in help_text

    first = run([python, "-c", CRF_SCRIPT, tmp_path / "first.pt"], cwd=elsewhere, env=env)
    installed_csrc = purelib / "lightning_deeplab" / "csrc"
    assert f"package: {purelib / 'lightning_deeplab'}" in first.stdout and "source: jit" in first.stdout
    assert f"compiling the CPU CRF kernels from {installed_csrc} into {kernels}" in first.stderr
    second = run([python, "-c", CRF_SCRIPT, tmp_path / "second.pt"], cwd=elsewhere, env=env)
    assert "source: cache" in second.stdout and "compiling" not in second.stderr
    gen = torch.Generator().manual_seed(0)
    unary = torch.rand(1, 4, 24, 32, generator=gen)
    image = torch.randint(0, 256, (1, 3, 24, 32), dtype=torch.uint8, generator=gen)
    expected = dense_crf(unary, image)  # this environment's kernels
    for name in ("first.pt", "second.pt"):
        assert torch.equal(torch.load(tmp_path / name), expected)

    assert "pydensecrf example: (5, 2240)" in run([python, "-c", PYDENSECRF_SCRIPT], cwd=elsewhere, env=env).stdout
    assert "already built" in run([deeplab, "build-kernels", "--cpu-only"], cwd=elsewhere, env=env).stdout

    # no compiler: one error naming what to install; the rest of the package still works
    bare = {**env, "CXX": "no-such-compiler", "LIGHTNING_DEEPLAB_KERNEL_DIR": str(tmp_path / "empty")}
    refused = run([deeplab, "build-kernels", "--cpu-only"], cwd=elsewhere, env=bare, check=False)
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith("error: no C++ compiler (no-such-compiler) to build the CRF kernels with: install one")
    )
    models = run(
        [
            python,
            "-c",
            "from lightning_deeplab.models import deeplabv2_resnet101; print(type(deeplabv2_resnet101(num_classes=3)).__name__)",
        ],
        cwd=elsewhere,
        env=bare,
    )
    assert models.stdout.strip() == "DeepLabV2"
