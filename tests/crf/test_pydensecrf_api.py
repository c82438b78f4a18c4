"""`lightning_deeplab.pydensecrf` against pydensecrf2 itself: the same script with one word of
the imports changed gives the same marginals (max |dQ| <= 1e-4, argmax on >= 99.99% of points)."""

import numpy as np
import pytest
import torch

import pydensecrf.densecrf as ref_dcrf
import pydensecrf.utils as ref_utils
import lightning_deeplab.pydensecrf.densecrf as dcrf
import lightning_deeplab.pydensecrf.utils as utils

from crf_inputs import densecrf_constant, noisy_probs, photo

HEIGHT, WIDTH, CLASSES = 40, 56, 5
NORMALIZATIONS = ["NO_NORMALIZATION", "NORMALIZE_BEFORE", "NORMALIZE_AFTER", "NORMALIZE_SYMMETRIC"]
KERNELS = ["DIAG_KERNEL", "CONST_KERNEL", "FULL_KERNEL"]


def assert_same_marginals(ours, reference):
    ours, reference = np.array(ours), np.array(reference)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= 1e-4
    assert (ours.argmax(0) == reference.argmax(0)).mean() >= 0.9999


def probs(classes=CLASSES, height=HEIGHT, width=WIDTH, seed=0):
    return noisy_probs(1, classes, height, width, seed)[0].numpy()


def readme_2d(module, util, image, sm, iterations=5):
    """pydensecrf's README usage with DenseCRF2D."""
    d = module.DenseCRF2D(image.shape[1], image.shape[0], sm.shape[0])
    d.setUnaryEnergy(util.unary_from_softmax(sm))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
    return d.inference(iterations)


def readme_generic(module, util, image, sm, iterations=5):
    """pydensecrf's README usage with the generic DenseCRF and the utils feature builders."""
    d = module.DenseCRF(image.shape[0] * image.shape[1], sm.shape[0])
    d.setUnaryEnergy(util.unary_from_softmax(sm))
    d.addPairwiseEnergy(util.create_pairwise_gaussian(sdims=(3, 3), shape=image.shape[:2]), compat=3)
    feats = util.create_pairwise_bilateral(sdims=(80, 80), schan=(13, 13, 13), img=image, chdim=2)
    d.addPairwiseEnergy(
        feats,
        compat=10,
        kernel=densecrf_constant(module, "DIAG_KERNEL"),
        normalization=densecrf_constant(module, "NORMALIZE_SYMMETRIC"),
    )
    return d.inference(iterations)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
@pytest.mark.parametrize("usage", [readme_2d, readme_generic])
def test_readme_usage_on_photos_matches_pydensecrf(name, usage):
    image, sm = photo(name, HEIGHT, WIDTH), probs(seed=len(name))
    ours = usage(dcrf, utils, image, sm)
    assert isinstance(ours, np.ndarray) and ours.shape == (CLASSES, HEIGHT * WIDTH)
    assert_same_marginals(ours, usage(ref_dcrf, ref_utils, image, sm))


def _compats(rng):
    matrix = rng.uniform(-2, 1, (CLASSES, CLASSES)).astype(np.float32)  # not symmetric
    return [4.0, -rng.uniform(1, 5, CLASSES).astype(np.float32), matrix]


@pytest.mark.parametrize("form", ["number", "vector", "matrix"])
def test_every_compat_form_matches_pydensecrf(form):
    rng = np.random.default_rng(1)
    compat = _compats(rng)[["number", "vector", "matrix"].index(form)]
    image, sm = photo("astronaut", HEIGHT, WIDTH), probs(seed=2)

    def run(module, util):
        d = module.DenseCRF2D(WIDTH, HEIGHT, CLASSES)
        d.setUnaryEnergy(util.unary_from_softmax(sm))
        d.addPairwiseGaussian(sxy=(2, 3), compat=compat)  # per-axis std
        d.addPairwiseBilateral(sxy=(30, 40), srgb=(10, 13, 16), rgbim=image, compat=5)
        return d.inference(6)

    assert_same_marginals(run(dcrf, utils), run(ref_dcrf, ref_utils))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_every_normalization_and_kernel_type_matches_pydensecrf(normalization, kernel):
    image, sm = photo("coffee", HEIGHT, WIDTH), probs(seed=3)

    def run(module, util):
        norm, kern = densecrf_constant(module, normalization), densecrf_constant(module, kernel)
        d = module.DenseCRF2D(WIDTH, HEIGHT, CLASSES)
        d.setUnaryEnergy(util.unary_from_softmax(sm))
        # A symmetric kernel first, then the one under test: kernels in any order, any mix.
        d.addPairwiseGaussian(sxy=2, compat=2)
        d.addPairwiseBilateral(sxy=40, srgb=13, rgbim=image, compat=3, kernel=kern, normalization=norm)
        return d.inference(5)

    assert_same_marginals(run(dcrf, utils), run(ref_dcrf, ref_utils))


