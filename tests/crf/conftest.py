import pytest
import torch

from device_backends import Backend, load_emulated_operators


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _operators():
    """Tests that call `torch.ops.lightning_deeplab.*` directly need the operators loaded (the
    package loads them lazily, at its first op call)."""
    from lightning_deeplab.crf._ops import operators

    return operators()


@pytest.fixture(scope="session")
def emulated_operators():
    """The CUDA sources of the checkout on the host emulation (built if they changed)."""
    return getattr(torch.ops, load_emulated_operators())


@pytest.fixture(
    params=[
        pytest.param(
            "cuda",
            marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
        ),
        pytest.param("emulated", marks=pytest.mark.emulated),
    ]
)
def backend(request):
    """The CUDA code on a GPU, or on the CPU through the emulation of the CUDA runtime."""
    if request.param == "emulated":
        request.getfixturevalue("emulated_operators")
    return Backend(request.param)
