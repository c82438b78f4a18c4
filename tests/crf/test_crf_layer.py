"""The DenseCRF layer and its functional form: outputs, autograd, batching, dtypes, layouts,
trainable parameters and torch.compile."""

import pytest
import torch

from lightning_deeplab.crf import DenseCRF, dense_crf, unary_from_logits, unary_from_softmax

from crf_inputs import noisy_probs


def _inputs(batch=1, classes=4, height=12, width=16, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    # Two flat regions with a little noise: an edge for the appearance kernel to respect.
    image = torch.randint(90, 110, (batch, 3, height, width), dtype=torch.uint8, generator=gen)
    image[:, :, : height // 2] //= 4
    unary = unary_from_softmax(noisy_probs(batch, classes, height, width, seed)).to(dtype)
    return unary, image


def test_defaults_are_deeplab_v2_resnet101():
    crf = DenseCRF()
    assert crf.iterations == 10 and crf.normalization == "symmetric"
    assert (float(crf.pos_w), crf.pos_xy_std) == (3.0, 1.0)
    assert (float(crf.bi_w), crf.bi_xy_std, crf.bi_rgb_std) == (4.0, 67.0, 3.0)
    assert list(crf.parameters()) == []


def test_output_is_a_distribution_that_refines_the_unary():
    unary, image = _inputs(batch=2, classes=5, height=40, width=48)
    q = DenseCRF()(unary, image)
    assert q.shape == unary.shape and q.dtype == torch.float32
    torch.testing.assert_close(q.sum(1), torch.ones(2, 40, 48))
    # The smoothing removes most of the per-pixel label noise of the unary.
    noisy_changes = (unary.argmin(1)[:, :, 1:] != unary.argmin(1)[:, :, :-1]).sum()
    crf_changes = (q.argmax(1)[:, :, 1:] != q.argmax(1)[:, :, :-1]).sum()
    assert crf_changes < 0.5 * noisy_changes


def test_zero_iterations_is_the_softmax_of_the_unary():
    unary, image = _inputs()
    torch.testing.assert_close(dense_crf(unary, image, iterations=0), torch.softmax(-unary, 1))


def test_unary_helpers():
    probs = torch.tensor([[1.0, 0.0], [0.25, 0.75]]).T.reshape(1, 2, 1, 2)
    unary = unary_from_softmax(probs)
    torch.testing.assert_close(unary, -torch.log(probs.clamp(1e-5, 1)))
    # Computed in place when no gradient is wanted, the same bits; the caller's tensor untouched.
    probs = torch.softmax(torch.randn(2, 5, 6, 7, dtype=torch.float16).float() * 4, 1).requires_grad_(True)
    kept = probs.detach().clone()
    with_grad = unary_from_softmax(probs)
    with torch.no_grad():
        assert torch.equal(unary_from_softmax(probs), with_grad) and torch.equal(probs, kept)
    assert torch.equal(unary_from_softmax(kept), with_grad.detach()) and torch.equal(probs, kept)
    with_grad.sum().backward()
    assert torch.equal(probs.grad, -1 / probs.detach().clamp(1e-5, 1) * (probs.detach() >= 1e-5))
    logits = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(torch.softmax(-unary_from_logits(logits), 1), torch.softmax(logits, 1))
    # Raw negated scores give the same CRF output (a per-pixel constant is irrelevant).
    image = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    torch.testing.assert_close(dense_crf(unary_from_logits(logits), image), dense_crf(-logits, image))


def test_batch_equals_per_image_calls():
    unary, image = _inputs(batch=3, classes=4, height=20, width=24)
    batched = DenseCRF()(unary, image)
    for b in range(3):
        assert torch.equal(batched[b : b + 1], DenseCRF()(unary[b : b + 1], image[b : b + 1]))


def test_two_cpu_runs_are_bit_identical():
    unary, image = _inputs(batch=2, classes=6, height=50, width=60)
    assert torch.equal(DenseCRF()(unary, image), DenseCRF()(unary, image))


def test_non_contiguous_inputs():
    unary, image = _inputs(batch=2, classes=4, height=10, width=14)
    unary_nc = unary.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
    image_nc = image.transpose(2, 3).contiguous().transpose(2, 3)
    assert not unary_nc.is_contiguous() and not image_nc.is_contiguous()
    assert torch.equal(DenseCRF()(unary_nc, image_nc), DenseCRF()(unary, image))
    sliced = DenseCRF()(unary[:, :, ::2], image[:, :, ::2])
    assert torch.equal(sliced, DenseCRF()(unary[:, :, ::2].contiguous(), image[:, :, ::2].contiguous()))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "float16"])
