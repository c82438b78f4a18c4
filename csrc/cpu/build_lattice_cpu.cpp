// CPU construction of the permutohedral lattices of a batch (one lattice per image).
//
// Pixels are located in parallel; each image's vertices are then numbered in order of first
// use (pixel-major, as the reference implementation numbers them) by a sequential hash
// insertion, images in parallel. The blur neighbours are found in parallel over vertex
// ranges. Every step is deterministic. A CPU lattice has no splat lists: the CPU splat
// scatters in pixel order (cpu/lattice_filter_cpu.cpp), so the lists (8 bytes per pixel and
// vertex, 0.8 GB at 4000x3000) would only take memory; the CUDA build makes them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <tuple>
#include <vector>

#include "cpu/buffer_pool.h"
#include "lattice.h"
#include "lattice_checks.h"

namespace lightning_deeplab {
namespace {

using lattice::kMaxDim;

// Open-addressing (linear probing) table from vertex key to vertex index. A slot packs the
// key's 32-bit hash (high half) and index+1 (low half; 0 marks an empty slot), so most
// probes are settled without touching the key array.
class VertexTable {
 public:
  VertexTable(int d, int64_t expected_vertices) : d_(d) {
    uint64_t capacity = 64;
    while (capacity < 2 * static_cast<uint64_t>(expected_vertices)) capacity *= 2;
    slots_.assign(capacity, 0);
    mask_ = capacity - 1;
    keys_.reserve(static_cast<size_t>(expected_vertices) * d);
  }

  int32_t size() const { return size_; }
  const int32_t* key(int32_t v) const { return keys_.data() + static_cast<int64_t>(v) * d_; }

  // Index of the vertex with this key (and hash), created if new.
  int32_t insert(const int32_t* key, uint32_t h) {
    if (2 * (static_cast<uint64_t>(size_) + 1) > slots_.size()) grow();
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
      const uint64_t slot = slots_[i];
      if (slot == 0) {
        const int32_t v = size_++;
        keys_.insert(keys_.end(), key, key + d_);
        slots_[i] = (static_cast<uint64_t>(h) << 32) | static_cast<uint32_t>(v + 1);
        return v;
      }
      if (static_cast<uint32_t>(slot >> 32) == h) {
        const int32_t v = static_cast<int32_t>(static_cast<uint32_t>(slot)) - 1;
        if (lattice::keys_equal(this->key(v), key, d_)) return v;
      }
    }
  }

  void prefetch(uint32_t h) const { __builtin_prefetch(slots_.data() + (h & mask_)); }

  // Index of the vertex with this key, or -1.
  int32_t find(const int32_t* key) const { return find(key, lattice::hash_key(key, d_, 0)); }

  int32_t find(const int32_t* key, uint32_t h) const {
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
      const uint64_t slot = slots_[i];
      if (slot == 0) return -1;
      if (static_cast<uint32_t>(slot >> 32) == h) {
        const int32_t v = static_cast<int32_t>(static_cast<uint32_t>(slot)) - 1;
        if (lattice::keys_equal(this->key(v), key, d_)) return v;
      }
    }
  }

 private:
  void grow() {
    std::vector<uint64_t> old;
    old.swap(slots_);
    slots_.assign(old.size() * 2, 0);
    mask_ = slots_.size() - 1;
    for (const uint64_t slot : old) {
      if (slot == 0) continue;
      uint64_t i = (slot >> 32) & mask_;
      while (slots_[i] != 0) i = (i + 1) & mask_;
      slots_[i] = slot;
    }
  }

