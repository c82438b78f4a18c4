"""The CPU thread count of a CRF call (argument, environment, load), the memory check before a
call allocates, and lattice buffers split into channel blocks (bitwise the same marginals)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import lightning_deeplab.pydensecrf.densecrf as dcrf
from crf_inputs import image_tensor, noisy_probs, photo
from lightning_deeplab.crf import dense_crf, memory, threads, unary_from_softmax
from lightning_deeplab.crf.threads import THREADS_ENV, cpu_threads, resolve_threads

BUFFER_ENV = "LIGHTNING_DEEPLAB_CRF_BUFFER_BYTES"


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def inputs():
    image = image_tensor(photo("astronaut", 40, 56))
    return unary_from_softmax(noisy_probs(1, 5, 40, 56, seed=1)), image


def test_argument_then_environment_then_auto(monkeypatch, two_threads):
    monkeypatch.setattr(threads, "other_runnable_threads", lambda: 0)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert resolve_threads() == 2
    assert resolve_threads(3) == 3
    monkeypatch.setenv(THREADS_ENV, "1")
    assert resolve_threads() == 1
    assert resolve_threads(2) == 2  # the argument wins
    monkeypatch.setenv(THREADS_ENV, "auto")
    assert resolve_threads("auto") == 2


def test_auto_uses_one_thread_when_other_processes_fill_the_cores(monkeypatch, two_threads):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    cores = 4
    monkeypatch.setattr(threads.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(threads, "other_runnable_threads", lambda: 3 * cores)
    assert resolve_threads() == 1
    monkeypatch.setattr(threads, "other_runnable_threads", lambda: cores - 1)
    assert resolve_threads() == 1
    monkeypatch.setattr(threads, "other_runnable_threads", lambda: 1)
    assert resolve_threads() == 2  # three idle cores, capped at torch's two threads
    monkeypatch.setattr(threads, "other_runnable_threads", lambda: None)
    assert resolve_threads() == 2  # unknown load: torch's count


def test_auto_keeps_all_threads_for_batches_split_by_image(monkeypatch, two_threads):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "other_runnable_threads", lambda: 100)
    assert resolve_threads(batch=1) == 1
    assert resolve_threads(batch=3) == 1  # every pass split over vertices
    assert resolve_threads(batch=2) == 2
    assert resolve_threads(batch=9) == 2


def test_auto_never_exceeds_torch_threads(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "other_runnable_threads", lambda: 0)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert resolve_threads() == 1
    finally:
        torch.set_num_threads(saved)


def test_other_runnable_threads_reads_this_machine():
    others = threads.other_runnable_threads()
    assert others is None or others >= 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "two", "0"])
def test_bad_thread_counts_are_refused(bad, inputs, monkeypatch):
    with pytest.raises(ValueError, match="threads must be a positive int"):
        dense_crf(*inputs, threads=bad)
    with pytest.raises(ValueError, match="threads must be a positive int"):
        dcrf.DenseCRF2D(8, 8, 2, threads=bad)
    monkeypatch.setenv(THREADS_ENV, str(bad))
    with pytest.raises(ValueError, match=THREADS_ENV):
        resolve_threads()


def test_cpu_threads_sets_and_restores_torch_threads(two_threads):
    with cpu_threads(1) as count:
        assert count == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_calls_run_on_the_chosen_thread_count(inputs, monkeypatch, two_threads):
    seen = []
    real = dcrf.mean_field

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(dcrf, "mean_field", recording)
    unary = inputs[0][0].reshape(5, -1).numpy()
    crf = dcrf.DenseCRF2D(56, 40, 5, threads=1)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=3, compat=3)
    one = crf.inference(3)
    crf = dcrf.DenseCRF2D(56, 40, 5, threads=2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=3, compat=3)
    assert np.array_equal(one, crf.inference(3))  # the count does not change a bit
    assert seen == [1, 2]
    assert torch.get_num_threads() == 2
    assert torch.equal(dense_crf(*inputs, threads=1), dense_crf(*inputs, threads=2))


def test_a_call_that_cannot_fit_is_refused_before_it_allocates(inputs, monkeypatch):
    monkeypatch.delenv(memory.MEMORY_CHECK_ENV, raising=False)
    monkeypatch.setattr(memory, "available_bytes", lambda: 100_000)
    with pytest.raises(MemoryError, match=r"1 image\(s\) of 40x56 points with 5 classes needs at least") as error:
        dense_crf(*inputs)
    assert "--batch_size" in str(error.value) and memory.MEMORY_CHECK_ENV in str(error.value)
    monkeypatch.setenv(memory.MEMORY_CHECK_ENV, "0")
    dense_crf(*inputs)
    monkeypatch.delenv(memory.MEMORY_CHECK_ENV)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10**9)
    dense_crf(*inputs)


PEAK_SCRIPT = """
import sys, torch
from lightning_deeplab.crf import dense_crf, memory

def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

torch.set_num_threads(1)
height, width, classes = 480, 640, int(sys.argv[1])
unary = torch.rand(1, classes, height, width) * 5
image = torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8)
dense_crf(unary[..., :8, :8].contiguous(), image[..., :8, :8].contiguous())  # load the operators
before = peak()
dense_crf(unary, image)
print(memory.required_bytes(1, height * width, classes, [2, 5], 4), peak() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak resident memory from /proc")
@pytest.mark.parametrize("classes", [3, 21])
def test_required_bytes_is_below_what_a_call_holds(classes):
    # A lower bound: a call that the check refuses could not have run. Few classes make the
    # lattice tables the larger term, many the output copy. (At this size the call holds
    # several times the bound: buffers and the allocator's own; at 4000x3000x21 the bound is
    # 1.9 GiB of the 4.0 GiB held, benchmarks/README.md.)
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(classes)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    need, held = map(int, result.stdout.split())
    assert 0 < need <= held


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, count", [(1, 1), (1, 2), (2, 2), (3, 2)])
def test_channel_blocks_give_the_same_bits(batch, count, dtype, monkeypatch):
    image = image_tensor(*[photo(name, 36, 44) for name in ("astronaut", "coffee", "chelsea")[:batch]])
    unary = unary_from_softmax(noisy_probs(batch, 7, 36, 44, seed=2)).to(dtype)
    monkeypatch.delenv(BUFFER_ENV, raising=False)
    whole = dense_crf(unary, image, iterations=3, threads=count)
    for limit in ("1", "9000", "20000"):  # one channel a block, a few, most
        monkeypatch.setenv(BUFFER_ENV, limit)
        assert torch.equal(dense_crf(unary, image, iterations=3, threads=count), whole)


def test_bad_buffer_limit_is_refused(inputs, monkeypatch):
    monkeypatch.setenv(BUFFER_ENV, "lots")
    with pytest.raises(ValueError, match=BUFFER_ENV):
        dense_crf(*inputs)
