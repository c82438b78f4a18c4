"""pydensecrf's `densecrf` module: `DenseCRF`, `DenseCRF2D`, the kernel and normalisation
constants, plus `inference_batch` (many CRFs of one size in one batched run).

Semantics follow pydensecrf (Kraehenbuehl's C++ core): Q = softmax(-U), then per iteration
A = -U - sum_k compat_k(norm_k K_k(Q)) and Q = softmax(A), with compat a number w (Potts:
-w * x), a vector v (v * x per label) or a matrix X ((X + X^T)/2 @ x). The kernel type
(DIAG/CONST/FULL) only matters for pydensecrf's parameter learning, which is not offered:
with their initial parameters all three filter the features as given.

Unlike pydensecrf, bad input is refused with a ValueError naming the argument (wrong shapes,
NaN/Inf, features beyond the lattice's range) instead of crashing later; non-contiguous,
read-only and float64 arrays are accepted (copied to float32).
"""

from __future__ import annotations

import contextlib
import enum
import numbers
from typing import Optional, Sequence

import numpy as np
import torch

from ..crf import checks
from ..crf.features import MAX_FEATURE_DIM
from ..crf.lattice import build_lattice
from ..crf.mean_field import label_softmax, make_kernel, mean_field, pairwise_terms
from ..crf.threads import check_threads, cpu_threads
from ..crf.values import is_integer, is_real


class KernelType(enum.IntEnum):
    CONST_KERNEL = 0
    DIAG_KERNEL = 1
    FULL_KERNEL = 2


class NormalizationType(enum.IntEnum):
    NO_NORMALIZATION = 0
    NORMALIZE_BEFORE = 1
    NORMALIZE_AFTER = 2
    NORMALIZE_SYMMETRIC = 3


CONST_KERNEL = KernelType.CONST_KERNEL
DIAG_KERNEL = KernelType.DIAG_KERNEL
FULL_KERNEL = KernelType.FULL_KERNEL
NO_NORMALIZATION = NormalizationType.NO_NORMALIZATION
NORMALIZE_BEFORE = NormalizationType.NORMALIZE_BEFORE
NORMALIZE_AFTER = NormalizationType.NORMALIZE_AFTER
NORMALIZE_SYMMETRIC = NormalizationType.NORMALIZE_SYMMETRIC

# pydensecrf's normalisation -> the name `lightning_deeplab.crf` uses.
_NORMALIZATION_NAMES = {
    NO_NORMALIZATION: "none",
    NORMALIZE_BEFORE: "before",
    NORMALIZE_AFTER: "after",
    NORMALIZE_SYMMETRIC: "symmetric",
}


def _positive_int(name: str, value) -> int:
    if not is_integer(value) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _float_array(name: str, value, ndim: int) -> np.ndarray:
    """A C-contiguous float32 copy-or-view of `value`, finite, with `ndim` dimensions."""
    try:
        array = np.asarray(value)
    except Exception as error:  # objects numpy cannot convert
        raise ValueError(f"{name} must be an array, got {type(value).__name__}") from error
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not array.flags.writeable:  # torch.from_numpy warns about read-only arrays: copy them
        array = array.copy()
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return array


def _per_axis(name: str, value, count: int) -> list[float]:
    values = [value] * count if isinstance(value, numbers.Number) else list(np.asarray(value).reshape(-1))
    if len(values) != count:
        raise ValueError(f"{name} must be a number or {count} numbers, got {value!r}")
    for item in values:
        if not np.isfinite(item) or item <= 0:
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return [float(item) for item in values]


def _compatibility(compat, labels: int) -> tuple[float, Optional[np.ndarray]]:
    """pydensecrf's compat as (weight, compatibility) of `lightning_deeplab.crf`, whose
    messages are added, not subtracted: Potts w -> (w, None); vector v -> (1, -v);
    matrix X -> (1, -(X + X^T)/2)."""
    if is_real(compat):
        checks.check_weight("compat", float(compat))  # finite, and small enough not to overflow
        return float(compat), None
    array = np.asarray(compat)
    if array.ndim == 1:
        vector = _float_array("compat", array, 1)
        if vector.shape != (labels,):
            raise ValueError(f"compat vector must have n_labels = {labels} entries, got shape {vector.shape}")
        return 1.0, -vector
    if array.ndim == 2:
        matrix = _float_array("compat", array, 2)
        if matrix.shape != (labels, labels):
            raise ValueError(f"compat matrix must be [n_labels, n_labels] = [{labels}, {labels}], got {matrix.shape}")
        return 1.0, -(np.float32(0.5) * (matrix + matrix.T))
    raise ValueError(f"compat must be a number, a 1-D or a 2-D array, got shape {array.shape}")


