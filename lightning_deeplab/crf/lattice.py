"""The permutohedral lattice as a Python object: build it once from features, filter through
it as often as needed (the mean-field loop filters every iteration)."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

from ._ops import operators


class Lattice(NamedTuple):
    """Per-image permutohedral lattices of a batch (see `build_lattice`).

    Vertex indices are global over the batch, numbered in order of first use; image b owns a
    contiguous range of `vertex_counts[b]` vertices, and no neighbour or splat list crosses
    images. The CSR splat lists (every pixel of each vertex, in pixel order) are what the CUDA
    splat gathers through; a lattice built on the CPU has none (empty tensors: the CPU splat
    scatters in pixel order, and the lists would take 8 bytes per pixel and vertex, 0.8 GB at
    4000x3000): `with_splat_lists()` adds them, for moving a CPU lattice to the GPU.
    """

    offsets: torch.Tensor  # [B, N, d+1] int32: vertices enclosing each pixel
    weights: torch.Tensor  # [B, N, d+1] float32: their barycentric weights
    neighbors: torch.Tensor  # [d+1, M, 2] int32: blur neighbours per axis, -1 when absent
    splat_ptr: torch.Tensor  # [M+1] (CPU: [0]) int32: CSR row pointers of the splat lists
    splat_pixel: torch.Tensor  # [B*N*(d+1)] (CPU: [0]) int32: pixel (b*N + n) of each entry
    splat_weight: torch.Tensor  # [B*N*(d+1)] (CPU: [0]) float32: weight of each entry
    vertex_counts: torch.Tensor  # [B] int64: vertices of each image

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return self.offsets.shape[-1] - 1

    @property
    def num_vertices(self) -> int:
        """Vertices of all images together (M)."""
        return self.neighbors.shape[1]

    def with_splat_lists(self) -> "Lattice":
        """This lattice with its CSR splat lists, exactly as the CUDA build makes them (every
        (pixel, vertex) entry grouped by vertex, in pixel order); itself if it has them."""
        if self.splat_ptr.numel() > 0:
            return self
        vertex = self.offsets.reshape(-1).long()
        entry = torch.sort(vertex, stable=True).indices
        counts = torch.bincount(vertex, minlength=self.num_vertices)
        splat_ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).int()
        return self._replace(
            splat_ptr=splat_ptr,
            splat_pixel=(entry // (self.dim + 1)).int(),
            splat_weight=self.weights.reshape(-1)[entry],
        )

    @property
    def filter_tables(self) -> tuple[torch.Tensor, ...]:
        """The tensors the filter operators read, in their argument order."""
        return self.offsets, self.weights, self.neighbors, self.splat_ptr, self.splat_pixel, self.splat_weight

    def filter(
        self,
        values: torch.Tensor,
        reverse: bool = False,
        scale_in: Optional[torch.Tensor] = None,
        scale_out: Optional[torch.Tensor] = None,
        addend: Optional[torch.Tensor] = None,
        softmax: bool = False,
    ) -> torch.Tensor:
        """Approximate Gaussian filter of `values` [B, N, C]; see `lattice_filter`."""
        return lattice_filter(values, self, reverse, scale_in, scale_out, addend, softmax)


def build_lattice(features: torch.Tensor) -> Lattice:
    """Builds one lattice per image from features [B, N, d] (float32, already divided by
    their standard deviations). Unit standard deviation in feature space is what the
    lattice blurs with."""
    return Lattice(*operators().build_lattice(features))


def lattice_filter(
    values: torch.Tensor,
    lattice: Lattice,
    reverse: bool = False,
    scale_in: Optional[torch.Tensor] = None,
    scale_out: Optional[torch.Tensor] = None,
    addend: Optional[torch.Tensor] = None,
    softmax: bool = False,
) -> torch.Tensor:
    """Filters values [B, N, C] (float32 or float64) through `lattice`: splat, blur along
    the axes 0..d (d..0 if `reverse`: the transposed filter), slice; the result includes
    each pixel's own contribution. Returns `addend + scale_out * K(scale_in * values)`,
    with per-pixel scales [B, N] and addend [B, N, C] optional (same dtype as values), and
    its softmax over C if `softmax` (one mean-field update without an extra pass).

    Differentiable in `values` and `addend`; the scales are treated as constants."""
    return operators().lattice_filter(
        values,
        *lattice.filter_tables,
        None if scale_in is None else scale_in.detach(),
        None if scale_out is None else scale_out.detach(),
        addend,
        reverse,
        softmax,
    )


def has_potts_loop(device: torch.device) -> bool:
    """Whether `potts_mean_field_` runs for tensors on `device`: the CPU operators have it,
    CUDA (and the operators of `_ops.operators_from`'s CUDA emulation) do not."""
    return device.type == "cpu" and hasattr(operators(), "potts_mean_field_")


def potts_mean_field_(
    q: torch.Tensor,
    neg_unary: torch.Tensor,
    lattices: Sequence[Lattice],
    scales_in: Sequence[Optional[torch.Tensor]],
    scales_out: Sequence[Optional[torch.Tensor]],
    iterations: int,
    subtract_unary: bool = False,
) -> torch.Tensor:
    """Runs the Potts mean-field loop in place on q = softmax(-U) [B, N, C] (contiguous, CPU):
    `iterations` times q <- softmax(neg_unary + sum_k scale_out_k * K_k(scale_in_k * q)), the
    kernels in order, each filter with the previous sum as its addend (bitwise what
    `lattice_filter` computes step by step). `neg_unary` [B, N, C] may have any strides; with
    `subtract_unary` it holds U itself and is subtracted (same bits), so a view of the
    caller's [B, C, H, W] unary serves without a copy of -U. Returns q. Not differentiable:
    for inference, where it updates q in place (no other [B, N, C] array: the kernels'
    partial sums are kept a channel block at a time) and runs each image on one thread when
    the batch shares the threads out."""
    operators().potts_mean_field_(
        q,
        neg_unary,
        *([lattice.filter_tables[i] for lattice in lattices] for i in range(6)),
        list(scales_in),
        list(scales_out),
        iterations,
        subtract_unary,
    )
    return q


def release_cached_buffers() -> int:
    """Returns the large CPU buffers that the CRF keeps for reuse between filters and calls
    (at most 1 GiB; about what one call at the largest size used) to the system. Returns the
    number of bytes freed."""
    return int(operators().release_cached_buffers())
