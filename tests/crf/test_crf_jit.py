"""The just-in-time fallback: without lightning_deeplab._C the operators are compiled from
csrc/ by torch.utils.cpp_extension, logged, and compute what the built module computes."""

import os
import subprocess
import sys

import pytest
import torch

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
def test_operators_compile_just_in_time_when_the_module_is_missing(tmp_path):
    env = dict(
        os.environ, LIGHTNING_DEEPLAB_FORCE_JIT="1", FORCE_CPU="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions")
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "q.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "source: jit" in result.stdout
    assert "lightning_deeplab._C is not built; building the CRF operators" in result.stdout
    gen = torch.Generator().manual_seed(0)
    unary = torch.rand(1, 4, 24, 32, generator=gen)
    image = torch.randint(0, 256, (1, 3, 24, 32), dtype=torch.uint8, generator=gen)
    assert torch.equal(torch.load(tmp_path / "q.pt"), dense_crf(unary, image))