def test_inputs_are_not_modified(layout):
    unary, image = _inputs(classes=4)
    if layout == "channels_last":
        unary = unary.contiguous(memory_format=torch.channels_last)
    elif layout == "float16":
        unary = unary.half()
    unary_before, image_before = unary.clone(), image.clone()
    DenseCRF(iterations=2)(unary, image)
    assert torch.equal(unary, unary_before) and torch.equal(image, image_before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_unary_is_computed_in_float32(dtype):
    unary, image = _inputs(classes=3)
    q = DenseCRF()(unary.to(dtype), image)
    assert q.dtype == torch.float32
    assert torch.equal(q, DenseCRF()(unary.to(dtype).float(), image))


def test_float64_unary_computes_in_float64():
    unary, image = _inputs(classes=3)
    q64 = DenseCRF()(unary.double(), image)
    assert q64.dtype == torch.float64
    torch.testing.assert_close(q64.float(), DenseCRF()(unary, image), rtol=0, atol=1e-5)


def test_float_image_in_0_255_equals_uint8():
    unary, image = _inputs()
    assert torch.equal(dense_crf(unary, image.float()), dense_crf(unary, image))


@pytest.mark.parametrize("normalization", ["symmetric", "after"])
def test_gradcheck_through_all_iterations(normalization):
    unary, image = _inputs(classes=3, height=5, width=6, dtype=torch.float64)
    unary.requires_grad_(True)
    compat = torch.eye(3, dtype=torch.float64) + 0.1 * torch.rand(3, 3, dtype=torch.float64)
    compat.requires_grad_(True)
    pos_w = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)

    def run(u, m, w):
        return dense_crf(
            u,
            image,
            iterations=3,
            pos_w=w,
            bi_xy_std=5.0,
            bi_rgb_std=20.0,
            normalization=normalization,
            compatibility=m,
        )

    assert torch.autograd.gradcheck(run, (unary, compat, pos_w))


def test_trainable_parameters_get_gradients():
    crf = DenseCRF(iterations=3, compatibility=torch.eye(4), trainable=True)
    names = {name for name, _ in crf.named_parameters()}
    assert names == {"pos_w", "bi_w", "compatibility"}
    unary, image = _inputs(classes=4)
    unary.requires_grad_(True)
    loss = torch.nn.functional.nll_loss(torch.log(crf(unary, image)), torch.zeros(1, 12, 16, dtype=torch.long))
    loss.backward()
    for param in [crf.pos_w, crf.bi_w, crf.compatibility, unary]:
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


def test_fused_and_differentiable_paths_agree():
    # Constant weights run the fused filter+softmax path; trainable ones the separate
    # differentiable terms and torch.softmax.
    unary, image = _inputs(batch=2, classes=5, height=30, width=40)
    fast = DenseCRF()(unary, image)
    slow = DenseCRF(trainable=True)(unary, image)
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=2e-6)