def test_step_inference_and_kl_divergence_match_pydensecrf():
    image, sm = photo("chelsea", HEIGHT, WIDTH), probs(seed=4)
    crfs = []
    for module, util in ((dcrf, utils), (ref_dcrf, ref_utils)):
        d = module.DenseCRF2D(WIDTH, HEIGHT, CLASSES)
        d.setUnaryEnergy(util.unary_from_softmax(sm))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=60, srgb=10, rgbim=image, compat=np.eye(CLASSES, dtype=np.float32) * -5)
        crfs.append(d)
    ours, ref = crfs
    q, tmp1, tmp2 = ours.startInference()
    rq, rtmp1, rtmp2 = ref.startInference()
    assert_same_marginals(q, rq)
    kls = []
    for _ in range(4):
        kl, ref_kl = ours.klDivergence(q), ref.klDivergence(rq)
        assert isinstance(kl, float)
        assert abs(kl - ref_kl) <= 1e-5 * abs(ref_kl) + 1e-2
        kls.append(kl)
        before = q.copy()
        assert ours.stepInference(q, tmp1, tmp2) is None  # in place, like pydensecrf
        ref.stepInference(rq, rtmp1, rtmp2)
        assert not np.array_equal(before, q)
        assert_same_marginals(q, rq)
    assert kls[-1] < kls[0]  # mean field lowers the KL divergence
    assert_same_marginals(ours.inference(4), q)


def test_volume_with_gaussian_and_intensity_bilateral_matches_pydensecrf():
    depth, height, width, classes = 10, 12, 14, 4
    rng = np.random.default_rng(5)
    volume = (rng.uniform(0, 60, (depth, height, width)) + np.linspace(0, 120, width)).astype(np.float32)
    sm = noisy_probs(depth, classes, height, width, 6).permute(1, 0, 2, 3).numpy()  # [C, D, H, W]

    def run(module, util):
        d = module.DenseCRF(depth * height * width, classes)
        d.setUnaryEnergy(util.unary_from_softmax(sm))
        d.addPairwiseEnergy(util.create_pairwise_gaussian(sdims=(1, 1, 1), shape=(depth, height, width)), compat=3)
        d.addPairwiseEnergy(
            util.create_pairwise_bilateral(sdims=(3, 3, 3), schan=(15,), img=volume, chdim=-1), compat=5
        )
        return d.inference(5)

    ours = run(dcrf, utils)
    assert ours.shape == (classes, depth * height * width)
    assert_same_marginals(ours, run(ref_dcrf, ref_utils))


@pytest.mark.parametrize("dim", [2, 3, 5, 8, 12, 16])
def test_feature_dimensions_up_to_the_maximum_match_pydensecrf(dim):
    points, classes = 300, 3
    rng = np.random.default_rng(dim)
    features = rng.uniform(0, 4, (dim, points)).astype(np.float32)
    unary = -np.log(rng.dirichlet(np.ones(classes), points).T.astype(np.float32))

    def run(module):
        d = module.DenseCRF(points, classes)
        d.setUnaryEnergy(np.ascontiguousarray(unary))
        d.addPairwiseEnergy(features, compat=3)
        return d.inference(4)

    assert_same_marginals(run(dcrf), run(ref_dcrf))


