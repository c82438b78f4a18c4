// Kernel launchers of the CUDA lattice, on raw device pointers. The .cu files that define
// them include no torch headers (fast, quiet nvcc builds); ops_cuda.cpp allocates tensors,
// checks arguments and registers the operators.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "lattice.h"

namespace lightning_deeplab {
namespace cuda {

// ---- lattice construction (build_lattice_cuda.cu) --------------------------------------
// P pixels (B images of N), d features, E = P * (d+1) entries (pixel, enclosing vertex).

// Locates every pixel's simplex: rem0, rank [P, d+1] int32 and weights [P, d+1] float.
// Sets *out_of_range to 1 if any feature is non-finite or beyond the lattice range.
cudaError_t locate_pixels(const float* features, int64_t P, int d,
                          const lattice::ElevationScale& scale, int32_t* rem0, int32_t* rank,
                          float* weights, int32_t* out_of_range, cudaStream_t stream);

// Inserts all E entries into an open-addressing table of `capacity` (a power of two,
// >= 2E, at most 2^32, filled with -1 beforehand) keyed by (image, vertex key); afterwards every occupied
// slot holds the smallest entry with its key and slot_of_entry[e] is entry e's slot.
// is_first[e] = 1 when e is the first (smallest) entry of its vertex.
cudaError_t insert_entries(const int32_t* rem0, const int32_t* rank, int64_t N, int64_t P,
                           int d, int32_t* table, int64_t capacity, uint32_t* slot_of_entry,
                           int32_t* is_first, cudaStream_t stream);

// Exclusive prefix sum of n int32 values (cub); exclusive_sum_temp_bytes sizes the scratch space.
cudaError_t exclusive_sum_temp_bytes(int64_t n, size_t* bytes);
cudaError_t exclusive_sum(const int32_t* in, int32_t* out, int64_t n, void* temp,
                          size_t temp_bytes, cudaStream_t stream);

// Vertex of every entry (offsets [E], global vertex index = first_index of its first entry)
// and the first entry of every vertex (vertex_entry [M]).
cudaError_t assign_vertices(const int32_t* table, const uint32_t* slot_of_entry,
                            const int32_t* is_first, const int32_t* first_index, int64_t E,
                            int32_t* offsets, int32_t* vertex_entry, cudaStream_t stream);

// Blur neighbours [d+1, M, 2] (filled with -1 beforehand) of the M vertices.
cudaError_t find_neighbors(const int32_t* rem0, const int32_t* rank, const int32_t* table,
                           int64_t capacity, const int32_t* first_index,
                           const int32_t* vertex_entry, int64_t M, int64_t N, int d,
                           int32_t* neighbors, cudaStream_t stream);

// Sorts the entries by vertex (stable, so each vertex keeps increasing pixel order).
cudaError_t sort_entries_temp_bytes(int64_t E, int key_bits, size_t* bytes);
cudaError_t sort_entries(const int32_t* offsets, int32_t* sorted_vertex, int32_t* sorted_entry,
                         int32_t* entry_iota, int64_t E, int key_bits, void* temp,
                         size_t temp_bytes, cudaStream_t stream);

// CSR splat lists from the sorted entries, and per-image vertex counts.
cudaError_t fill_splat_lists(const int32_t* sorted_vertex, const int32_t* sorted_entry,
                             const float* weights, int64_t E, int64_t M, int d,
                             int32_t* splat_ptr, int32_t* splat_pixel, float* splat_weight,
                             cudaStream_t stream);
cudaError_t count_vertices(const int32_t* first_index, int64_t B, int64_t N, int d, int64_t M,
                           int64_t* vertex_counts, cudaStream_t stream);

// ---- filtering (lattice_filter_cuda.cu) ------------------------------------------------

template <typename T>
struct FilterPointers {
  const T* values;      // [P, C]
  T* out;               // [P, C]
  const T* scale_in;    // [P] or null
  const T* scale_out;   // [P] or null
  const T* addend;      // [P, C] or null
  const int32_t* offsets;
  const float* weights;
  const int32_t* neighbors;
  const int32_t* splat_ptr;
  const int32_t* splat_pixel;
  const float* splat_weight;
  T* buf_a;  // [M+1, C] scratch
  T* buf_b;  // [M+1, C] scratch
};

// Splat, d+1 blur passes (axes in reverse order if `reverse`), slice; then the softmax over C
// of every output row if `softmax`. The same arithmetic as the CPU filter, bit for bit.
template <typename T>
cudaError_t lattice_filter(const FilterPointers<T>& ptrs, int64_t P, int64_t M, int64_t C, int d,
                           bool reverse, bool softmax, cudaStream_t stream);

}  // namespace cuda
}  // namespace lightning_deeplab
