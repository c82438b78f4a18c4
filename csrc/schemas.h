// Schemas of the dense-CRF operators, the one place they are written: registered by ops.cpp
// (namespace lightning_deeplab) and by the tests' emulation of the CUDA operators.
#pragma once

namespace lightning_deeplab {
namespace schema {

// Builds one permutohedral lattice per image from per-pixel features [B, N, d] (float32).
//   offsets      [B, N, d+1] int32  global index of each pixel's enclosing vertices
//   weights      [B, N, d+1] float32 their barycentric weights
//   neighbors    [d+1, M, 2] int32  blur neighbours of every vertex per axis (-1: none)
//   splat_ptr    [M+1]       int32  CSR row pointers: the (pixel, weight) pairs of vertex m
//   splat_pixel  [B*N*(d+1)] int32  are splat_pixel/splat_weight[splat_ptr[m]:splat_ptr[m+1]],
//   splat_weight [B*N*(d+1)] float32 in increasing pixel order (pixel = b*N + n)
//   vertex_counts [B]        int64  vertices of each image (image b owns a contiguous range)
constexpr const char* kBuildLattice =
    "build_lattice(Tensor features) -> (Tensor offsets, Tensor weights, Tensor neighbors, "
    "Tensor splat_ptr, Tensor splat_pixel, Tensor splat_weight, Tensor vertex_counts)";

// Gaussian filtering of values [B, N, C] through a lattice: splat, blur along the axes
// 0..d (d..0 when reverse, which is the transpose), slice. With the optional per-pixel
// scales [B, N] and addend [B, N, C] (same dtype as values) it returns
//   addend + scale_out * K(scale_in * values)
// and, with softmax, its softmax over C: that folds the CRF's kernel normalisation,
// weight, message sum and the mean-field softmax into the filter. Tables that build_lattice
// did not make (or that changed since) are checked once to hold only in-bounds indices.
constexpr const char* kLatticeFilter =
    "lattice_filter(Tensor values, Tensor offsets, Tensor weights, Tensor neighbors, "
    "Tensor splat_ptr, Tensor splat_pixel, Tensor splat_weight, Tensor? scale_in, "
    "Tensor? scale_out, Tensor? addend, bool reverse, bool softmax=False) -> Tensor";

// The whole Potts mean-field loop with constant weights, in place on q = softmax(-U):
//   q <- softmax(neg_unary + sum_k scale_out_k * K_k(scale_in_k * q)), `iterations` times,
// each kernel given by its lattice tables and scales (lists with one entry per kernel).
// neg_unary [B, N, C] may have any strides; with subtract_unary it holds U and is subtracted
// (a view of the caller's [B, C, H, W] unary: no [B, N, C] copy of -U is made).
// CPU only, no autograd: the mean-field loop's inference path, image by image on one
// thread each when the batch shares the threads out (no barrier between the filters).
constexpr const char* kPottsMeanField =
    "potts_mean_field_(Tensor(a!) q, Tensor neg_unary, Tensor[] offsets, Tensor[] weights, "
    "Tensor[] neighbors, Tensor[] splat_ptr, Tensor[] splat_pixel, Tensor[] splat_weight, "
    "Tensor?[] scale_in, Tensor?[] scale_out, int iterations, bool subtract_unary=False) -> ()";

// Frees the large CPU buffers kept for reuse (cpu/buffer_pool.h); returns the bytes freed.
constexpr const char* kReleaseCachedBuffers = "release_cached_buffers() -> int";

}  // namespace schema
}  // namespace lightning_deeplab
