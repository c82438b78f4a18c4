"""The pydensecrf API's messages give advice that is right, and read-only arrays (a NumPy view of
a file, a frozen array) go through without torch's warning about them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lightning_deeplab.pydensecrf.densecrf as dcrf


@pytest.mark.parametrize(
    "dtype, advice",
    [(np.uint16, r"\(rgbim >> 8\).astype\(np.uint8\)"), (np.float32, r"\(rgbim \* 255\).round\(\).astype\(np.uint8\)")],
)
def test_the_uint8_advice_scales_instead_of_wrapping(dtype, advice):
    d = dcrf.DenseCRF2D(5, 4, 3)
    with pytest.raises(ValueError, match=advice) as error:
        d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=np.zeros((4, 5, 3), dtype), compat=3)
    assert ".astype(np.uint8)" in str(error.value) and "; convert with .astype" not in str(error.value)
    # the advice is right: a 16-bit image's full scale maps to uint8's full scale
    sixteen = np.array([0, 257, 65535], np.uint16)
    assert ((sixteen >> 8).astype(np.uint8) == [0, 1, 255]).all()


def test_read_only_arrays_go_through_without_torch_warnings():
    script = textwrap.dedent(
        """
        import warnings
        import numpy as np
        import lightning_deeplab.pydensecrf.densecrf as dcrf
        from lightning_deeplab.pydensecrf.utils import unary_from_softmax
        warnings.simplefilter("error")  # torch's "NumPy array is not writable" becomes an error
        probs = np.full((3, 20), 1 / 3, np.float32)
        unary = unary_from_softmax(probs)
        unary.flags.writeable = False
        features = np.random.default_rng(0).random((2, 20)).astype(np.float32)
        features.flags.writeable = False
        d = dcrf.DenseCRF(20, 3)
        d.setUnaryEnergy(unary)
        d.addPairwiseEnergy(features, compat=3)
        q = d.inference(2)
        q.flags.writeable = False
        print(d.klDivergence(q))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "not writable" not in done.stderr, done.stderr


def test_an_overflowing_potts_compat_is_refused_by_name():
    d = dcrf.DenseCRF2D(5, 4, 3)
    with pytest.raises(ValueError, match="compat must be finite and at most 1e\\+12 in magnitude"):
        d.addPairwiseGaussian(sxy=3, compat=3e38)
