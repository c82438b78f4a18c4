"""The build on first use: without lightning_deeplab._C the operators are compiled from csrc/ into
the kernel cache, once and saying so, and compute what the built module computes; a later process
loads them from the cache."""

import os
import subprocess
import sys

import pytest
import torch

from tiny_run import REPO

from lightning_deeplab.crf import dense_crf

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
import torch
from lightning_deeplab.crf import _ops, dense_crf
gen = torch.Generator().manual_seed(0)
unary = torch.rand(1, 4, 24, 32, generator=gen)
image = torch.randint(0, 256, (1, 3, 24, 32), dtype=torch.uint8, generator=gen)
torch.save(dense_crf(unary, image), sys.argv[1])
print("source:", _ops.OPS_SOURCE)
"""


@pytest.mark.slow
def test_operators_compile_once_into_the_cache_when_the_module_is_missing(tmp_path):
    env = dict(
        os.environ, LIGHTNING_DEEPLAB_FORCE_JIT="1", FORCE_CPU="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions")
    )
    env.pop("LIGHTNING_DEEPLAB_KERNEL_DIR", None)
    runs = []
    for name in ("first", "second"):
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(tmp_path / f"{name}.pt")],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        runs.append(result.stdout)
    cache = tmp_path / "extensions" / "lightning_deeplab"  # torch's extension folder, ours inside
    assert "source: jit" in runs[0]
    assert f"compiling the CPU CRF kernels from {REPO / 'csrc'} into {cache}" in runs[0]
    assert "source: cache" in runs[1] and "compiling" not in runs[1]
    gen = torch.Generator().manual_seed(0)
    unary = torch.rand(1, 4, 24, 32, generator=gen)
    image = torch.randint(0, 256, (1, 3, 24, 32), dtype=torch.uint8, generator=gen)
    for name in ("first", "second"):
        assert torch.equal(torch.load(tmp_path / f"{name}.pt"), dense_crf(unary, image))


def test_a_cached_build_is_used_only_for_the_same_sources(tmp_path, monkeypatch):
    from lightning_deeplab.crf import _build

    for name in ("lattice.h", "ops.cpp"):
        (tmp_path / name).write_text("// v1\n")
    monkeypatch.setenv(_build.KERNEL_DIR_ENV, str(tmp_path / "cache"))
    first = _build.cached_build_dir(False, str(tmp_path))
    assert first.startswith(str(tmp_path / "cache"))
    assert _build.cached_build_dir(False, str(tmp_path)) == first
    assert _build.cached_build_dir(True, str(tmp_path)) != first  # the CUDA kernels: another build
    (tmp_path / "lattice.h").write_text("// v2\n")  # a header changed: another build
    assert _build.cached_build_dir(False, str(tmp_path)) != first
