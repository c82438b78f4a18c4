"""The CUDA back end against the CPU one, on two back ends (the `backend` fixture): a CUDA GPU
(skipped without one), and the host emulation of the same CUDA sources (csrc/cuda's kernels
and host code compiled as C++ over tests/cuda_emulation, run on CPU tensors, in every test
run; under AddressSanitizer and UBSan in `make test-cuda-emulated`).

The lattice build and the filter (splat, blur, slice, fused softmax) run the same explicitly
rounded arithmetic from csrc/lattice.h on both back ends, in the same order, and the lattices
get the same vertex numbering: lattices and filter outputs are bitwise equal (on a GPU the
float64 softmax excepted: each back end's libm exp, to about 1 ulp). A whole `dense_crf` on a
GPU also runs torch's own softmax and rsqrt, whose CPU and CUDA versions differ in the last
bit, so it is compared within a tolerance there; on the emulation all of it is bitwise equal.
What only a GPU can show (streams, a second device, CUDA graphs, host synchronisation, the
device intrinsics, compute-sanitizer) is in the tests marked `needs_gpu`.
"""

import contextlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import lightning_deeplab.pydensecrf.densecrf as dcrf
from cuda_emulation import build as emulation_build
from lightning_deeplab.crf import DenseCRF, build_lattice, dense_crf, unary_from_softmax
from lightning_deeplab.crf.features import bilateral_features, position_features
from lightning_deeplab.crf.mean_field import KernelSettings, build_kernels, make_kernel, mean_field, pixels_last

from crf_inputs import CORRUPTIONS, corrupted_tables, image_tensor, noisy_probs, photo
from device_backends import Backend


def needs_gpu(test):
    """A test of what only real CUDA hardware shows."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


CUDA = torch.device("cuda")
PARAMS = {"pos_w": 3.0, "pos_xy_std": 1.0, "bi_w": 4.0, "bi_xy_std": 67.0, "bi_rgb_std": 3.0}


def _photo_batch(height=96, width=128, classes=21, batch=2):
    image = image_tensor(photo("astronaut", height, width), photo("coffee", height, width))[:batch]
    unary = unary_from_softmax(noisy_probs(batch, classes, height, width, seed=0))
    return unary, image


def _assert_lattices_equal(cpu, other, device):
    # The CPU build makes no splat lists; the CUDA build's must be the CPU offsets' entries
    # grouped by vertex in pixel order.
    assert cpu.splat_ptr.numel() == 0
    for name, a, b in zip(cpu._fields, cpu.with_splat_lists(), other):
        assert b.device.type == device.type, name
        assert torch.equal(a, b.cpu()), name


def _assert_crf_equal(expected, got, backend):
    """A whole CRF: bitwise on the emulation, within torch's CPU/CUDA last-bit differences on a GPU."""
    if backend.emulated:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=1e-5)


def _fused_iterations(neg_unary, kernels, q, iterations):
    """The fused Potts mean-field loop of `mean_field`, from a given start q."""
    for _ in range(iterations):
        messages = neg_unary
        for index, kernel in enumerate(kernels):
            messages = kernel.lattice.filter(
                q,
                scale_in=kernel.scale_in,
                scale_out=kernel.scale_out,
                addend=messages,
                softmax=index == len(kernels) - 1,
            )
        q = messages
    return q


def _to(kernels, backend):
    def move(t):
        return None if t is None else backend.to(t)

    return [
        type(k)(
            type(k.lattice)(*(move(t) for t in k.lattice.with_splat_lists())),
            move(k.scale_in),
            move(k.scale_out),
            k.weight,
        )
        for k in kernels
    ]


# ---- the lattice -----------------------------------------------------------------------------


def _flat_and_photo():
    _, image = _photo_batch(40, 56, batch=1)
    flat = torch.full_like(image, 117)
    return bilateral_features(torch.cat([flat, image, flat]), 67.0, 3.0)


