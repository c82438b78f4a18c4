// CUDA Gaussian filtering through a permutohedral lattice: one thread per (vertex, channel)
// for the splat (a gather over the vertex's CSR list, so no atomics) and the blur, one per
// (pixel, channel) for the slice, one per pixel for the optional softmax. Channels are the
// fastest index, so a warp reads whole rows.
//
// The arithmetic is the CPU filter's, operation for operation and in the same order (every
// vertex sums its pixels in increasing pixel order, every pixel its vertices in order r), with
// each multiply and add rounded separately (lattice.h *_rn: nvcc would otherwise fuse them into
// FMAs, which the CPU build forbids), so both back ends return the same bits.
#include "cuda/launch.cuh"
#include "cuda/lattice_cuda.h"

namespace lightning_deeplab {
namespace cuda {
namespace {

// Vertex v lives in row v+1 of the buffers; row 0 is zero (a missing neighbour, index -1).
template <typename T>
__global__ void splat_kernel(FilterPointers<T> ptrs, int64_t M, int64_t C) {
  const int64_t index = thread_index();
  if (index >= M * C) return;
  const int64_t v = index / C;
  const int64_t c = index % C;
  T acc = T(0);
  for (int32_t k = ptrs.splat_ptr[v]; k < ptrs.splat_ptr[v + 1]; ++k) {
    const int64_t pixel = ptrs.splat_pixel[k];
    T w = static_cast<T>(ptrs.splat_weight[k]);
    if (ptrs.scale_in != nullptr) w = lattice::mul_rn(w, ptrs.scale_in[pixel]);
    acc = lattice::add_rn(acc, lattice::mul_rn(w, ptrs.values[pixel * C + c]));
  }
  ptrs.buf_a[(v + 1) * C + c] = acc;
}

template <typename T>
__global__ void blur_kernel(const int32_t* neighbors, const T* src, T* dst, int64_t M, int64_t C) {
  const int64_t index = thread_index();
  if (index >= M * C) return;
  const int64_t v = index / C;
  const int64_t c = index % C;
  const int64_t n1 = static_cast<int64_t>(neighbors[2 * v]) + 1;
  const int64_t n2 = static_cast<int64_t>(neighbors[2 * v + 1]) + 1;
  const T sides = lattice::add_rn(src[n1 * C + c], src[n2 * C + c]);
  dst[(v + 1) * C + c] = lattice::add_rn(src[(v + 1) * C + c], lattice::mul_rn(T(0.5), sides));
}

template <typename T>
__global__ void slice_kernel(FilterPointers<T> ptrs, const T* lattice_values, int64_t P,
                             int64_t C, int d, T alpha) {
  const int64_t index = thread_index();
  if (index >= P * C) return;
  const int64_t p = index / C;
  const int64_t c = index % C;
  const int d1 = d + 1;
  T acc = T(0);
  for (int r = 0; r < d1; ++r) {
    const T w = lattice::mul_rn(static_cast<T>(ptrs.weights[p * d1 + r]), alpha);
    const int64_t row = static_cast<int64_t>(ptrs.offsets[p * d1 + r]) + 1;
    acc = lattice::add_rn(acc, lattice::mul_rn(w, lattice_values[row * C + c]));
  }
  if (ptrs.scale_out != nullptr) acc = lattice::mul_rn(acc, ptrs.scale_out[p]);
  if (ptrs.addend != nullptr) acc = lattice::add_rn(ptrs.addend[index], acc);
  ptrs.out[index] = acc;
}

// Softmax over the C channels of every output row: the CPU's routine, one thread per pixel.
template <typename T>
__global__ void softmax_kernel(T* out, int64_t P, int64_t C) {
  const int64_t p = thread_index();
  if (p >= P) return;
  lattice::softmax_row(out + p * C, C);
}

}  // namespace

template <typename T>
cudaError_t lattice_filter(const FilterPointers<T>& ptrs, int64_t P, int64_t M, int64_t C, int d,
                           bool reverse, bool softmax, cudaStream_t stream) {
  cudaError_t status = cudaMemsetAsync(ptrs.buf_a, 0, C * sizeof(T), stream);
  if (status != cudaSuccess) return status;
  status = cudaMemsetAsync(ptrs.buf_b, 0, C * sizeof(T), stream);
  if (status != cudaSuccess) return status;
  if (M > 0) {
    status = launch(splat_kernel<T>, M * C, stream, ptrs, M, C);
    if (status != cudaSuccess) return status;
  }
  T* src = ptrs.buf_a;
  T* dst = ptrs.buf_b;
  for (int step = 0; step <= d && M > 0; ++step) {
    const int axis = reverse ? d - step : step;
    status = launch(blur_kernel<T>, M * C, stream,
                    ptrs.neighbors + static_cast<int64_t>(axis) * M * 2, src, dst, M, C);
    if (status != cudaSuccess) return status;
    T* swap = src;
    src = dst;
    dst = swap;
  }
  const T alpha = static_cast<T>(lattice::slice_alpha(d));
  status = launch(slice_kernel<T>, P * C, stream, ptrs, src, P, C, d, alpha);
  if (status != cudaSuccess || !softmax) return status;
  return launch(softmax_kernel<T>, P, stream, ptrs.out, P, C);
}

template cudaError_t lattice_filter<float>(const FilterPointers<float>&, int64_t, int64_t, int64_t,
                                           int, bool, bool, cudaStream_t);
template cudaError_t lattice_filter<double>(const FilterPointers<double>&, int64_t, int64_t,
                                            int64_t, int, bool, bool, cudaStream_t);

}  // namespace cuda
}  // namespace lightning_deeplab
