"""The back ends the CUDA tests run on: a CUDA GPU, or the project's CUDA sources compiled over
the host emulation of the CUDA runtime (tests/cuda_emulation) and run on CPU tensors through
the operator namespace `lightning_deeplab_emu`."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from cuda_emulation import build as emulation_build
from lightning_deeplab.crf._ops import operators, operators_from

#: Sanitizers the emulated operators are built with (`make test-cuda-emulated` sets
#: "address,undefined" and preloads their runtimes); empty for a plain build.
SANITIZE = os.environ.get("LIGHTNING_DEEPLAB_EMULATION_SANITIZE", "")


def load_emulated_operators() -> str:
    """Builds (if a source changed) and loads the emulated operators; returns their namespace.
    A failed build raises: the emulated tests then error, they never skip."""
    path = emulation_build.build("library", SANITIZE)
    preloaded = os.environ.get("LD_PRELOAD", "")
    missing = [lib for lib in emulation_build.sanitizer_runtimes(SANITIZE) if lib not in preloaded]
    if missing:
        # Loading an instrumented library without its runtimes first would end the process.
        raise RuntimeError(
            f"the emulation is built with -fsanitize={SANITIZE}: preload {' '.join(missing)} (make test-cuda-emulated does)"
        )
    operators()  # the package's own operators first: the emulation reuses their Python rules
    torch.ops.load_library(str(path))
    return emulation_build.NAMESPACE


class Backend:
    """Where the CUDA code runs: `device` holds the tensors, `ops` are its operators, and
    `active()` routes the CRF layer to them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.emulated = name == "emulated"
        self.device = torch.device("cpu" if self.emulated else "cuda")
        self.ops = getattr(torch.ops, emulation_build.NAMESPACE if self.emulated else "lightning_deeplab")

    def to(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.emulated else tensor.to(self.device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if not self.emulated:
            yield
            return
        with operators_from(emulation_build.NAMESPACE):
            yield

    def __repr__(self) -> str:
        return self.name
