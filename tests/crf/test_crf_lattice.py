"""The permutohedral-lattice operators: accuracy against an exact Gaussian filter, structure,
adjointness, determinism, batching and the operator registrations."""

import pytest
import torch

from lightning_deeplab.crf import Lattice, build_lattice, lattice_filter, release_cached_buffers
from lightning_deeplab.crf.lattice import potts_mean_field_
from lightning_deeplab.crf.features import bilateral_features, position_features

from crf_inputs import CORRUPTIONS, corrupted_tables


def _exact_normalized_gaussian(features: torch.Tensor, values: torch.Tensor, std: float) -> torch.Tensor:
    """sum_j k(f_i, f_j) v_j / sum_j k(f_i, f_j) with k = exp(-|f_i - f_j|^2 / (2 std^2)): O(N^2)."""
    sq = torch.cdist(features.double(), features.double()) ** 2
    kernel = torch.exp(-sq / (2 * std**2))
    return kernel @ values.double() / kernel.sum(dim=1, keepdim=True)


def _small_scene(height=32, width=40):
    """Features of a small textured image: a smooth gradient plus a bright square, noise."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    base = torch.stack([xs * 6.0, ys * 5.0, (xs + ys) * 3.0], dim=0)
    base[:, 8:20, 10:25] += 120
    image = (base + 10 * torch.rand(3, height, width)).clamp(0, 255).round().to(torch.uint8)
    return image[None]


@pytest.mark.parametrize("kind", ["position", "bilateral"])
def test_normalized_lattice_filter_matches_exact_gaussian(kind):
    image = _small_scene()
    _, _, height, width = image.shape
    if kind == "position":
        features = position_features(1, height, width, 3.0, torch.device("cpu"))
    else:
        features = bilateral_features(image, 8.0, 20.0)
    values = torch.rand(1, height * width, 4)
    lattice = build_lattice(features)
    approx = lattice.filter(values)[0].double() / lattice.filter(torch.ones(1, height * width, 1))[0].double()

    err = (approx - _exact_normalized_gaussian(features[0], values[0], 1.0)).abs()
    # Measured: position (d=2) max 0.015, rms 0.003; bilateral (d=5) max 0.024, rms 0.004
    # (values uniform in [0, 1], std 0.29). A lattice with a wrong scale, rank or neighbour
    # table is off by far more, e.g. the exact filter at std 0.8 instead of 1 differs by
    # max 0.05-0.10, rms 0.012-0.017; the bound below rejects that.
    assert err.max() < 0.035
    assert err.pow(2).mean().sqrt() < 0.0065
    wrong = (approx - _exact_normalized_gaussian(features[0], values[0], 0.8)).abs()
    assert wrong.pow(2).mean().sqrt() > 0.0065


def test_structure_of_the_lattice():
    features = torch.randn(2, 300, 3) * 2
    lattice = build_lattice(features)
    d = 3
    counts = lattice.vertex_counts.tolist()
    assert lattice.num_vertices == sum(counts)
    assert lattice.offsets.shape == (2, 300, d + 1) and lattice.neighbors.shape[0] == d + 1
    # Barycentric weights are a partition of unity with non-negative entries.
    torch.testing.assert_close(lattice.weights.sum(-1), torch.ones(2, 300), atol=1e-5, rtol=0)
    assert lattice.weights.min() >= -1e-6
    # Image b's vertices form its own contiguous range; neighbours never cross images.
    assert lattice.offsets[0].max() < counts[0] <= lattice.offsets[1].min()
    nb = lattice.neighbors
    first = nb[:, : counts[0]]
    second = nb[:, counts[0] :]
    assert ((first == -1) | (first < counts[0])).all()
    assert ((second == -1) | (second >= counts[0])).all()
    # Neighbour relation is symmetric along each axis: n1(n2(v)) == v.
    for j in range(d + 1):
        n1, n2 = nb[j, :, 0], nb[j, :, 1]
        has = n2 >= 0
        assert (n1[n2[has].long()] == torch.arange(lattice.num_vertices, dtype=torch.int32)[has]).all()
    # A CPU lattice has no splat lists; the ones `with_splat_lists` adds (the CUDA filter's)
    # hold every (pixel, vertex) entry once, sorted by pixel.
    assert lattice.splat_ptr.numel() == lattice.splat_pixel.numel() == lattice.splat_weight.numel() == 0
    lattice = lattice.with_splat_lists()
    ptr = lattice.splat_ptr.long()
    assert ptr[0] == 0 and ptr[-1] == 2 * 300 * (d + 1) and (ptr[1:] > ptr[:-1]).all()
    flat = lattice.offsets.reshape(-1, d + 1)
    for v in range(0, lattice.num_vertices, 37):
        pixels = lattice.splat_pixel[ptr[v] : ptr[v + 1]].long()
        assert (pixels[1:] > pixels[:-1]).all()
        assert ((flat[pixels] == v).sum(-1) == 1).all()
        weights = lattice.weights.reshape(-1, d + 1)[pixels][flat[pixels] == v]
        assert torch.equal(lattice.splat_weight[ptr[v] : ptr[v + 1]], weights)


def test_transposed_filter_is_the_adjoint():
    features = bilateral_features(_small_scene(12, 16), 4.0, 30.0)
    lattice = build_lattice(features)
    x = torch.randn(1, 12 * 16, 3, dtype=torch.float64)
    y = torch.randn(1, 12 * 16, 3, dtype=torch.float64)
    lhs = (lattice.filter(x) * y).sum()
    rhs = (x * lattice.filter(y, reverse=True)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=0)
    # ...and the forward filter alone is not symmetric, so the flag matters.
    assert not torch.allclose((x * lattice.filter(y)).sum(), lhs, rtol=1e-6, atol=0)


def test_batched_lattice_equals_per_image_lattices():
    image = torch.cat([_small_scene(16, 20), torch.randint(0, 256, (1, 3, 16, 20), dtype=torch.uint8)])
    features = bilateral_features(image, 5.0, 10.0)
    values = torch.rand(2, 16 * 20, 5)
    batched = build_lattice(features).filter(values)
    for b in range(2):
        single = build_lattice(features[b : b + 1]).filter(values[b : b + 1])
        assert torch.equal(batched[b : b + 1], single)


def test_build_and_filter_are_deterministic():
    features = torch.randn(2, 2000, 5) * 3
    values = torch.rand(2, 2000, 7)
    first, second = build_lattice(features), build_lattice(features)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert torch.equal(first.filter(values), second.filter(values))


def test_filter_accepts_non_contiguous_values():
    lattice = build_lattice(torch.randn(1, 50, 2))
    values = torch.rand(1, 4, 50).transpose(1, 2)
    assert not values.is_contiguous()
    assert torch.equal(lattice.filter(values), lattice.filter(values.contiguous()))


def test_filter_float64_matches_float32():
    lattice = build_lattice(torch.randn(1, 400, 5) * 2)
    values = torch.rand(1, 400, 3, dtype=torch.float64)
    torch.testing.assert_close(lattice.filter(values).float(), lattice.filter(values.float()), rtol=1e-5, atol=1e-6)


def test_build_refuses_out_of_range_features():
    with pytest.raises(ValueError, match="too large for the lattice"):
        build_lattice(torch.tensor([[[1e6, 0.0]]]))
    with pytest.raises(ValueError, match="too large for the lattice"):
        build_lattice(torch.tensor([[[float("nan"), 0.0]]]))


def test_ops_check_their_arguments():
    with pytest.raises(TypeError, match="float32"):
        build_lattice(torch.zeros(1, 4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[B, N, d\]"):
        build_lattice(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="empty"):
        build_lattice(torch.zeros(1, 0, 2))
    lattice = build_lattice(torch.randn(1, 10, 2))
    with pytest.raises(ValueError, match="offsets"):
        lattice.filter(torch.zeros(1, 11, 3))
    with pytest.raises(TypeError, match="float32 or float64"):
        lattice.filter(torch.zeros(1, 10, 3, dtype=torch.float16))


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_filters_refuse_corrupted_lattice_tables(corruption):
    table, index, value, message = CORRUPTIONS[corruption]
    # With splat lists (which the CPU filter checks but does not read), so that every table
    # can be corrupted.
    lattice = build_lattice(torch.randn(2, 500, 5) * 3).with_splat_lists()
    values = torch.rand(2, 500, 3)
    tables = corrupted_tables(lattice, table, index, value)
    with pytest.raises(ValueError, match=message):
        torch.ops.lightning_deeplab.lattice_filter(values, *tables, None, None, None, False)
    q = torch.softmax(values, dim=-1)
    with pytest.raises(ValueError, match=message):
        potts_mean_field_(q, values.clone(), [Lattice(*tables, lattice.vertex_counts)], [None], [None], 1)
    getattr(lattice, table).view(-1)[index] = value  # in place, after the build trusted it
    with pytest.raises(ValueError, match=message):
        lattice.filter(values)


def test_tables_copied_or_built_in_inference_mode_filter_the_same():
    features, values = torch.randn(2, 400, 5) * 3, torch.rand(2, 400, 4)
    lattice = build_lattice(features)
    expected = lattice.filter(values)
    copied = Lattice(*(t.clone() for t in lattice))  # not made by build_lattice: checked, then used
    assert torch.equal(copied.filter(values), expected)
    assert torch.equal(copied.filter(values), expected)
    with torch.inference_mode():
        assert torch.equal(build_lattice(features).filter(values), expected)


def test_opcheck_build_lattice():
    features = torch.randn(2, 60, 3)
    torch.library.opcheck(torch.ops.lightning_deeplab.build_lattice.default, (features,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("extras", [False, True])
def test_opcheck_lattice_filter(dtype, reverse, extras):
    lattice = build_lattice(torch.randn(2, 60, 3))
    values = torch.rand(2, 60, 4, dtype=dtype, requires_grad=True)
    if extras:
        scale_in, scale_out = torch.rand(2, 60, dtype=dtype) + 0.5, torch.rand(2, 60, dtype=dtype) + 0.5
        addend = torch.rand(2, 60, 4, dtype=dtype, requires_grad=True)
    else:
        scale_in = scale_out = addend = None
    args = (values, *lattice[:6], scale_in, scale_out, addend, reverse)
    torch.library.opcheck(torch.ops.lightning_deeplab.lattice_filter.default, args)
    if extras:
        torch.library.opcheck(torch.ops.lightning_deeplab.lattice_filter.default, args + (True,))


def test_softmax_flag_is_the_softmax_of_the_filter():
    lattice = build_lattice(torch.randn(2, 500, 5) * 2)
    values = torch.rand(2, 500, 21)
    scale = torch.rand(2, 500) + 0.5
    addend = torch.randn(2, 500, 21) * 30  # wide logits exercise the exp's range
    addend[0, :5] -= 200.0
    plain = lattice.filter(values, scale_in=scale, scale_out=scale, addend=addend)
    fused = lattice.filter(values, scale_in=scale, scale_out=scale, addend=addend, softmax=True)
    torch.testing.assert_close(fused, torch.softmax(plain, dim=-1), rtol=2e-6, atol=1e-7)
    small = build_lattice(torch.randn(2, 40, 2))
    values64 = torch.rand(2, 40, 3, dtype=torch.float64, requires_grad=True)
    addend64 = torch.randn(2, 40, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, a: lattice_filter(v, small, addend=a, softmax=True), (values64, addend64))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("scene", ["random", "image"])
def test_results_do_not_depend_on_the_thread_count(batch, scene):
    # The splat splits the vertices between the threads, each scanning the pixels that can use
    # its share (a batch of 3 on 2-5 threads: shares that cross images).
    if scene == "random":
        features = torch.randn(batch, 3000, 5) * 3
    else:
        features = bilateral_features(_small_scene(40, 75).expand(batch, -1, -1, -1), 8.0, 20.0)
    values = torch.rand(batch, features.shape[1], 6)
    scale = torch.rand(batch, features.shape[1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        lattice_one = build_lattice(features)
        one = [lattice_one.filter(values, reverse, scale, softmax=True) for reverse in (False, True)]
        for count in (2, 3, 5):
            torch.set_num_threads(count)
            lattice_many = build_lattice(features)
            for a, b in zip(lattice_one, lattice_many):
                assert torch.equal(a, b)
            for reverse, expected in zip((False, True), one):
                assert torch.equal(lattice_many.filter(values, reverse, scale, softmax=True), expected), count
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("batch", [2, 3])
def test_image_parallel_and_vertex_parallel_filters_agree(batch):
    # On two threads a batch of 2 is filtered one image per thread, a batch of 3 pass by
    # pass over all vertices; both must give the one-thread (and the per-image) results.
    features = torch.randn(batch, 2000, 5) * 3
    values = torch.rand(batch, 2000, 7)
    lattice = build_lattice(features)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lattice.filter(values, softmax=True)
        torch.set_num_threads(2)
        two = lattice.filter(values, softmax=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    for b in range(batch):
        alone = build_lattice(features[b : b + 1]).filter(values[b : b + 1], softmax=True)
        assert torch.equal(alone[0], one[b])


def test_scales_and_addend():
    lattice = build_lattice(torch.randn(2, 80, 5) * 2)
    values = torch.rand(2, 80, 3, dtype=torch.float64)
    scale_in, scale_out = torch.rand(2, 80, dtype=torch.float64), torch.rand(2, 80, dtype=torch.float64)
    addend = torch.rand(2, 80, 3, dtype=torch.float64)
    expected = addend + scale_out[..., None] * lattice.filter(scale_in[..., None] * values)
    got = lattice.filter(values, scale_in=scale_in, scale_out=scale_out, addend=addend)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_filter_gradcheck():
    lattice = build_lattice(torch.randn(1, 30, 2) * 2)
    values = torch.rand(1, 30, 2, dtype=torch.float64, requires_grad=True)
    addend = torch.rand(1, 30, 2, dtype=torch.float64, requires_grad=True)
    scale_in, scale_out = torch.rand(1, 30, dtype=torch.float64), torch.rand(1, 30, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: lattice_filter(v, lattice), (values,))
    assert torch.autograd.gradcheck(
        lambda v, a: lattice_filter(v, lattice, False, scale_in, scale_out, a), (values, addend)
    )
    assert torch.autograd.gradgradcheck(lambda v: lattice_filter(v, lattice, reverse=True), (values,))


def test_release_cached_buffers():
    # A filter this size draws its output and scratch from the buffer pool...
    lattice = build_lattice(torch.randn(1, 120_000, 2) * 3)
    filtered = lattice.filter(torch.rand(1, 120_000, 12))
    del filtered, lattice
    # ...which keeps them after use, until released.
    assert release_cached_buffers() > 0
    assert release_cached_buffers() == 0


def _potts_inputs(batch, pixels=1500, classes=21, dtype=torch.float32):
    lattices = [build_lattice(torch.randn(batch, pixels, 2) * 3), build_lattice(torch.randn(batch, pixels, 5) * 3)]
    neg_unary = -torch.rand(batch, pixels, classes, dtype=dtype) * 5
    scales = [torch.rand(batch, pixels, dtype=dtype) + 0.5 for _ in range(4)]
    return lattices, neg_unary, scales[:2], scales[2:]


def _potts_step_by_step(q, neg_unary, lattices, scales_in, scales_out, iterations):
    # The functional filters, one after the other: the first adds onto -U, the next onto
    # that sum, the last applies the softmax.
    for _ in range(iterations):
        messages = neg_unary
        for index, (lattice, scale_in, scale_out) in enumerate(zip(lattices, scales_in, scales_out)):
            last = index == len(lattices) - 1
            messages = lattice.filter(q, scale_in=scale_in, scale_out=scale_out, addend=messages, softmax=last)
        q = messages
    return q


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_potts_mean_field_is_bitwise_the_filters_step_by_step(dtype, batch, threads):
    # Two threads: a batch of 2 runs image by image, one thread each; 1 and 3 run every
    # pass over the batch's vertices. One thread: image by image on it.
    lattices, neg_unary, scales_in, scales_out = _potts_inputs(batch, dtype=dtype)
    q0 = torch.softmax(neg_unary, dim=-1)
    expected = _potts_step_by_step(q0, neg_unary, lattices, scales_in, scales_out, 3)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q = q0.clone()
        got = potts_mean_field_(q, neg_unary, lattices, scales_in, scales_out, 3)
    finally:
        torch.set_num_threads(saved)
    assert got is q
    assert torch.equal(q, expected)


def test_potts_mean_field_with_one_kernel_and_without_scales():
    lattices, neg_unary, _, _ = _potts_inputs(2)
    q0 = torch.softmax(neg_unary, dim=-1)
    expected = _potts_step_by_step(q0, neg_unary, lattices[1:], [None], [None], 2)
    got = potts_mean_field_(q0.clone(), neg_unary, lattices[1:], [None], [None], 2)
    assert torch.equal(got, expected)
    assert torch.equal(potts_mean_field_(q0.clone(), neg_unary, lattices, [None] * 2, [None] * 2, 0), q0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, threads", [(1, 1), (2, 2), (3, 2)])
def test_potts_mean_field_reads_the_unary_in_the_callers_layout(dtype, batch, threads):
    # U channels-first [B, C, N] viewed as [B, N, C] (channel stride N), subtracted; and -U
    # with the same strides, added: both bitwise the loop on a contiguous -U.
    lattices, neg_unary, scales_in, scales_out = _potts_inputs(batch, classes=11, dtype=dtype)
    q0 = torch.softmax(neg_unary, dim=-1)
    expected = _potts_step_by_step(q0, neg_unary, lattices, scales_in, scales_out, 3)
    unary = (-neg_unary).transpose(1, 2).contiguous().transpose(1, 2)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = potts_mean_field_(q0.clone(), unary, lattices, scales_in, scales_out, 3, subtract_unary=True)
        added = potts_mean_field_(q0.clone(), -unary, lattices, scales_in, scales_out, 3)
    finally:
        torch.set_num_threads(saved)
    assert not unary.is_contiguous()
    assert torch.equal(got, expected)
    assert torch.equal(added, expected)
    # the sign matters: adding U gives another Q
    assert not torch.equal(potts_mean_field_(q0.clone(), unary, lattices, scales_in, scales_out, 3), expected)


def test_potts_mean_field_refuses_bad_arguments():
    lattices, neg_unary, scales_in, scales_out = _potts_inputs(1, pixels=50, classes=3)
    q = torch.softmax(neg_unary, dim=-1)
    with pytest.raises(RuntimeError, match="single memory location"):
        potts_mean_field_(neg_unary, neg_unary, lattices, scales_in, scales_out, 1)
    with pytest.raises(ValueError, match="contiguous"):
        potts_mean_field_(torch.rand(1, 3, 50).transpose(1, 2), neg_unary, lattices, scales_in, scales_out, 1)
    with pytest.raises(ValueError, match="one entry per kernel"):
        potts_mean_field_(q, neg_unary, lattices, scales_in[:1], scales_out, 1)
    with pytest.raises(ValueError, match="iterations"):
        potts_mean_field_(q, neg_unary, lattices, scales_in, scales_out, -1)
    with pytest.raises(ValueError, match="do not belong"):
        potts_mean_field_(q[:, :40].contiguous(), neg_unary[:, :40].contiguous(), lattices, [None] * 2, [None] * 2, 1)


def test_opcheck_potts_mean_field():
    lattices, neg_unary, scales_in, scales_out = _potts_inputs(2, pixels=60, classes=4)
    tables = [[lattice.filter_tables[i] for lattice in lattices] for i in range(6)]
    args = (torch.softmax(neg_unary, dim=-1), neg_unary, *tables, scales_in, scales_out, 2)
    torch.library.opcheck(torch.ops.lightning_deeplab.potts_mean_field_.default, args)