LATTICES = {
    "position": lambda: position_features(2, 96, 128, 1.0, torch.device("cpu")),
    "bilateral": lambda: bilateral_features(_photo_batch()[1], 67.0, 3.0),
    "1x1": lambda: bilateral_features(_photo_batch(1, 1, batch=1)[1], 67.0, 3.0),
    "1xW": lambda: bilateral_features(_photo_batch(1, 257, batch=1)[1], 67.0, 3.0),
    "Hx1": lambda: bilateral_features(_photo_batch(129, 1, batch=1)[1], 67.0, 3.0),
    "flat image in a batch": _flat_and_photo,
    **{f"d={d}": (lambda d=d: torch.randn(2, 700, d) * 2) for d in range(1, 17)},
}


@pytest.mark.parametrize("case", list(LATTICES))
def test_lattice_equals_cpu_lattice(backend, case):
    features = LATTICES[case]()
    expected = build_lattice(features)
    with backend.active():
        got = build_lattice(backend.to(features))
    # Same arithmetic (no fused multiply-adds) and the same first-use vertex numbering.
    _assert_lattices_equal(expected, got, backend.device)


@needs_gpu
def test_cuda_features_built_on_the_gpu_give_the_cpu_lattices():
    _, image = _photo_batch()
    cpu_features = [position_features(2, 96, 128, 1.0, torch.device("cpu")), bilateral_features(image, 67.0, 3.0)]
    gpu_features = [position_features(2, 96, 128, 1.0, CUDA), bilateral_features(image.to(CUDA), 67.0, 3.0)]
    for cpu, gpu in zip(cpu_features, gpu_features):
        assert gpu.device.type == "cuda"
        assert torch.equal(gpu.cpu(), cpu)  # IEEE division on both
        _assert_lattices_equal(build_lattice(cpu), build_lattice(gpu), CUDA)


@pytest.mark.parametrize("bad", ["nan", "inf", "too large"])
def test_features_outside_the_lattice_are_refused_with_the_cpu_message(backend, bad):
    features = torch.randn(1, 100, 5)
    features[0, 37, 2] = {"nan": float("nan"), "inf": float("inf"), "too large": 1e7}[bad]
    with pytest.raises(ValueError) as on_cpu:
        torch.ops.lightning_deeplab.build_lattice(features)
    with pytest.raises(ValueError) as on_backend:
        backend.ops.build_lattice(backend.to(features))
    assert "not finite or too large" in str(on_cpu.value)
    assert str(on_backend.value).splitlines()[0] == str(on_cpu.value).splitlines()[0]
    with backend.active(), pytest.raises(ValueError, match="not finite"):
        build_lattice(backend.to(features))


def test_size_limit_is_the_cpu_one(backend):
    features = backend.to(torch.zeros(1, 1, 5)).expand(171, 2048 * 1024, 5)
    with pytest.raises(ValueError, match="overflow int32 indices"):
        backend.ops.build_lattice(features)