  int d_;
  int32_t size_ = 0;
  uint64_t mask_ = 0;
  std::vector<uint64_t> slots_;
  std::vector<int32_t> keys_;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
build_lattice_cpu(const at::Tensor& features_arg) {
  check_features(features_arg);
  const at::Tensor features = features_arg.contiguous();
  const int64_t B = features.size(0);
  const int64_t N = features.size(1);
  const int d = static_cast<int>(features.size(2));
  const int d1 = d + 1;
  const int64_t P = B * N;

  const auto int_opts = features.options().dtype(at::kInt);
  at::Tensor offsets = empty_pooled({B, N, d1}, int_opts);
  at::Tensor weights = empty_pooled({B, N, d1}, features.options());
  // Temporaries of the build: from the ordinary allocator, so they go back to the system
  // when it ends instead of sitting in the pool, where no later request fits them.
  at::Tensor rem0 = at::empty({P, d1}, int_opts);
  at::Tensor rank = at::empty({P, d1}, int_opts);

  const float* feat = features.data_ptr<float>();
  int32_t* rem0_p = rem0.data_ptr<int32_t>();
  int32_t* rank_p = rank.data_ptr<int32_t>();
  float* weight_p = weights.data_ptr<float>();
  int32_t* offset_p = offsets.data_ptr<int32_t>();

  // 1. Locate every pixel's simplex.
  const lattice::ElevationScale scale = lattice::elevation_scale(d);
  std::atomic<bool> out_of_range{false};
  at::parallel_for(0, P, 2048, [&](int64_t begin, int64_t end) {
    bool bad = false;
    for (int64_t p = begin; p < end; ++p) {
      bad |= !lattice::locate_simplex(feat + p * d, d, scale, rem0_p + p * d1, rank_p + p * d1,
                                      weight_p + p * d1);
    }
    if (bad) out_of_range = true;
  });
  check_in_lattice_range(!out_of_range.load());

  // 2. Number each image's vertices in order of first use. Keys and hashes of a block of
  // pixels are computed (and their table slots prefetched) before the block is inserted.
  std::vector<VertexTable> tables;
  tables.reserve(B);
  for (int64_t b = 0; b < B; ++b) tables.emplace_back(d, N);
  at::parallel_for(0, B, 1, [&](int64_t b_begin, int64_t b_end) {
    constexpr int64_t kBlock = 8;
    std::vector<int32_t> keys(kBlock * d1 * d);
    std::vector<uint32_t> hashes(kBlock * d1);
    for (int64_t b = b_begin; b < b_end; ++b) {
      VertexTable& table = tables[b];
      for (int64_t p0 = b * N; p0 < (b + 1) * N; p0 += kBlock) {
        const int64_t p1 = std::min(p0 + kBlock, (b + 1) * N);
        for (int64_t p = p0; p < p1; ++p) {
          for (int r = 0; r < d1; ++r) {
            const int64_t e = (p - p0) * d1 + r;
            lattice::vertex_key(rem0_p + p * d1, rank_p + p * d1, d, r, keys.data() + e * d);
            hashes[e] = lattice::hash_key(keys.data() + e * d, d, 0);
            table.prefetch(hashes[e]);
          }
        }
        for (int64_t e = 0; e < (p1 - p0) * d1; ++e) {
          offset_p[p0 * d1 + e] = table.insert(keys.data() + e * d, hashes[e]);
        }
      }
    }
  });
  std::vector<int64_t> base(B + 1, 0);
  at::Tensor vertex_counts = at::empty({B}, features.options().dtype(at::kLong));
  for (int64_t b = 0; b < B; ++b) {
    base[b + 1] = base[b] + tables[b].size();
    vertex_counts.data_ptr<int64_t>()[b] = tables[b].size();
  }
  const int64_t M = base[B];
  if (B > 1) {
    at::parallel_for(0, P, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int32_t shift = static_cast<int32_t>(base[p / N]);
        for (int r = 0; r < d1; ++r) offset_p[p * d1 + r] += shift;
      }
    });
  }

  // 3. Blur neighbours. Only n1 is looked up: n2 of vertex u along axis j is the vertex
  // whose n1 is u (the two shifts are inverses), so it is written from that side.
  at::Tensor neighbors = empty_pooled({d1, M, 2}, int_opts).fill_(-1);
  int32_t* nb_p = neighbors.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    const VertexTable& table = tables[b];
    at::parallel_for(0, table.size(), 1024, [&](int64_t begin, int64_t end) {
      // Blocks of vertices: all their neighbour keys are hashed and the table slots
      // prefetched before the lookups, so the cache misses overlap.
      constexpr int64_t kBlock = 8;
      std::vector<int32_t> keys(kBlock * d1 * d);
      std::vector<uint32_t> hashes(kBlock * d1);
      int32_t n2[kMaxDim];
      for (int64_t v0 = begin; v0 < end; v0 += kBlock) {
        const int64_t v1 = std::min(v0 + kBlock, end);
        for (int64_t v = v0; v < v1; ++v) {
          for (int j = 0; j < d1; ++j) {
            int32_t* n1 = keys.data() + ((v - v0) * d1 + j) * d;
            lattice::neighbour_keys(table.key(static_cast<int32_t>(v)), d, j, n1, n2);
            hashes[(v - v0) * d1 + j] = lattice::hash_key(n1, d, 0);
            table.prefetch(hashes[(v - v0) * d1 + j]);
          }
        }
        for (int64_t v = v0; v < v1; ++v) {
          for (int j = 0; j < d1; ++j) {
            const int64_t q = (v - v0) * d1 + j;
            const int32_t u = table.find(keys.data() + q * d, hashes[q]);
            if (u < 0) continue;
            int32_t* axis = nb_p + static_cast<int64_t>(j) * M * 2;
            axis[(base[b] + v) * 2] = static_cast<int32_t>(base[b] + u);
            axis[(base[b] + u) * 2 + 1] = static_cast<int32_t>(base[b] + v);
          }
        }
      }
    });
  }
  // No splat lists (see the top of this file): empty tables in their places.
  return trusted_lattice(std::make_tuple(offsets, weights, neighbors, at::empty({0}, int_opts),
                                         at::empty({0}, int_opts), at::empty({0}, features.options()),
                                         vertex_counts));
}

}  // namespace

TORCH_LIBRARY_IMPL(lightning_deeplab, CPU, m) { m.impl("build_lattice", &build_lattice_cpu); }

}  // namespace lightning_deeplab