def test_utils_match_pydensecrf():
    rng = np.random.default_rng(7)
    sm = probs(seed=7)
    labels = rng.integers(0, CLASSES + 1, (HEIGHT, WIDTH))
    for ours, ref in [
        (utils.unary_from_softmax(sm), ref_utils.unary_from_softmax(sm)),
        (utils.unary_from_softmax(sm, scale=0.7, clip=None), ref_utils.unary_from_softmax(sm, scale=0.7, clip=None)),
        (utils.softmax_to_unary(sm, 0.9), ref_utils.softmax_to_unary(sm, 0.9)),
        (utils.unary_from_labels(labels, CLASSES, 0.7), ref_utils.unary_from_labels(labels, CLASSES, 0.7)),
        (
            utils.unary_from_labels(labels - 1 + (labels == 0), CLASSES, 0.6, zero_unsure=False),
            ref_utils.unary_from_labels(labels - 1 + (labels == 0), CLASSES, 0.6, zero_unsure=False),
        ),
        (utils.compute_unary(labels, CLASSES), ref_utils.compute_unary(labels, CLASSES)),
        (utils.create_pairwise_gaussian((2.5, 3), (7, 9)), ref_utils.create_pairwise_gaussian((2.5, 3), (7, 9))),
        (
            utils.create_pairwise_bilateral((4, 5), 13, photo("coffee", 9, 11), chdim=2),
            ref_utils.create_pairwise_bilateral((4, 5), 13, photo("coffee", 9, 11), chdim=2),
        ),
    ]:
        assert ours.dtype == ref.dtype and ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref)


def test_non_contiguous_and_read_only_arrays_are_accepted():
    image, sm = photo("astronaut", HEIGHT, WIDTH), probs(seed=8)
    expected = readme_2d(dcrf, utils, image, sm)
    frozen = image.copy()
    frozen.setflags(write=False)
    strided = np.ascontiguousarray(image[:, ::-1])[:, ::-1]  # a negative-stride view of the same photo
    d = dcrf.DenseCRF2D(WIDTH, HEIGHT, CLASSES)
    unary = np.asfortranarray(utils.unary_from_softmax(sm))
    unary.setflags(write=False)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=frozen, compat=10)
    np.testing.assert_array_equal(d.inference(5), expected)
    d = dcrf.DenseCRF2D(WIDTH, HEIGHT, CLASSES)
    d.setUnaryEnergy(utils.unary_from_softmax(sm))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=strided, compat=10)
    np.testing.assert_array_equal(d.inference(5), expected)


def test_inference_batch_equals_one_crf_at_a_time():
    crfs, expected = [], []
    for seed, name in enumerate(["astronaut", "coffee", "chelsea"]):
        image, sm = photo(name, HEIGHT, WIDTH), probs(seed=seed)
        d = dcrf.DenseCRF2D(WIDTH, HEIGHT, CLASSES)
        d.setUnaryEnergy(utils.unary_from_softmax(sm))
        d.addPairwiseGaussian(sxy=3, compat=np.arange(1, CLASSES + 1, dtype=np.float32) * -1)
        d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10, normalization=dcrf.NORMALIZE_AFTER)
        crfs.append(d)
        expected.append(d.inference(5))
    for ours, single in zip(dcrf.inference_batch(crfs, 5), expected):
        np.testing.assert_allclose(ours, single, atol=1e-6)
    other = dcrf.DenseCRF2D(WIDTH, HEIGHT, CLASSES)
    other.addPairwiseGaussian(sxy=3, compat=3)
    with pytest.raises(ValueError, match=r"crfs\[1\] has other pairwise terms"):
        dcrf.inference_batch([crfs[0], other], 5)


def test_tiny_std_gives_a_correct_result_or_a_clear_error():
    # pydensecrf's int16 lattice keys overflow for elevated coordinates beyond 32767.
    from lightning_deeplab.crf.features import elevated_bound

    height, width, std = 6, 8, 2e-4
    assert 32767 < elevated_bound([(width - 1) / std, (height - 1) / std]) < 2**18
    unary = utils.unary_from_softmax(probs(2, height, width))
    d = dcrf.DenseCRF2D(width, height, 2)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=std, compat=3)
    # Every pixel is alone in its own neighbourhood: the normalised filter returns Q itself.
    expected = torch.softmax(-torch.from_numpy(unary), dim=0)
    for _ in range(3):
        expected = torch.softmax(-torch.from_numpy(unary) + 3 * expected, dim=0)
    np.testing.assert_allclose(d.inference(3), expected.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="features are too large for the lattice"):
        d.addPairwiseGaussian(sxy=1e-5, compat=3)


