import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _operators():
    """Tests that call `torch.ops.lightning_deeplab.*` directly need the operators loaded (the
    package loads them lazily, at its first op call)."""
    from lightning_deeplab.crf._ops import operators

    return operators()