# ---- the filter ------------------------------------------------------------------------------


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("extras", ["none", "scales", "addend", "scales+addend"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_filter_is_bitwise_the_cpu_filter(backend, dtype, reverse, extras, softmax):
    features = torch.randn(2, 1500, 5) * 3
    values = torch.randn(2, 1500, 21, dtype=dtype) * 10
    scales = (
        (torch.rand(2, 1500, dtype=dtype), torch.rand(2, 1500, dtype=dtype)) if "scales" in extras else (None, None)
    )
    addend = torch.randn(2, 1500, 21, dtype=dtype) * 30 if "addend" in extras else None
    cpu = build_lattice(features).filter(values, reverse, *scales, addend, softmax=softmax)
    with backend.active():
        lattice = build_lattice(backend.to(features))
        moved = [None if t is None else backend.to(t) for t in (values, *scales, addend)]
        got = lattice.filter(moved[0], reverse, moved[1], moved[2], moved[3], softmax=softmax)
    assert got.device.type == backend.device.type and got.dtype == dtype
    if softmax and dtype == torch.float64 and not backend.emulated:
        torch.testing.assert_close(got.cpu(), cpu, rtol=1e-14, atol=1e-15)  # each side's libm exp: a few ulp
    else:
        assert torch.equal(got.cpu(), cpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("channels", [0, 1, 2, 3, 4, 5, 8, 19, 21, 300])
def test_filter_of_any_channel_count_is_bitwise_the_cpu_filter(backend, channels, softmax, dtype):
    # The CPU filter works on rows in vector chunks, the last one overlapping the one before
    # when the chunk width does not divide the channel count (float32: 8, then 4, then 1;
    # float64: 4, 2, 1), and its softmax on groups of rows (row by row for the rest of a range,
    # and for over 256 channels); the CUDA filter channel by channel, row by row: the same
    # bits. 803 pixels leave a partial group, on one thread and on two.
    features = torch.randn(2, 803, 2)
    values = torch.randn(2, 803, channels, dtype=dtype) * 20
    threads = torch.get_num_threads()
    try:
        cpu = []
        for count in (1, 2):
            torch.set_num_threads(count)
            cpu.append(build_lattice(features).filter(values, softmax=softmax))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(cpu[0], cpu[1])
    with backend.active():
        got = build_lattice(backend.to(features)).filter(backend.to(values), softmax=softmax)
    assert got.shape == (2, 803, channels) and got.dtype == dtype
    if softmax and dtype == torch.float64 and not backend.emulated:
        torch.testing.assert_close(got.cpu(), cpu[0], rtol=1e-14, atol=1e-15)  # each side's libm exp
    else:
        assert torch.equal(got.cpu(), cpu[0])


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_filter_refuses_corrupted_lattice_tables(backend, corruption):
    table, index, value, message = CORRUPTIONS[corruption]
    values = backend.to(torch.rand(2, 500, 3))
    with backend.active():
        lattice = build_lattice(backend.to(torch.randn(2, 500, 5) * 3))
        with pytest.raises(ValueError, match=message):
            backend.ops.lattice_filter(values, *corrupted_tables(lattice, table, index, value), None, None, None, False)
        # The same table changed in place after it was built (and trusted) is checked again.
        getattr(lattice, table).view(-1)[index] = value
        with pytest.raises(ValueError, match=message):
            lattice.filter(values)


def test_filter_refuses_a_lattice_without_splat_lists(backend):
    lattice = build_lattice(torch.randn(1, 300, 3))  # on the CPU: no splat lists
    values = torch.rand(1, 300, 2)
    with backend.active():
        moved = [backend.to(t) for t in lattice.filter_tables]
        with pytest.raises(ValueError, match="has no splat lists"):
            backend.ops.lattice_filter(backend.to(values), *moved, None, None, None, False, False)
        with_lists = [backend.to(t) for t in lattice.with_splat_lists().filter_tables]
        got = backend.ops.lattice_filter(backend.to(values), *with_lists, None, None, None, False, False)
    assert torch.equal(got.cpu(), lattice.filter(values))


# ---- mean field and the whole CRF ------------------------------------------------------------


def test_mean_field_iterations_are_bitwise_the_cpu_ones(backend):
    unary, image = _photo_batch(48, 64)
    kernels = build_kernels(image, KernelSettings(**PARAMS), torch.float32)
    neg_unary = -pixels_last(unary).contiguous()
    q0 = torch.softmax(neg_unary, dim=-1)
    cpu = _fused_iterations(neg_unary, kernels, q0, 5)
    with backend.active():
        got = _fused_iterations(backend.to(neg_unary), _to(kernels, backend), backend.to(q0), 5)
    assert torch.equal(got.cpu(), cpu)


def test_crf_layer_matches_cpu_with_gradients(backend):
    unary, image = _photo_batch(48, 64)
    compat = torch.eye(21) + 0.05
    target = torch.randint(0, 21, (2, 48, 64))
    results = []
    for on_backend in (False, True):
        crf = DenseCRF(iterations=5, compatibility=compat, trainable=True)
        u = unary.clone()
        if on_backend:
            crf, u = crf.to(backend.device), backend.to(u)
        u.requires_grad_(True)
        with backend.active() if on_backend else contextlib.nullcontext():
            q = crf(u, backend.to(image) if on_backend else image)
            torch.nn.functional.nll_loss(torch.log(q), backend.to(target) if on_backend else target).backward()
        results.append((q, u.grad, {name: p.grad for name, p in crf.named_parameters()}))
    (q_cpu, grad_cpu, params_cpu), (q_got, grad_got, params_got) = results
    _assert_crf_equal(q_cpu, q_got, backend)
    if backend.emulated:
        assert torch.equal(grad_got, grad_cpu)
        assert all(torch.equal(params_got[name], grad) for name, grad in params_cpu.items())
    else:
        torch.testing.assert_close(grad_got.cpu(), grad_cpu, rtol=1e-4, atol=1e-5)
        for name, grad in params_cpu.items():
            torch.testing.assert_close(params_got[name].cpu(), grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalization", ["symmetric", "after"])
def test_deeplab_crf_matches_cpu_on_a_photo(backend, normalization):
    height, width = (64, 96) if backend.emulated else (375, 500)
    unary, image = _photo_batch(height, width, batch=1)
    expected = dense_crf(unary, image, normalization=normalization)
    with backend.active():
        got = dense_crf(backend.to(unary), backend.to(image), normalization=normalization)
    _assert_crf_equal(expected, got, backend)


def test_pydensecrf_api_matches_cpu(backend):
    height, width, classes = 40, 56, 5
    image = photo("chelsea", height, width)
    probs = noisy_probs(1, classes, height, width, seed=3)[0].numpy()

    def readme_usage(device):
        d = dcrf.DenseCRF2D(width, height, classes, device=device)
        d.setUnaryEnergy(np.ascontiguousarray(-np.log(probs).reshape(classes, -1)))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
        return d.inference(5)

    expected = readme_usage("cpu")
    with backend.active():
        got = readme_usage(backend.device)
    if backend.emulated:
        assert np.array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def _padded(height, width, size, classes=21):
    # A photo padded with the mean colour, as DeepLab evaluates: one flat region of many
    # pixels, whose vertices get the longest splat lists.
    unary, image = _photo_batch(height, width, classes=classes, batch=1)
    padded_image = torch.full((1, 3, size, size), 117, dtype=torch.uint8)
    padded_image[..., :height, :width] = image
    padded_unary = torch.zeros(1, classes, size, size)
    padded_unary[..., :height, :width] = unary
    return padded_unary, padded_image


def _flat(height, width, classes=5):
    unary = unary_from_softmax(noisy_probs(1, classes, height, width, seed=1))
    return unary, torch.full((1, 3, height, width), 90, dtype=torch.uint8)


# name: (GPU case, emulated case); the emulated cases stay about 100x100 and below.
SHAPES = {
    "1x1": (lambda: _photo_batch(1, 1, classes=3, batch=1),) * 2,
    "1xW": (lambda: _photo_batch(1, 257, classes=4, batch=1),) * 2,
    "Hx1": (lambda: _photo_batch(129, 1, classes=4, batch=1),) * 2,
    "padded": (lambda: _padded(321, 400, 513), lambda: _padded(60, 75, 97)),
    "flat": (lambda: _flat(300, 400), lambda: _flat(70, 90)),
    "large": (
        lambda: _photo_batch(1024, 2048, classes=19, batch=1),
        lambda: _photo_batch(90, 110, classes=19, batch=1),
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shapes_match_cpu(backend, shape):
    unary, image = SHAPES[shape][backend.emulated]()
    kernels = build_kernels(image, KernelSettings(**PARAMS), torch.float32)
    neg_unary = -pixels_last(unary).contiguous()
    q0 = torch.softmax(neg_unary, dim=-1)
    cpu = _fused_iterations(neg_unary, kernels, q0, 2)
    expected = dense_crf(unary, image, iterations=3, **PARAMS)
    with backend.active():
        moved_kernels = build_kernels(backend.to(image), KernelSettings(**PARAMS), torch.float32)
        for cpu_kernel, kernel in zip(kernels, moved_kernels):
            _assert_lattices_equal(cpu_kernel.lattice, kernel.lattice, backend.device)
        got = _fused_iterations(backend.to(neg_unary), _to(kernels, backend), backend.to(q0), 2)
        q = dense_crf(backend.to(unary), backend.to(image), iterations=3, **PARAMS)
    assert torch.equal(got.cpu(), cpu)
    _assert_crf_equal(expected, q, backend)


def test_refuses_nan_unary(backend):
    unary, image = _photo_batch(8, 8, classes=3, batch=1)
    unary[0, 1, 2, 3] = float("nan")
    # On CUDA the value checks read back to the host, so they run when asked for.
    with backend.active(), pytest.raises(ValueError, match="unary contains NaN or Inf"):
        dense_crf(backend.to(unary), backend.to(image), check_values=True)


def test_float64_gradcheck(backend):
    unary, image = _photo_batch(5, 6, classes=3, batch=1)
    unary = backend.to(unary.double()).requires_grad_(True)
    with backend.active():
        assert torch.autograd.gradcheck(
            lambda u: dense_crf(u, backend.to(image), iterations=3, bi_xy_std=5.0, bi_rgb_std=20.0), (unary,)
        )


@pytest.mark.parametrize("softmax", [False, True])
def test_filter_gradcheck(backend, softmax):
    features = backend.to(torch.randn(1, 30, 3))
    scale_in, scale_out = (backend.to(torch.rand(1, 30, dtype=torch.float64) + 0.5) for _ in range(2))
    values = backend.to(torch.randn(1, 30, 4, dtype=torch.float64)).requires_grad_(True)
    addend = backend.to(torch.randn(1, 30, 4, dtype=torch.float64)).requires_grad_(True)
    with backend.active():
        lattice = build_lattice(features)
        for reverse in (False, True):
            assert torch.autograd.gradcheck(
                lambda v, a: lattice.filter(v, reverse, scale_in, scale_out, a, softmax=softmax), (values, addend)
            )


def test_opcheck(backend):
    features = backend.to(torch.randn(2, 60, 3))
    torch.library.opcheck(backend.ops.build_lattice.default, (features,))
    lattice = backend.ops.build_lattice(features)
    values = backend.to(torch.rand(2, 60, 4)).requires_grad_(True)
    scale = backend.to(torch.rand(2, 60))
    torch.library.opcheck(backend.ops.lattice_filter.default, (values, *lattice[:6], scale, scale, None, False))


# ---- the emulation itself --------------------------------------------------------------------

WORKERS_AND_SEEDS = [(1, 0), (2, 1), (4, 7), (3, 12345)]


@pytest.fixture
def emulation_settings(emulated_operators):
    yield emulated_operators.configure
    emulated_operators.configure(1, 0)


@pytest.mark.emulated
@pytest.mark.parametrize("workers, seed", WORKERS_AND_SEEDS)
def test_emulated_results_do_not_depend_on_block_order_or_workers(emulation_settings, workers, seed):
    # The kernels may not depend on the order of blocks and threads, nor on what runs at once.
    backend = Backend("emulated")
    unary, image = _photo_batch(40, 56, classes=5)
    features = bilateral_features(image, 67.0, 3.0)
    values = torch.randn(2, 40 * 56, 5)
    expected_lattice = build_lattice(features)
    expected_filter = expected_lattice.filter(values, softmax=True)
    expected_crf = dense_crf(unary, image, iterations=3)
    emulation_settings(workers, seed)
    with backend.active():
        lattice = build_lattice(features)
        _assert_lattices_equal(expected_lattice, lattice, backend.device)
        assert torch.equal(lattice.filter(values, softmax=True), expected_filter)
        assert torch.equal(dense_crf(unary, image, iterations=3), expected_crf)


@pytest.mark.emulated
def test_emulated_launch_refuses_grids_the_runtime_cannot_hold(emulated_operators):
    invalid_configuration = 9  # cudaErrorInvalidConfiguration
    launch = emulated_operators.launch_empty
    assert launch(1) == 0 and launch(256) == 0 and launch(257 * 256 + 1) == 0
    assert launch(0) == invalid_configuration
    assert launch(-5) == invalid_configuration
    # 2^31 blocks of 256 threads: one block past the runtime's grid; a cast to unsigned int
    # would have wrapped larger grids into small ones that skip work.
    assert launch((2**31 - 1) * 256 + 1) == invalid_configuration
    assert launch(2**32 * 256 + 1) == invalid_configuration
    assert launch(2**63 - 1) == invalid_configuration


@pytest.mark.emulated
@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
def test_emulated_library_exports_no_symbol(emulated_operators):
    # Nothing in it can bind to (or be bound by) a CUDA build of lightning_deeplab._C.
    library = emulation_build.build("library", os.environ.get("LIGHTNING_DEEPLAB_EMULATION_SANITIZE", ""))
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    assert symbols.stdout.strip() == ""


# ---- what only a GPU shows -------------------------------------------------------------------


@needs_gpu
def test_cuda_two_runs_are_bitwise_identical():
    unary, image = _photo_batch(200, 300, batch=2)
    unary, image = unary.to(CUDA), image.to(CUDA)
    first = dense_crf(unary, image, **PARAMS)
    lattice_a = build_lattice(bilateral_features(image, 67.0, 3.0))
    second = dense_crf(unary, image, **PARAMS)
    lattice_b = build_lattice(bilateral_features(image, 67.0, 3.0))
    assert torch.equal(first, second)
    for name, a, b in zip(lattice_a._fields, lattice_a, lattice_b):
        assert torch.equal(a, b), name


@needs_gpu
def test_cuda_runs_on_a_side_stream_while_the_default_stream_is_busy():
    unary, image = _photo_batch(120, 160, batch=2)
    expected = dense_crf(unary.to(CUDA), image.to(CUDA), **PARAMS)
    busy = torch.randn(4096, 4096, device=CUDA)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    for _ in range(20):
        busy = busy @ busy / 64.0  # keeps the default stream busy for a while
    with torch.cuda.stream(side):
        # Inputs written on the side stream: a kernel launched elsewhere would race with them.
        unary_side = unary.to(CUDA, non_blocking=False) * 1.0
        image_side = image.to(CUDA).clone()
        q = dense_crf(unary_side, image_side, **PARAMS)
    side.synchronize()
    assert torch.equal(q, expected)
    torch.cuda.synchronize()


@needs_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
def test_cuda_tensors_on_the_second_device():
    unary, image = _photo_batch(64, 80, batch=2)
    expected = dense_crf(unary.to("cuda:0"), image.to("cuda:0"), **PARAMS)
    with torch.cuda.device(0):  # the current device is not the tensors' device
        q = dense_crf(unary.to("cuda:1"), image.to("cuda:1"), **PARAMS)
    assert q.device == torch.device("cuda:1")
    assert torch.equal(q.cpu(), expected.cpu())


@needs_gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 120 * 2**30,
    reason="needs a GPU with 120 GiB",
)
def test_cuda_hash_table_beyond_two_to_the_31_slots():
    # 86 frames of 2048x1024 with d = 5: 1.08e9 entries (inside the limit), a hash table of
    # 2^32 slots, so half the slot indices exceed int32. Every frame is the same photo, so
    # every frame must get the first frame's lattice, shifted by its vertex base.
    frames = 86
    _, image = _photo_batch(1024, 2048, batch=1)
    one = bilateral_features(image.to(CUDA), 67.0, 3.0)
    lattice = build_lattice(one.expand(frames, -1, -1).contiguous())
    del one
    counts = lattice.vertex_counts.cpu()
    assert torch.all(counts == counts[0])
    base = int(counts[0]) * (frames - 1)
    assert torch.equal(lattice.offsets[-1], lattice.offsets[0] + base)
    assert torch.equal(lattice.weights[-1], lattice.weights[0])
    first = build_lattice(bilateral_features(image.to(CUDA), 67.0, 3.0))
    assert torch.equal(lattice.offsets[0], first.offsets[0])
    del lattice
    torch.cuda.empty_cache()


@needs_gpu
def test_cuda_mean_field_loop_replays_in_a_cuda_graph():
    # The lattice build sizes its outputs by the vertex count (one host sync), so it stays
    # outside; the normalisation and every iteration after it are captured.
    unary, image = _photo_batch(64, 80, batch=2)
    unary, image = unary.to(CUDA), image.to(CUDA)
    lattices = [
        build_lattice(position_features(2, 64, 80, 1.0, CUDA)),
        build_lattice(bilateral_features(image, 67.0, 3.0)),
    ]
    neg_unary = -pixels_last(unary).contiguous()

    def loop():
        kernels = [
            make_kernel(lattices[0], 3.0, "symmetric", torch.float32),
            make_kernel(lattices[1], 4.0, "symmetric", torch.float32),
        ]
        return mean_field(neg_unary, kernels, iterations=10)

    expected = loop()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capturing stream, as torch.cuda.graphs asks
        loop()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = loop()
    captured.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, expected)


@needs_gpu
def test_cuda_iterations_do_not_synchronize():
    unary, image = _photo_batch(64, 80, batch=2)
    unary, image = unary.to(CUDA), image.to(CUDA)
    kernels = [
        make_kernel(build_lattice(position_features(2, 64, 80, 1.0, CUDA)), 3.0, "symmetric", torch.float32),
        make_kernel(build_lattice(bilateral_features(image, 67.0, 3.0)), 4.0, "symmetric", torch.float32),
    ]
    neg_unary = -unary.permute(0, 2, 3, 1).reshape(2, 64 * 80, 21).contiguous()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        q = mean_field(neg_unary, kernels, iterations=10)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert q.shape == neg_unary.shape


@needs_gpu
def test_cuda_refuses_mixed_devices():
    unary, image = _photo_batch(8, 8, classes=3, batch=1)
    with pytest.raises(ValueError, match="unary is on cuda:0 but image is on cpu"):
        dense_crf(unary.to(CUDA), image)


# A small case for compute-sanitizer: both lattices, their normalisation and the fused loop,
# float32 and float64 (torch's kernels are checked too: a filter on kernel names might skip them).
SANITIZER_CASE = """
import torch
from lightning_deeplab.crf import dense_crf
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float64):
    unary = torch.rand(2, 4, 13, 17, generator=g).to(dtype).cuda()
    image = (torch.rand(2, 3, 13, 17, generator=g) * 255).to(torch.uint8).cuda()
    q = dense_crf(unary, image, iterations=3)
    torch.cuda.synchronize()
    assert torch.isfinite(q).all()
print("sanitizer case done")
"""


def _sanitizer():
    bundled = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "compute-sanitizer")
    return shutil.which("compute-sanitizer") or (bundled if os.path.isfile(bundled) else None)


@needs_gpu
@pytest.mark.skipif(_sanitizer() is None, reason="compute-sanitizer is neither on PATH nor in $CUDA_HOME/bin")
@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "synccheck"])
def test_cuda_compute_sanitizer(tool):
    command = [_sanitizer(), "--tool", tool, "--error-exitcode", "97", sys.executable, "-c", SANITIZER_CASE]
    # Without the caching allocator every tensor is its own allocation, so memcheck sees an
    # access past a tensor's end instead of landing in a neighbour in the same cached block.
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-4000:]
    assert "sanitizer case done" in report
    assert "ERROR SUMMARY: 0 errors" in report or "RACECHECK SUMMARY: 0 hazards" in report, report[-4000:]
