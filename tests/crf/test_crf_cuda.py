"""CUDA implementation against the CPU one (skipped without a GPU).

The lattice build and the filter (splat, blur, slice, fused softmax) run the same explicitly
rounded arithmetic from csrc/lattice.h on both back ends, in the same order, and the lattices
get the same vertex numbering: lattices and filter outputs are bitwise equal (float64 softmax
excepted: each back end's libm exp, to about 1 ulp). A whole `dense_crf` also runs torch's own
softmax and rsqrt, whose CPU and CUDA versions differ in the last bit, so it is compared within
a tolerance; the mean-field iterations from the same start are bitwise equal.
"""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from lightning_deeplab.crf import DenseCRF, build_lattice, dense_crf, unary_from_softmax
from lightning_deeplab.crf.features import bilateral_features, position_features
from lightning_deeplab.crf.mean_field import build_kernels, make_kernel, mean_field, pixels_last

from crf_inputs import image_tensor, noisy_probs, photo

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")
PARAMS = {"pos_w": 3.0, "pos_xy_std": 1.0, "bi_w": 4.0, "bi_xy_std": 67.0, "bi_rgb_std": 3.0}


def _photo_batch(height=96, width=128, classes=21, batch=2):
    image = image_tensor(photo("astronaut", height, width), photo("coffee", height, width))[:batch]
    unary = unary_from_softmax(noisy_probs(batch, classes, height, width, seed=0))
    return unary, image


def _assert_lattices_equal(cpu, gpu):
    for name, a, b in zip(cpu._fields, cpu, gpu):
        assert b.device.type == "cuda", name
        assert torch.equal(a, b.cpu()), name


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


def _to(kernels, device):
    return [
        type(k)(
            type(k.lattice)(*(t.to(device) for t in k.lattice)),
            None if k.scale_in is None else k.scale_in.to(device),
            k.scale_out.to(device),
            k.weight,
        )
        for k in kernels
    ]


@pytest.mark.parametrize("kind", ["position", "bilateral"])
def test_cuda_lattice_equals_cpu_lattice(kind):
    _, image = _photo_batch()
    if kind == "position":
        features = position_features(2, 96, 128, 1.0, torch.device("cpu"))
    else:
        features = bilateral_features(image, 67.0, 3.0)
    # Same arithmetic (no fused multiply-adds) and the same first-use vertex numbering.
    _assert_lattices_equal(build_lattice(features), build_lattice(features.to(CUDA)))


def test_cuda_features_built_on_the_gpu_give_the_cpu_lattices():
    _, image = _photo_batch()
    cpu_features = [position_features(2, 96, 128, 1.0, torch.device("cpu")), bilateral_features(image, 67.0, 3.0)]
    gpu_features = [position_features(2, 96, 128, 1.0, CUDA), bilateral_features(image.to(CUDA), 67.0, 3.0)]
    for cpu, gpu in zip(cpu_features, gpu_features):
        assert gpu.device.type == "cuda"
        assert torch.equal(gpu.cpu(), cpu)  # IEEE division on both
        _assert_lattices_equal(build_lattice(cpu), build_lattice(gpu))


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_cuda_filter_is_bitwise_the_cpu_filter(dtype, reverse, softmax):
    features = torch.randn(2, 3000, 5) * 3
    values = torch.randn(2, 3000, 21, dtype=dtype) * 10
    scale_in, scale_out = torch.rand(2, 3000, dtype=dtype), torch.rand(2, 3000, dtype=dtype)
    addend = torch.randn(2, 3000, 21, dtype=dtype) * 30
    cpu = build_lattice(features).filter(values, reverse, scale_in, scale_out, addend, softmax=softmax)
    gpu_lattice = build_lattice(features.to(CUDA))
    gpu = gpu_lattice.filter(
        values.to(CUDA), reverse, scale_in.to(CUDA), scale_out.to(CUDA), addend.to(CUDA), softmax=softmax
    ).cpu()
    if softmax and dtype == torch.float64:
        torch.testing.assert_close(gpu, cpu, rtol=1e-14, atol=1e-15)  # each side's libm exp: a few ulp
    else:
        assert torch.equal(gpu, cpu)


def test_cuda_filter_without_scales_is_bitwise_the_cpu_filter():
    features = torch.randn(1, 5000, 2)
    values = torch.rand(1, 5000, 3)
    cpu = build_lattice(features).filter(values)
    assert torch.equal(build_lattice(features.to(CUDA)).filter(values.to(CUDA)).cpu(), cpu)


def test_cuda_mean_field_iterations_are_bitwise_the_cpu_ones():
    unary, image = _photo_batch()
    kernels = build_kernels(image, normalization="symmetric", dtype=torch.float32, **PARAMS)
    neg_unary = -pixels_last(unary).contiguous()
    q0 = torch.softmax(neg_unary, dim=-1)
    cpu = _fused_iterations(neg_unary, kernels, q0, 5)
    gpu = _fused_iterations(neg_unary.to(CUDA), _to(kernels, CUDA), q0.to(CUDA), 5)
    assert torch.equal(gpu.cpu(), cpu)


