"""CUDA implementation against the CPU one (skipped without a GPU): the same lattice, the
same filter and CRF output within 1e-5, gradients too, and no host sync in the iterations."""
import pytest
import torch

from lightning_deeplab.crf import DenseCRF, build_lattice, dense_crf, unary_from_softmax
from lightning_deeplab.crf.features import bilateral_features, position_features
from lightning_deeplab.crf.mean_field import make_kernel, mean_field

from crf_inputs import image_tensor, noisy_probs, photo

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")


def _photo_batch(height=96, width=128, classes=21, batch=2):
    image = image_tensor(photo("astronaut", height, width), photo("coffee", height, width))[:batch]
    unary = unary_from_softmax(noisy_probs(batch, classes, height, width, seed=0))
    return unary, image


@pytest.mark.parametrize("kind", ["position", "bilateral"])
def test_cuda_lattice_equals_cpu_lattice(kind):
    _, image = _photo_batch()
    if kind == "position":
        features = position_features(2, 96, 128, 1.0, torch.device("cpu"))
    else:
        features = bilateral_features(image, 67.0, 3.0)
    cpu = build_lattice(features)
    gpu = build_lattice(features.to(CUDA))
    # Same arithmetic (no fused multiply-adds) and the same first-use numbering.
    for name, a, b in zip(cpu._fields, cpu, gpu):
        assert torch.equal(a, b.cpu()), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_cuda_filter_matches_cpu(dtype, reverse):
    features = torch.randn(2, 3000, 5) * 3
    values = torch.rand(2, 3000, 7, dtype=dtype)
    scale_in, scale_out = torch.rand(2, 3000, dtype=dtype), torch.rand(2, 3000, dtype=dtype)
    addend = torch.rand(2, 3000, 7, dtype=dtype)
    cpu = build_lattice(features).filter(values, reverse, scale_in, scale_out, addend)
    gpu_lattice = build_lattice(features.to(CUDA))
    gpu = gpu_lattice.filter(values.to(CUDA), reverse, scale_in.to(CUDA), scale_out.to(CUDA), addend.to(CUDA))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


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


def test_cuda_float64_gradcheck():
    unary, image = _photo_batch(5, 6, classes=3, batch=1)
    unary = unary.double().to(CUDA).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda u: dense_crf(u, image.to(CUDA), iterations=3, bi_xy_std=5.0, bi_rgb_std=20.0), (unary,)
    )


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