class _Pairwise:
    """One pairwise term as given: features [d, N] float32, weight, compatibility, normalisation."""

    def __init__(self, features: np.ndarray, weight: float, compatibility: Optional[np.ndarray], normalization: str):
        self.features = features
        self.weight = weight
        self.compatibility = compatibility
        self.normalization = normalization

    def same_settings(self, other: "_Pairwise") -> bool:
        same_compat = (self.compatibility is None and other.compatibility is None) or (
            self.compatibility is not None
            and other.compatibility is not None
            and np.array_equal(self.compatibility, other.compatibility)
        )
        return (
            self.features.shape[0] == other.features.shape[0]
            and self.weight == other.weight
            and self.normalization == other.normalization
            and same_compat
        )


class DenseCRF:
    """A fully connected CRF over `n_points` variables with `n_labels` labels (pydensecrf's
    generic `DenseCRF`). `device` ("cpu", "cuda", ...) is where the lattice work runs.

    `threads` (CPU only): an int >= 1, or None / "auto" (default): the environment variable
    LIGHTNING_DEEPLAB_CRF_THREADS if set, else torch's thread count (`torch.set_num_threads`)
    capped at the cores other processes leave idle when `inference` starts: on a busy machine
    one thread beats two (see `lightning_deeplab.crf.threads`)."""

    def __init__(self, n_points: int, n_labels: int, device=None, threads=None) -> None:
        self._points = _positive_int("n_points", n_points)
        self._labels = _positive_int("n_labels", n_labels)
        try:
            self._device = torch.device("cpu" if device is None else device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must name a torch device, got {device!r}") from error
        self._threads = check_threads(threads)
        self._unary = np.zeros((self._labels, self._points), dtype=np.float32)
        self._pairwise: list[_Pairwise] = []
        self._kernels = None  # built lattices, reset when a term is added

    # -- model ---------------------------------------------------------------------------
    def setUnaryEnergy(self, u, f=None) -> None:
        """Unary energies U [n_labels, n_points] (e.g. from `utils.unary_from_softmax`)."""
        if f is not None:
            raise ValueError("setUnaryEnergy: the learned (logistic) unary `f` is not supported")
        unary = _float_array("u (unary energy)", u, 2)
        if unary.shape != (self._labels, self._points):
            raise ValueError(
                f"u (unary energy) must be [n_labels, n_points] = [{self._labels}, {self._points}], got {unary.shape}"
            )
        self._unary = unary

    def addPairwiseEnergy(self, features, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC) -> None:
        """A Gaussian pairwise term over features [d, n_points] (already divided by their
        standard deviations; d from 1 to 16)."""
        feats = _float_array("features", features, 2)
        if feats.shape[1] != self._points:
            raise ValueError(f"features must be [d, n_points] = [?, {self._points}], got {feats.shape}")
        if not 1 <= feats.shape[0] <= MAX_FEATURE_DIM:
            raise ValueError(f"features must have 1 to {MAX_FEATURE_DIM} rows (dimensions), got {feats.shape[0]}")
        if kernel not in tuple(KernelType):
            raise ValueError(f"kernel must be DIAG_KERNEL, CONST_KERNEL or FULL_KERNEL, got {kernel!r}")
        if normalization not in _NORMALIZATION_NAMES:
            raise ValueError(
                "normalization must be NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER or "
                f"NORMALIZE_SYMMETRIC, got {normalization!r}"
            )
        # pydensecrf's int16 lattice keys wrap far sooner; here the range is checked.
        checks.check_feature_values("features", torch.from_numpy(feats).T.unsqueeze(0))
        weight, compatibility = _compatibility(compat, self._labels)
        self._pairwise.append(
            _Pairwise(feats, weight, compatibility, _NORMALIZATION_NAMES[NormalizationType(normalization)])
        )
        self._kernels = None

    # -- inference -----------------------------------------------------------------------
    def _neg_unary(self) -> torch.Tensor:
        return torch.from_numpy(self._unary).T.neg().unsqueeze(0).contiguous().to(self._device)

    def _cpu_threads(self, batch: int = 1):
        """The CPU thread count around one call (a no-op context elsewhere)."""
        if self._device.type != "cpu":
            return contextlib.nullcontext()
        return cpu_threads(self._threads, batch)

    def _built_kernels(self):
        if self._kernels is None:
            self._kernels = _build(self._pairwise, [self], self._device)
        return self._kernels

    def inference(self, n_iterations: int) -> np.ndarray:
        """Marginals Q [n_labels, n_points] float32 after `n_iterations` mean-field steps."""
        checks.check_iterations(n_iterations)
        with self._cpu_threads():
            q = mean_field(self._neg_unary(), self._built_kernels(), n_iterations)
        return _to_numpy(q[0])

    def startInference(self):
        """(Q, tmp1, tmp2) to step with `stepInference`: Q = softmax(-U) [n_labels, n_points]."""
        q = label_softmax(self._neg_unary())
        return _to_numpy(q[0]), np.empty((0, 0), np.float32), np.empty((0, 0), np.float32)

    def _marginals(self, name: str, Q) -> np.ndarray:
        if not isinstance(Q, np.ndarray) or Q.dtype != np.float32 or Q.shape != (self._labels, self._points):
            raise ValueError(
                f"{name} must be a float32 array [n_labels, n_points] = [{self._labels}, {self._points}] "
                f"(as startInference returns), got {getattr(Q, 'dtype', type(Q).__name__)} "
                f"{getattr(Q, 'shape', '')}"
            )
        return Q

    def stepInference(self, Q, tmp1=None, tmp2=None) -> None:
        """One mean-field step, updating Q in place (tmp1 and tmp2 are scratch, as in pydensecrf)."""
        Q = self._marginals("Q", Q)
        if not Q.flags.writeable:
            raise ValueError("Q must be writable: stepInference updates it in place")
        neg_unary = self._neg_unary()
        q = torch.from_numpy(np.ascontiguousarray(Q)).T.unsqueeze(0).contiguous().to(self._device)
        energies = neg_unary
        with self._cpu_threads():
            for term in pairwise_terms(q, self._built_kernels()):
                energies = energies + term
        Q[...] = _to_numpy(torch.softmax(energies, dim=-1)[0])

    def klDivergence(self, Q) -> float:
        """pydensecrf's KL divergence of Q from the CRF's distribution (up to a constant):
        sum Q log Q + sum U Q - sum_k Q . (pairwise messages of Q)."""
        Q = self._marginals("Q", Q)
        q64 = np.asarray(Q, dtype=np.float64)
        kl = float((q64 * np.log(np.maximum(Q, np.float32(1e-20)).astype(np.float64))).sum())
        kl += float((self._unary.astype(np.float64) * q64).sum())
        readable = np.ascontiguousarray(Q) if Q.flags.writeable else np.array(Q)  # from_numpy warns on read-only
        q = torch.from_numpy(readable).T.unsqueeze(0).contiguous().to(self._device)
        with self._cpu_threads():
            for term in pairwise_terms(q, self._built_kernels()):
                kl -= float((q.double() * term.double()).sum())
        return kl


class DenseCRF2D(DenseCRF):
    """A CRF over the pixels of a width x height image (pydensecrf's `DenseCRF2D`);
    pixel n = y * width + x."""

    def __init__(self, width: int, height: int, n_labels: int, device=None, threads=None) -> None:
        self._width = _positive_int("width", width)
        self._height = _positive_int("height", height)
        super().__init__(self._width * self._height, n_labels, device, threads)

    def _xy(self, sxy) -> list[np.ndarray]:
        sx, sy = _per_axis("sxy", sxy, 2)
        xs = np.tile(np.arange(self._width, dtype=np.float32), self._height)
        ys = np.repeat(np.arange(self._height, dtype=np.float32), self._width)
        return [xs / np.float32(sx), ys / np.float32(sy)]

    def addPairwiseGaussian(self, sxy, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC) -> None:
        """Smoothness kernel: features (x / sxy, y / sxy); sxy a number or (sx, sy)."""
        self.addPairwiseEnergy(np.stack(self._xy(sxy)), compat, kernel, normalization)

    def addPairwiseBilateral(
        self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC
    ) -> None:
        """Appearance kernel: (x, y) / sxy and (r, g, b) / srgb of rgbim [height, width, 3]
        uint8; sxy a number or 2, srgb a number or 3."""
        image = np.asarray(rgbim)
        if image.shape != (self._height, self._width, 3):
            raise ValueError(
                f"rgbim must be [height, width, 3] = [{self._height}, {self._width}, 3], got {image.shape} "
                "(for other channels use utils.create_pairwise_bilateral with addPairwiseEnergy)"
            )
        if image.dtype != np.uint8:
            raise ValueError(f"rgbim must be uint8 (0-255 RGB), got {image.dtype}; {_uint8_hint(image.dtype)}")
        colours = image.reshape(-1, 3).astype(np.float32)
        stds = _per_axis("srgb", srgb, 3)
        channels = [colours[:, c] / np.float32(stds[c]) for c in range(3)]
        self.addPairwiseEnergy(np.stack(self._xy(sxy) + channels), compat, kernel, normalization)


def _uint8_hint(dtype: np.dtype) -> str:
    """How to bring an image of `dtype` to 0-255 (a plain .astype(np.uint8) wraps 16-bit values)."""
    if dtype == np.uint16:
        return "scale 16-bit values down with (rgbim >> 8).astype(np.uint8)"
    if dtype.kind == "f":
        return (
            "for values in [0, 1] use (rgbim * 255).round().astype(np.uint8); for 0-255 rgbim.round().astype(np.uint8)"
        )
    return "convert it to 0-255 values of dtype uint8 (np.clip(rgbim, 0, 255).astype(np.uint8) for 0-255 values)"


def _to_numpy(q: torch.Tensor) -> np.ndarray:
    """[N, C] tensor -> writable C-contiguous float32 [C, N] array."""
    return np.ascontiguousarray(q.T.detach().to("cpu", torch.float32).numpy())


def _build(pairwise: Sequence[_Pairwise], crfs: Sequence[DenseCRF], device: torch.device):
    """Lattices of every pairwise term, batched over `crfs` (term k of each CRF together)."""
    kernels = []
    for index, term in enumerate(pairwise):
        stacked = np.stack([crf._pairwise[index].features.T for crf in crfs])  # [B, N, d]
        lattice = build_lattice(torch.from_numpy(stacked).to(device))
        compatibility = None if term.compatibility is None else torch.from_numpy(term.compatibility).to(device)
        kernels.append(make_kernel(lattice, term.weight, term.normalization, torch.float32, compatibility))
    return kernels


def inference_batch(crfs: Sequence[DenseCRF], n_iterations: int) -> list[np.ndarray]:
    """`crf.inference(n_iterations)` of every CRF in one batched run (on the first CRF's
    device). The CRFs must have the same size, labels and pairwise terms in the same order
    (same dimensions, compat and normalisation; the features themselves differ)."""
    crfs = list(crfs)
    if not crfs or not all(isinstance(crf, DenseCRF) for crf in crfs):
        raise ValueError("crfs must be a non-empty list of DenseCRF")
    checks.check_iterations(n_iterations)
    first = crfs[0]
    for index, crf in enumerate(crfs[1:], start=1):
        if (crf._points, crf._labels) != (first._points, first._labels):
            raise ValueError(
                f"crfs[{index}] has {crf._points} points and {crf._labels} labels; crfs[0] has "
                f"{first._points} and {first._labels}: a batch needs one size"
            )
        if len(crf._pairwise) != len(first._pairwise) or not all(
            a.same_settings(b) for a, b in zip(first._pairwise, crf._pairwise)
        ):
            raise ValueError(f"crfs[{index}] has other pairwise terms than crfs[0] (count, d, compat or normalization)")
    device = first._device
    with first._cpu_threads(batch=len(crfs)):
        kernels = _build(first._pairwise, crfs, device)
        neg_unary = torch.stack([torch.from_numpy(crf._unary).T for crf in crfs]).neg().contiguous().to(device)
        q = mean_field(neg_unary, kernels, n_iterations)
    return [_to_numpy(q[b]) for b in range(len(crfs))]


__all__ = [
    "CONST_KERNEL",
    "DIAG_KERNEL",
    "FULL_KERNEL",
    "NORMALIZE_AFTER",
    "NORMALIZE_BEFORE",
    "NORMALIZE_SYMMETRIC",
    "NO_NORMALIZATION",
    "DenseCRF",
    "DenseCRF2D",
    "KernelType",
    "NormalizationType",
    "inference_batch",
]