def test_in_place_inference_loop_is_bitwise_the_differentiable_one():
    # Without a gradient the Potts loop adds the appearance filter onto the messages in
    # place; with one (unary requires grad) it keeps the functional filters.
    unary, image = _inputs(batch=2, classes=5, height=30, width=40)
    with torch.no_grad():
        in_place = dense_crf(unary, image)
    tracked = dense_crf(unary.clone().requires_grad_(True), image)
    assert tracked.requires_grad
    assert torch.equal(in_place, tracked.detach())


def test_not_trainable_keeps_weights_as_buffers():
    crf = DenseCRF(compatibility=torch.eye(3))
    assert list(crf.parameters()) == []
    assert {name for name, _ in crf.named_buffers()} == {"pos_w", "bi_w", "compatibility"}
    assert "pos_w=3" in repr(crf)


def test_identity_compatibility_is_potts():
    unary, image = _inputs(classes=4)
    torch.testing.assert_close(dense_crf(unary, image, compatibility=torch.eye(4)), dense_crf(unary, image))


def test_torch_compile_traces_the_layer():
    crf = DenseCRF(iterations=2)
    unary, image = _inputs(classes=3, height=8, width=10)
    # The lattice size is data-dependent (an unbacked size in the fake kernel); with
    # capture_dynamic_output_shape_ops the whole layer is one graph.
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(crf, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(unary, image), crf(unary, image))
        unary.requires_grad_(True)
        compiled(unary, image).sum().backward()
    assert unary.grad is not None


def test_potts_compatibility_waits_for_the_class_count():
    unary, image = _inputs(classes=4)
    crf = DenseCRF(compatibility="potts", trainable=True)
    assert {name for name, _ in crf.named_parameters()} == {"pos_w", "bi_w"}
    with pytest.raises(ValueError, match="needs the number of classes"):
        crf(unary, image)
    crf.set_num_classes(4)
    assert torch.equal(crf.compatibility, torch.eye(4)) and isinstance(crf.compatibility, torch.nn.Parameter)
    crf.set_num_classes(4)  # idempotent
    with pytest.raises(ValueError, match=r"compatibility is \(4, 4\) but there are 5 classes"):
        crf.set_num_classes(5)
    torch.testing.assert_close(crf(unary, image).detach(), DenseCRF()(unary, image), rtol=0, atol=2e-6)
    assert torch.equal(DenseCRF(compatibility="potts", num_classes=3).compatibility, torch.eye(3))
    with pytest.raises(ValueError, match='"potts"'):
        DenseCRF(compatibility="pots")


def test_compatibility_as_a_nested_list():
    crf = DenseCRF(compatibility=[[1, 0.5], [0.5, 1]], num_classes=2)
    assert torch.equal(crf.compatibility, torch.tensor([[1, 0.5], [0.5, 1]]))
    assert crf.settings()["compatibility"] == [[1, 0.5], [0.5, 1]]
    with pytest.raises(ValueError, match="square"):
        DenseCRF(compatibility=[[1, 0.5]])
    with pytest.raises(ValueError, match="list of numbers"):
        DenseCRF(compatibility=[[1, "a"], [0, 1]])


def test_iterations_given_per_call():
    unary, image = _inputs(classes=3)
    crf = DenseCRF(iterations=5)
    assert torch.equal(crf(unary, image, iterations=2), DenseCRF(iterations=2)(unary, image))
    assert not torch.equal(crf(unary, image, iterations=2), crf(unary, image))
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        crf(unary, image, iterations=-1)


def test_the_backward_keeps_about_one_marginal_per_iteration():
    unary, image = _inputs(classes=5, height=24, width=32)
    marginal = unary.numel() * 4
    crf = DenseCRF(compatibility="potts", num_classes=5, trainable=True)

    def saved(iterations: int) -> int:
        storages = {}

        def pack(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            q = crf(unary.clone().requires_grad_(True), image, iterations=iterations)
        q.sum().backward()  # the recomputed iterations still give a gradient
        return sum(storages.values())

    per_iteration = (saved(6) - saved(2)) / 4 / marginal
    assert 0.5 < per_iteration < 1.5