SIZE = dcrf.DenseCRF2D(WIDTH, HEIGHT, CLASSES)
NAN_UNARY = np.zeros((CLASSES, HEIGHT * WIDTH), np.float32)
NAN_UNARY[1, 7] = np.nan


@pytest.mark.parametrize(
    "call, message",
    [
        # The shape mismatch that crashes pydensecrf: a unary of another size than declared.
        (
            lambda d: d.setUnaryEnergy(np.zeros((CLASSES, HEIGHT * WIDTH + 1), np.float32)),
            r"u \(unary energy\) must be",
        ),
        (
            lambda d: d.setUnaryEnergy(np.zeros((CLASSES + 1, HEIGHT * WIDTH), np.float32)),
            r"n_labels, n_points\] = \[5, 2240\]",
        ),
        (lambda d: d.setUnaryEnergy(np.zeros(HEIGHT * WIDTH, np.float32)), "must be 2-D"),
        (lambda d: d.setUnaryEnergy(NAN_UNARY), "contains NaN or Inf"),
        (lambda d: d.addPairwiseEnergy(np.zeros((2, 10), np.float32), compat=3), r"features must be \[d, n_points\]"),
        (lambda d: d.addPairwiseEnergy(np.zeros((17, HEIGHT * WIDTH), np.float32), compat=3), "1 to 16 rows"),
        (
            lambda d: d.addPairwiseGaussian(sxy=3, compat=np.ones(CLASSES + 1, np.float32)),
            "compat vector must have n_labels = 5",
        ),
        (lambda d: d.addPairwiseGaussian(sxy=3, compat=np.ones((3, 3), np.float32)), "compat matrix must be"),
        (lambda d: d.addPairwiseGaussian(sxy=3, compat=np.ones((5, 5, 5))), "compat must be a number, a 1-D or a 2-D"),
        (lambda d: d.addPairwiseGaussian(sxy=0, compat=3), "sxy must be finite and > 0"),
        (lambda d: d.addPairwiseGaussian(sxy=(1, 2, 3), compat=3), "sxy must be a number or 2 numbers"),
        (lambda d: d.addPairwiseGaussian(sxy=3, compat=3, normalization=7), "normalization must be"),
        (
            lambda d: d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=np.zeros((HEIGHT, WIDTH), np.uint8), compat=3),
            r"rgbim must be \[height, width, 3\]",
        ),
        (
            lambda d: d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=np.zeros((HEIGHT, WIDTH, 3)), compat=3),
            "rgbim must be uint8",
        ),
        (lambda d: d.inference(-1), "iterations must be >= 0"),
        (lambda d: d.stepInference(np.zeros((CLASSES, 3), np.float32), None, None), r"Q must be a float32 array"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message):
    d = dcrf.DenseCRF2D(WIDTH, HEIGHT, CLASSES)
    with pytest.raises((ValueError, TypeError), match=message):
        call(d)


def test_utils_refuse_bad_input():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        utils.unary_from_labels(np.array([0, 1, 4]), 3, 0.5)
    with pytest.raises(ValueError, match="gt_prob"):
        utils.unary_from_labels(np.array([0, 1]), 3, 1.0)
    with pytest.raises(ValueError, match="sdims must have 3 entries"):
        utils.create_pairwise_gaussian((1, 1), (4, 5, 6))
    with pytest.raises(ValueError, match="schan must have 3 entries"):
        utils.create_pairwise_bilateral((1, 1), (5, 5), np.zeros((4, 5, 3), np.uint8), chdim=2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_cuda_path_matches_pydensecrf():
    image, sm = photo("astronaut", HEIGHT, WIDTH), probs(seed=9)
    d = dcrf.DenseCRF2D(WIDTH, HEIGHT, CLASSES, device="cuda")
    d.setUnaryEnergy(utils.unary_from_softmax(sm))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
    assert_same_marginals(d.inference(5), readme_2d(ref_dcrf, ref_utils, image, sm))
