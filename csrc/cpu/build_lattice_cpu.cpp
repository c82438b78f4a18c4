// CPU construction of the permutohedral lattices of a batch (one lattice per image).
//
// Pixels are located in parallel; each image's vertices are then numbered in order of first
// use (pixel-major, as the reference implementation numbers them) by a sequential hash
// insertion, images in parallel. The splat lists (a counting sort) and the blur neighbours
// are built in parallel over vertex ranges. Every step is deterministic.
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
    first_pixel_.reserve(static_cast<size_t>(expected_vertices));
    uses_.reserve(static_cast<size_t>(expected_vertices));
  }

  int32_t size() const { return size_; }
  const int32_t* key(int32_t v) const { return keys_.data() + static_cast<int64_t>(v) * d_; }

  // Index of the vertex with this key (and hash), created if new; records a use by `pixel`.
  int32_t insert(const int32_t* key, uint32_t h, int32_t pixel) {
    if (2 * (static_cast<uint64_t>(size_) + 1) > slots_.size()) grow();
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
      const uint64_t slot = slots_[i];
      if (slot == 0) {
        const int32_t v = size_++;
        keys_.insert(keys_.end(), key, key + d_);
        first_pixel_.push_back(pixel);
        uses_.push_back(1);
        slots_[i] = (static_cast<uint64_t>(h) << 32) | static_cast<uint32_t>(v + 1);
        return v;
      }
      if (static_cast<uint32_t>(slot >> 32) == h) {
        const int32_t v = static_cast<int32_t>(static_cast<uint32_t>(slot)) - 1;
        if (lattice::keys_equal(this->key(v), key, d_)) {
          uses_[v] += 1;
          return v;
        }
      }
    }
  }

  // First pixel that used each vertex, and how many (pixel, vertex) entries use it.
  const std::vector<int32_t>& first_pixel() const { return first_pixel_; }
  const std::vector<int32_t>& uses() const { return uses_; }

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
  std::vector<int32_t> first_pixel_;
  std::vector<int32_t> uses_;
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
  const int64_t E = P * d1;

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
          offset_p[p0 * d1 + e] =
              table.insert(keys.data() + e * d, hashes[e], static_cast<int32_t>(p0 + e / d1));
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
  at::parallel_for(0, P, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int32_t shift = static_cast<int32_t>(base[p / N]);
      for (int r = 0; r < d1; ++r) offset_p[p * d1 + r] += shift;
    }
  });

  // The first pixel that uses each vertex, and the pixel range that can use a vertex range
  // [lo, hi): from first_pixel[lo] (vertices are numbered by first use) to the end of the
  // image that owns hi-1.
  std::vector<int32_t> first_pixel(M);
  for (int64_t b = 0; b < B; ++b) {
    std::copy(tables[b].first_pixel().begin(), tables[b].first_pixel().end(), first_pixel.begin() + base[b]);
  }
  const auto pixel_range = [&](int64_t lo, int64_t hi) {
    const int64_t image = first_pixel[hi - 1] / N;
    return std::make_pair(static_cast<int64_t>(first_pixel[lo]), (image + 1) * N);
  };

  // 3. Splat lists: a counting sort of the (pixel, vertex) entries by vertex (the counts
  // come from the insertion), filled in parallel over vertex ranges; entries are visited in
  // pixel order, so every list comes out sorted by pixel.
  at::Tensor splat_ptr = at::empty({M + 1}, int_opts);
  at::Tensor splat_pixel = empty_pooled({E}, int_opts);
  at::Tensor splat_weight = empty_pooled({E}, features.options());
  int32_t* ptr_p = splat_ptr.data_ptr<int32_t>();
  int32_t* spix_p = splat_pixel.data_ptr<int32_t>();
  float* sw_p = splat_weight.data_ptr<float>();
  ptr_p[0] = 0;
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int32_t>& uses = tables[b].uses();
    for (int64_t v = 0; v < static_cast<int64_t>(uses.size()); ++v) {
      ptr_p[base[b] + v + 1] = ptr_p[base[b] + v] + uses[v];
    }
  }
  at::parallel_for(0, M, 4096, [&](int64_t lo, int64_t hi) {
    std::vector<int32_t> cursor(ptr_p + lo, ptr_p + hi);
    const auto [p_begin, p_end] = pixel_range(lo, hi);
    for (int64_t e = p_begin * d1; e < p_end * d1; ++e) {
      const int64_t v = offset_p[e];
      if (v < lo || v >= hi) continue;
      const int32_t pos = cursor[v - lo]++;
      spix_p[pos] = static_cast<int32_t>(e / d1);
      sw_p[pos] = weight_p[e];
    }
  });

  // 4. Blur neighbours. Only n1 is looked up: n2 of vertex u along axis j is the vertex
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
  return trusted_lattice(std::make_tuple(offsets, weights, neighbors, splat_ptr, splat_pixel,
                                         splat_weight, vertex_counts));
}

}  // namespace

TORCH_LIBRARY_IMPL(lightning_deeplab, CPU, m) { m.impl("build_lattice", &build_lattice_cpu); }

}  // namespace lightning_deeplab
