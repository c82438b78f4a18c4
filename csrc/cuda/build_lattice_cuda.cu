// CUDA construction of the permutohedral lattices of a batch.
//
// All (pixel, vertex) entries of the batch go into one open-addressing hash table keyed by
// (image, vertex key), sized at >= 2x the number of entries so it cannot overflow. Each
// occupied slot then keeps the smallest entry with its key, and vertices are numbered by a
// prefix sum over "first entry of its vertex" flags: the same first-use order as the CPU
// build, so both produce identical lattices. Splat lists come from a stable radix sort of
// the entries by vertex: deterministic, with no float atomics anywhere.
//
// Sizes: E <= 2^31 - 1 entries (lattice_checks.h), so entries, vertices and CSR positions fit
// int32 and the table holds up to 2^32 slots, whose indices are uint32 (int64 in the probes).
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "cuda/launch.cuh"
#include "cuda/lattice_cuda.h"

namespace lightning_deeplab {
namespace cuda {
namespace {

// Key of entry e = (pixel e / (d+1), enclosing vertex e % (d+1)).
__device__ __forceinline__ void entry_key(const int32_t* rem0, const int32_t* rank, int d,
                                          int64_t e, int32_t* key) {
  const int64_t p = e / (d + 1);
  const int r = static_cast<int>(e % (d + 1));
  lattice::vertex_key(rem0 + p * (d + 1), rank + p * (d + 1), d, r, key);
}

__global__ void locate_kernel(const float* features, int64_t P, int d,
                              lattice::ElevationScale scale, int32_t* rem0, int32_t* rank,
                              float* weights, int32_t* out_of_range) {
  const int64_t p = thread_index();
  if (p >= P) return;
  const int64_t d1 = d + 1;
  if (!lattice::locate_simplex(features + p * d, d, scale, rem0 + p * d1, rank + p * d1,
                               weights + p * d1)) {
    // Atomic: many threads may store the flag at once, which plain stores make a data race.
    atomicExch(out_of_range, 1);
  }
}

__global__ void insert_kernel(const int32_t* rem0, const int32_t* rank, int64_t N, int64_t E,
                              int d, int32_t* table, int64_t mask, uint32_t* slot_of_entry) {
  const int64_t e = thread_index();
  if (e >= E) return;
  int32_t key[lattice::kMaxDim];
  int32_t other[lattice::kMaxDim];
  entry_key(rem0, rank, d, e, key);
  const int64_t image = e / (d + 1) / N;
  int64_t slot = lattice::hash_key(key, d, static_cast<uint32_t>(image)) & mask;
  while (true) {
    const int32_t owner = atomicCAS(table + slot, -1, static_cast<int32_t>(e));
    if (owner == -1) break;
    if (owner / (d + 1) / N == image) {
      entry_key(rem0, rank, d, owner, other);
      if (lattice::keys_equal(key, other, d)) break;
    }
    slot = (slot + 1) & mask;
  }
  slot_of_entry[e] = static_cast<uint32_t>(slot);
}

// Makes every occupied slot hold the smallest entry with its key (entries are written by
// the insertion before this kernel runs, so keys compare equal).
__global__ void keep_first_entry_kernel(const uint32_t* slot_of_entry, int64_t E, int32_t* table) {
  const int64_t e = thread_index();
  if (e >= E) return;
  atomicMin(table + slot_of_entry[e], static_cast<int32_t>(e));
}

__global__ void first_flag_kernel(const int32_t* table, const uint32_t* slot_of_entry, int64_t E,
                                  int32_t* is_first) {
  const int64_t e = thread_index();
  if (e >= E) return;
  is_first[e] = table[slot_of_entry[e]] == e ? 1 : 0;
}

__global__ void assign_kernel(const int32_t* table, const uint32_t* slot_of_entry,
                              const int32_t* is_first, const int32_t* first_index, int64_t E,
                              int32_t* offsets, int32_t* vertex_entry) {
  const int64_t e = thread_index();
  if (e >= E) return;
  const int32_t vertex = first_index[table[slot_of_entry[e]]];
  offsets[e] = vertex;
  if (is_first[e]) vertex_entry[vertex] = static_cast<int32_t>(e);
}

// One thread per (vertex, axis): looks up n1 and records both directions (n2 of n1 is the
// vertex itself), so each neighbour pair is found once.
__global__ void neighbors_kernel(const int32_t* rem0, const int32_t* rank, const int32_t* table,
                                 int64_t mask, const int32_t* first_index,
                                 const int32_t* vertex_entry, int64_t M, int64_t N, int d,
                                 int32_t* neighbors) {
  const int64_t index = thread_index();
  if (index >= M * (d + 1)) return;
  const int64_t v = index / (d + 1);
  const int j = static_cast<int>(index % (d + 1));
  int32_t key[lattice::kMaxDim];
  int32_t n1[lattice::kMaxDim];
  int32_t n2[lattice::kMaxDim];
  int32_t other[lattice::kMaxDim];
  const int64_t entry = vertex_entry[v];
  entry_key(rem0, rank, d, entry, key);
  const int64_t image = entry / (d + 1) / N;
  lattice::neighbour_keys(key, d, j, n1, n2);
  int64_t slot = lattice::hash_key(n1, d, static_cast<uint32_t>(image)) & mask;
  while (true) {
    const int32_t owner = table[slot];
    if (owner == -1) return;  // n1 is not in the lattice
    if (owner / (d + 1) / N == image) {
      entry_key(rem0, rank, d, owner, other);
      if (lattice::keys_equal(n1, other, d)) {
        const int64_t u = first_index[owner];
        neighbors[(static_cast<int64_t>(j) * M + v) * 2] = static_cast<int32_t>(u);
        neighbors[(static_cast<int64_t>(j) * M + u) * 2 + 1] = static_cast<int32_t>(v);
        return;
      }
    }
    slot = (slot + 1) & mask;
  }
}

__global__ void iota_kernel(int32_t* out, int64_t n) {
  const int64_t i = thread_index();
  if (i < n) out[i] = static_cast<int32_t>(i);
}

__global__ void splat_lists_kernel(const int32_t* sorted_vertex, const int32_t* sorted_entry,
                                   const float* weights, int64_t E, int64_t M, int d,
                                   int32_t* splat_ptr, int32_t* splat_pixel, float* splat_weight) {
  const int64_t i = thread_index();
  if (i >= E) return;
  const int32_t e = sorted_entry[i];
  splat_pixel[i] = e / (d + 1);
  splat_weight[i] = weights[e];
  const int32_t v = sorted_vertex[i];
  if (i == 0 || sorted_vertex[i - 1] != v) splat_ptr[v] = static_cast<int32_t>(i);
  if (i == E - 1) splat_ptr[M] = static_cast<int32_t>(E);
}

__global__ void count_kernel(const int32_t* first_index, int64_t B, int64_t N, int d, int64_t M,
                             int64_t* vertex_counts) {
  const int64_t b = thread_index();
  if (b >= B) return;
  const int64_t per_image = N * (d + 1);
  const int64_t start = first_index[b * per_image];
  const int64_t end = b + 1 < B ? first_index[(b + 1) * per_image] : M;
  vertex_counts[b] = end - start;
}

}  // namespace

cudaError_t locate_pixels(const float* features, int64_t P, int d,
                          const lattice::ElevationScale& scale, int32_t* rem0, int32_t* rank,
                          float* weights, int32_t* out_of_range, cudaStream_t stream) {
  return launch(locate_kernel, P, stream, features, P, d, scale, rem0, rank, weights,
                out_of_range);
}

cudaError_t insert_entries(const int32_t* rem0, const int32_t* rank, int64_t N, int64_t P,
                           int d, int32_t* table, int64_t capacity, uint32_t* slot_of_entry,
                           int32_t* is_first, cudaStream_t stream) {
  const int64_t E = P * (d + 1);
  cudaError_t status = launch(insert_kernel, E, stream, rem0, rank, N, E, d, table, capacity - 1,
                              slot_of_entry);
  if (status != cudaSuccess) return status;
  status = launch(keep_first_entry_kernel, E, stream, slot_of_entry, E, table);
  if (status != cudaSuccess) return status;
  return launch(first_flag_kernel, E, stream, table, slot_of_entry, E, is_first);
}

cudaError_t exclusive_sum_temp_bytes(int64_t n, size_t* bytes) {
  *bytes = 0;
  return cub::DeviceScan::ExclusiveSum(nullptr, *bytes, static_cast<const int32_t*>(nullptr),
                                       static_cast<int32_t*>(nullptr), static_cast<int>(n));
}

cudaError_t exclusive_sum(const int32_t* in, int32_t* out, int64_t n, void* temp,
                          size_t temp_bytes, cudaStream_t stream) {
  return cub::DeviceScan::ExclusiveSum(temp, temp_bytes, in, out, static_cast<int>(n), stream);
}

cudaError_t assign_vertices(const int32_t* table, const uint32_t* slot_of_entry,
                            const int32_t* is_first, const int32_t* first_index, int64_t E,
                            int32_t* offsets, int32_t* vertex_entry, cudaStream_t stream) {
  return launch(assign_kernel, E, stream, table, slot_of_entry, is_first, first_index, E, offsets,
                vertex_entry);
}

cudaError_t find_neighbors(const int32_t* rem0, const int32_t* rank, const int32_t* table,
                           int64_t capacity, const int32_t* first_index,
                           const int32_t* vertex_entry, int64_t M, int64_t N, int d,
                           int32_t* neighbors, cudaStream_t stream) {
  if (M == 0) return cudaSuccess;
  return launch(neighbors_kernel, M * (d + 1), stream, rem0, rank, table, capacity - 1,
                first_index, vertex_entry, M, N, d, neighbors);
}

cudaError_t sort_entries_temp_bytes(int64_t E, int key_bits, size_t* bytes) {
  *bytes = 0;
  return cub::DeviceRadixSort::SortPairs(nullptr, *bytes, static_cast<const int32_t*>(nullptr),
                                         static_cast<int32_t*>(nullptr),
                                         static_cast<const int32_t*>(nullptr),
                                         static_cast<int32_t*>(nullptr), static_cast<int>(E), 0,
                                         key_bits);
}

cudaError_t sort_entries(const int32_t* offsets, int32_t* sorted_vertex, int32_t* sorted_entry,
                         int32_t* entry_iota, int64_t E, int key_bits, void* temp,
                         size_t temp_bytes, cudaStream_t stream) {
  const cudaError_t launched = launch(iota_kernel, E, stream, entry_iota, E);
  if (launched != cudaSuccess) return launched;
  // LSD radix sort is stable: entries of a vertex stay in increasing (pixel) order.
  return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, offsets, sorted_vertex, entry_iota,
                                         sorted_entry, static_cast<int>(E), 0, key_bits, stream);
}

cudaError_t fill_splat_lists(const int32_t* sorted_vertex, const int32_t* sorted_entry,
                             const float* weights, int64_t E, int64_t M, int d,
                             int32_t* splat_ptr, int32_t* splat_pixel, float* splat_weight,
                             cudaStream_t stream) {
  return launch(splat_lists_kernel, E, stream, sorted_vertex, sorted_entry, weights, E, M, d,
                splat_ptr, splat_pixel, splat_weight);
}

cudaError_t count_vertices(const int32_t* first_index, int64_t B, int64_t N, int d, int64_t M,
                           int64_t* vertex_counts, cudaStream_t stream) {
  return launch(count_kernel, B, stream, first_index, B, N, d, M, vertex_counts);
}

}  // namespace cuda
}  // namespace lightning_deeplab
