"""The kernels' size limit (csrc/lattice_checks.h, the same check before the CPU and the CUDA
build): at most 2^31 - 1 (pixel, vertex) entries B * N * (d+1) per call, so every index fits
int32 and the CUDA hash table (<= 2^32 slots) fits uint32 slot indices. Expanded tensors give
the shapes without the memory: the check runs before anything is read."""

import pytest
import torch

MAX_ENTRIES = 2**31 - 1


def _features(batch, pixels, dim, device="cpu"):
    return torch.zeros(1, 1, dim, device=device).expand(batch, pixels, dim)


@pytest.mark.parametrize("dim", [1, 2, 5, 16])
def test_one_entry_past_the_limit_is_refused(dim):
    pixels = MAX_ENTRIES // (dim + 1) + 1
    with pytest.raises(ValueError, match=r"overflow int32 indices \(at most 2147483647\)"):
        torch.ops.lightning_deeplab.build_lattice(_features(1, pixels, dim))


def test_the_limit_counts_the_whole_batch():
    # 171 frames of 2048x1024 with d = 5 (2.15e9 entries): each frame is well inside, the
    # batch is not; 170 frames would be.
    assert 170 * 2048 * 1024 * 6 <= MAX_ENTRIES < 171 * 2048 * 1024 * 6
    with pytest.raises(ValueError, match=r"B \* N \* \(d\+1\) = 171 \* 2097152 \* 6"):
        torch.ops.lightning_deeplab.build_lattice(_features(171, 2048 * 1024, 5))


def test_sizes_whose_product_overflows_int64_are_refused():
    # B * N * d = 2^62 elements is a valid shape, but B * N * (d+1) = 2^63 wraps an int64
    # product negative, which a multiplied-out check would let through.
    with pytest.raises(ValueError, match="overflow int32 indices"):
        torch.ops.lightning_deeplab.build_lattice(_features(2**31, 2**31, 1))