def test_cuda_crf_matches_cpu_with_gradients():
    unary, image = _photo_batch()
    compat = torch.eye(21) + 0.05
    crf = DenseCRF(iterations=5, compatibility=compat, trainable=True)
    crf_gpu = DenseCRF(iterations=5, compatibility=compat, trainable=True).to(CUDA)
    unary_cpu = unary.clone().requires_grad_(True)
    unary_gpu = unary.to(CUDA).requires_grad_(True)
    target = torch.randint(0, 21, (2, 96, 128))
    q_cpu = crf(unary_cpu, image)
    q_gpu = crf_gpu(unary_gpu, image.to(CUDA))
    torch.testing.assert_close(q_gpu.cpu(), q_cpu, rtol=0, atol=1e-5)
    torch.nn.functional.nll_loss(torch.log(q_cpu), target).backward()
    torch.nn.functional.nll_loss(torch.log(q_gpu), target.to(CUDA)).backward()
    torch.testing.assert_close(unary_gpu.grad.cpu(), unary_cpu.grad, rtol=1e-4, atol=1e-5)
    for name, param in crf.named_parameters():
        torch.testing.assert_close(dict(crf_gpu.named_parameters())[name].grad.cpu(), param.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalization", ["symmetric", "after"])
def test_cuda_deeplab_crf_matches_cpu_on_a_photo(normalization):
    unary, image = _photo_batch(375, 500, batch=1)
    q_cpu = dense_crf(unary, image, normalization=normalization)
    q_gpu = dense_crf(unary.to(CUDA), image.to(CUDA), normalization=normalization)
    torch.testing.assert_close(q_gpu.cpu(), q_cpu, rtol=0, atol=1e-5)


def _padded_513(classes=21):
    # A 321x400 photo padded to 513x513 with the mean colour, as DeepLab evaluates: one flat
    # region of 150 thousand pixels, whose vertices get the longest splat lists.
    unary, image = _photo_batch(321, 400, classes=classes, batch=1)
    padded_image = torch.full((1, 3, 513, 513), 117, dtype=torch.uint8)
    padded_image[..., :321, :400] = image
    padded_unary = torch.zeros(1, classes, 513, 513)
    padded_unary[..., :321, :400] = unary
    return padded_unary, padded_image


def _flat(height=300, width=400, classes=5):
    unary = unary_from_softmax(noisy_probs(1, classes, height, width, seed=1))
    return unary, torch.full((1, 3, height, width), 90, dtype=torch.uint8)


SHAPES = {
    "1x1": lambda: _photo_batch(1, 1, classes=3, batch=1),
    "1xW": lambda: _photo_batch(1, 257, classes=4, batch=1),
    "Hx1": lambda: _photo_batch(129, 1, classes=4, batch=1),
    "padded-513x513": _padded_513,
    "flat": _flat,
    "2048x1024x19": lambda: _photo_batch(1024, 2048, classes=19, batch=1),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_cuda_shapes_match_cpu(shape):
    unary, image = SHAPES[shape]()
    kernels = build_kernels(image, normalization="symmetric", dtype=torch.float32, **PARAMS)
    gpu_kernels = build_kernels(image.to(CUDA), normalization="symmetric", dtype=torch.float32, **PARAMS)
    for cpu_kernel, gpu_kernel in zip(kernels, gpu_kernels):
        _assert_lattices_equal(cpu_kernel.lattice, gpu_kernel.lattice)
    neg_unary = -pixels_last(unary).contiguous()
    q0 = torch.softmax(neg_unary, dim=-1)
    cpu = _fused_iterations(neg_unary, kernels, q0, 2)
    gpu = _fused_iterations(neg_unary.to(CUDA), _to(kernels, CUDA), q0.to(CUDA), 2)
    assert torch.equal(gpu.cpu(), cpu)
    q_gpu = dense_crf(unary.to(CUDA), image.to(CUDA), iterations=3, **PARAMS)
    q_cpu = dense_crf(unary, image, iterations=3, **PARAMS)
    torch.testing.assert_close(q_gpu.cpu(), q_cpu, rtol=0, atol=1e-5)


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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
def test_cuda_tensors_on_the_second_device():
    unary, image = _photo_batch(64, 80, batch=2)
    expected = dense_crf(unary.to("cuda:0"), image.to("cuda:0"), **PARAMS)
    with torch.cuda.device(0):  # the current device is not the tensors' device
        q = dense_crf(unary.to("cuda:1"), image.to("cuda:1"), **PARAMS)
    assert q.device == torch.device("cuda:1")
    assert torch.equal(q.cpu(), expected.cpu())


def test_cuda_refuses_nan_features():
    features = torch.randn(1, 100, 5, device=CUDA)
    features[0, 37, 2] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        build_lattice(features)
    with pytest.raises(ValueError, match="not finite"):
        torch.ops.lightning_deeplab.build_lattice(features)


def test_cuda_refuses_nan_unary():
    unary, image = _photo_batch(8, 8, classes=3, batch=1)
    unary[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        dense_crf(unary.to(CUDA), image.to(CUDA))


def test_cuda_size_limit_is_the_cpu_one():
    features = torch.zeros(1, 1, 5, device=CUDA).expand(171, 2048 * 1024, 5)
    with pytest.raises(ValueError, match="overflow int32 indices"):
        torch.ops.lightning_deeplab.build_lattice(features)


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


def test_cuda_float64_gradcheck():
    unary, image = _photo_batch(5, 6, classes=3, batch=1)
    unary = unary.double().to(CUDA).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda u: dense_crf(u, image.to(CUDA), iterations=3, bi_xy_std=5.0, bi_rgb_std=20.0), (unary,)
    )


def test_cuda_opcheck():
    features = torch.randn(2, 60, 3, device=CUDA)
    torch.library.opcheck(torch.ops.lightning_deeplab.build_lattice.default, (features,))
    lattice = build_lattice(features)
    values = torch.rand(2, 60, 4, device=CUDA, requires_grad=True)
    scale = torch.rand(2, 60, device=CUDA)
    torch.library.opcheck(
        torch.ops.lightning_deeplab.lattice_filter.default, (values, *lattice[:6], scale, scale, None, False)
    )


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
