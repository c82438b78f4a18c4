// CPU Gaussian filtering through a permutohedral lattice: splat (a scatter in pixel order,
// each thread owning a range of vertices: no atomics), d+1 blur passes, slice (optionally
// fused with the mean-field softmax). Every stage is parallel over vertices or pixels (or a
// batch over its images) and sums in a fixed order, so results do not depend on the thread
// count. The CPU filter does not read the CSR splat lists (a CPU lattice has none).
//
// The loops move rows of C values: the rows needed a few iterations ahead are prefetched, rows
// stay unpadded (padding them to whole vectors measured slower: more bytes to move), and each
// row is worked on in vector chunks with no scalar tail (below): at Cityscapes sizes the
// stages were bound by their instructions a row, not by memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/buffer_pool.h"
#include "cpu/simd.h"
#include "lattice.h"
#include "lattice_checks.h"

namespace lightning_deeplab {
namespace {

// Rows are prefetched this many pixels (or vertices) ahead. A blur pass gathers two rows per
// vertex from anywhere in the lattice and does little else, so it needs more of them in
// flight than the pixel stages (d+1 rows per pixel) to cover the memory's latency:
// 2048x1024x19, one thread, blur passes 8 -> 32 ahead: -33% for the appearance lattice.
constexpr int64_t kPrefetchAhead = 8;
constexpr int64_t kBlurPrefetchAhead = 32;

template <typename T>
inline void prefetch_row(const T* row, int64_t length) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = length * static_cast<int64_t>(sizeof(T));
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset);
}

// Rows are C values long (19 for Cityscapes, 21 for VOC), rarely a whole number of vectors.
// The stages below work on chunks of W channels: the whole chunks [0, W), [W, 2W), ... and,
// when W does not divide C, one more chunk [C - W, C) that overlaps the last whole one. Each
// channel is computed by the same operations whichever chunk holds it, so the overlap only
// computes some channels twice, with the same bits; a row then takes ceil(C / W) vector
// operations and no scalar tail (which took as many instructions as the vectors before it).
// The overlapping chunk is computed before the whole chunks are stored and stored after
// them, so a chunk that reads what another writes (the splat's rows, an addend that is the
// output) reads the values from before the row was touched.
template <typename T, int W>
struct Chunk {
  typedef T type __attribute__((vector_size(W * sizeof(T))));
};
template <typename T>
struct Chunk<T, 1> {
  typedef T type;
};
template <typename T, int W>
using ChunkOf = typename Chunk<T, W>::type;

// Values in one 32-byte vector (AVX2's width), the widest chunk these loops use.
template <typename T>
constexpr int kVectorLanes = 32 / static_cast<int>(sizeof(T));

template <typename T, int W>
LD_INLINE ChunkOf<T, W> load_chunk(const T* p) {
  ChunkOf<T, W> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T, int W>
LD_INLINE void store_chunk(T* p, ChunkOf<T, W> v) {
  std::memcpy(p, &v, sizeof v);
}

// Expands CALL(W) with the chunk width W for rows of C values: a 32-byte vector, a 16-byte
// one, or single values (a compile-time constant in each branch).
#define LD_WITH_CHUNK_WIDTH(T, C, CALL)       \
  do {                                        \
    if ((C) >= kVectorLanes<T>) {             \
      CALL(kVectorLanes<T>);                  \
    } else if ((C) >= kVectorLanes<T> / 2) {  \
      CALL(kVectorLanes<T> / 2);              \
    } else {                                  \
      CALL(1);                                \
    }                                         \
  } while (0)

// out = op(c0) for the chunks of a row of C values, in the order described above: `op(c0)`
// computes chunk [c0, c0 + W) (reading only), `put(c0, value)` stores it.
template <int W, typename Op, typename Put>
LD_INLINE void for_chunks(int64_t C, const Op& op, const Put& put) {
  const int64_t whole = C / W * W;
  if (whole == C) {
    for (int64_t c0 = 0; c0 < C; c0 += W) put(c0, op(c0));
    return;
  }
  const auto last = op(C - W);
  for (int64_t c0 = 0; c0 < whole; c0 += W) put(c0, op(c0));
  put(C - W, last);
}

// Which vertices the pixels use, by blocks of pixels: the largest vertex index used by the
// pixels up to the end of each block, and the smallest used from each block's start on.
// Vertices are numbered in order of first use (image after image), so the pixels before p
// use exactly the vertices [0, first_unused(p)), and a thread that owns the vertices
// [lo, hi) finds all their pixels in [first_user(lo), last_user_end(hi)). One pass over the
// offsets per filter call (or per mean-field loop). For tables that break the numbering
// (changed by hand) the ranges are still disjoint and in bounds, the results wrong.
class VertexBounds {
 public:
  VertexBounds(const int32_t* offsets, int64_t P, int d1) : offsets_(offsets), d1_(d1) {
    const int64_t blocks = (P + kBlock - 1) / kBlock;
    running_max_.resize(blocks);
    suffix_min_.resize(blocks);
    at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int32_t* o = offsets + k * kBlock * d1;
        const int64_t n = (std::min(P, (k + 1) * kBlock) - k * kBlock) * d1;
        running_max_[k] = *std::max_element(o, o + n);
        suffix_min_[k] = *std::min_element(o, o + n);
      }
    });
    for (int64_t k = 1; k < blocks; ++k) running_max_[k] = std::max(running_max_[k], running_max_[k - 1]);
    for (int64_t k = blocks - 2; k >= 0; --k) suffix_min_[k] = std::min(suffix_min_[k], suffix_min_[k + 1]);
  }

  // One more than the largest vertex the pixels [0, p) use (0 for none).
  int64_t first_unused(int64_t p) const {
    const int64_t k = p / kBlock;
    int64_t top = k > 0 ? running_max_[k - 1] : -1;
    for (int64_t e = k * kBlock * d1_; e < p * d1_; ++e) top = std::max<int64_t>(top, offsets_[e]);
    return top + 1;
  }

  // A pixel at or before the first one that uses a vertex >= v.
  int64_t first_user(int64_t v) const {
    const auto k = std::lower_bound(running_max_.begin(), running_max_.end(), v) - running_max_.begin();
    return k * kBlock;
  }

  // A pixel after the last one that uses a vertex < v (the end of the block it is in).
  int64_t last_user_end(int64_t v) const {
    const auto k = std::lower_bound(suffix_min_.begin(), suffix_min_.end(), v) - suffix_min_.begin();
    return k * kBlock;
  }

 private:
  static constexpr int64_t kBlock = 1024;
  const int32_t* offsets_;
  int d1_;
  std::vector<int32_t> running_max_, suffix_min_;
};

template <typename T>
struct FilterArgs {
  const T* in;         // [P, C]
  T* out;              // [P, C]
  const T* scale_in;   // [P] or null
  const T* scale_out;  // [P] or null
  const T* addend;     // [P, C] or null
  int64_t P, M, C;
  int d;
  const int32_t* offsets;       // [P, d+1]
  const float* weights;         // [P, d+1]
  const int32_t* neighbors;     // [d+1, M, 2]
  const VertexBounds* bounds;   // of offsets
  bool reverse;
  bool softmax;                 // softmax over C of every output row
  // The vertices [v_begin, v_end) and pixels [p_begin, p_end) this call works on: the
  // whole batch, or one image of it (images own contiguous ranges of both).
  int64_t v_begin, v_end, p_begin, p_end;
  // Row strides of in, out and addend: pixel p's C values start at in + p * in_ld (and so
  // on), so a filter may work on a block of channels of a wider array (the lattice buffers
  // then hold C values a vertex).
  int64_t in_ld, out_ld, addend_ld;
  // When set, the slice adds (or with `subtract`, subtracts) this strided [B, N, C] array
  // instead of `addend` (the mean-field loop's -U or U as the caller holds it): element
  // (p, c) at unary[(p / un) * us0 + (p % un) * us1 + c * us2] for images of `un` pixels
  // (a channels-first [B, C, N] unary viewed as [B, N, C] has us1 = 1, us2 = N). -U + value
  // gives the same bits as a [P, C] copy of -U as addend. Like in, it points at the first
  // channel this filter works on.
  const T* unary = nullptr;
  int64_t un = 1, us0 = 0, us1 = 0, us2 = 0;
  bool subtract = false;
};

// Vertex v lives in row v+1 of a buffer with `stride` (>= C) values per row; row 0 is zero
// and stands for a missing neighbour (index -1).
//
// The splat scatters pixel by pixel, each of the pixels [p0, p1) onto those of its vertices
// in [lo, hi) (rows zeroed first): every vertex sums its pixels in increasing pixel order
// whatever the split, so results do not depend on the thread count.
template <typename T, int W>
LD_INLINE void splat_rows(const FilterArgs<T>& a, T* buf, int64_t stride, int64_t lo, int64_t hi, int64_t p0, int64_t p1) {
  const int d1 = a.d + 1;
  for (int64_t p = p0; p < p1; ++p) {
    if (p + kPrefetchAhead < p1) {
      const int32_t* ahead = a.offsets + (p + kPrefetchAhead) * d1;
      for (int r = 0; r < d1; ++r) prefetch_row(buf + (static_cast<int64_t>(ahead[r]) + 1) * stride, a.C);
    }
    const T* __restrict__ x = a.in + p * a.in_ld;
    const T scale = a.scale_in != nullptr ? a.scale_in[p] : T(1);
    for (int r = 0; r < d1; ++r) {
      const int64_t v = a.offsets[p * d1 + r];
      if (v < lo || v >= hi) continue;
      T w = static_cast<T>(a.weights[p * d1 + r]);
      if (a.scale_in != nullptr) w *= scale;
      T* __restrict__ row = buf + (v + 1) * stride;
      for_chunks<W>(
          a.C, [&](int64_t c) LD_INLINE_LAMBDA { return load_chunk<T, W>(row + c) + w * load_chunk<T, W>(x + c); },
          [&](int64_t c, ChunkOf<T, W> value) LD_INLINE_LAMBDA { store_chunk<T, W>(row + c, value); });
    }
  }
}

template <typename T>
LD_AVX2_DISPATCH void splat_range(const FilterArgs<T>& a, T* buf, int64_t stride, int64_t lo, int64_t hi,
                                  int64_t p0, int64_t p1) {
  std::fill(buf + (lo + 1) * stride, buf + (hi + 1) * stride, T(0));
#define LD_SPLAT_ROWS(W) splat_rows<T, W>(a, buf, stride, lo, hi, p0, p1)
  LD_WITH_CHUNK_WIDTH(T, a.C, LD_SPLAT_ROWS);
#undef LD_SPLAT_ROWS
}

// On one thread a single pass over the pixels; otherwise every thread owns an equal share of
// the vertices and scans the pixels that can use them (VertexBounds).
template <typename T>
void splat(const FilterArgs<T>& a, T* buf, int64_t stride) {
  const int64_t vertices = a.v_end - a.v_begin;
  const int64_t parts = at::in_parallel_region() ? 1 : std::min<int64_t>(at::get_num_threads(), vertices);
  if (parts <= 1) {
    splat_range(a, buf, stride, a.v_begin, a.v_end, a.p_begin, a.p_end);
    return;
  }
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      const int64_t lo = a.v_begin + vertices * part / parts;
      const int64_t hi = a.v_begin + vertices * (part + 1) / parts;
      const int64_t p0 = std::max(a.p_begin, a.bounds->first_user(lo));
      const int64_t p1 = std::min(a.p_end, a.bounds->last_user_end(hi));
      splat_range(a, buf, stride, lo, hi, p0, p1);
    }
  });
}

// One blur pass over the vertices [begin, end) along the axis whose neighbour pairs are nb,
// in chunks of W values.
template <typename T, int W>
LD_INLINE void blur_rows(const int32_t* nb, const T* src, T* dst, int64_t stride, int64_t begin, int64_t end) {
  for (int64_t v = begin; v < end; ++v) {
    if (v + kBlurPrefetchAhead < end) {
      prefetch_row(src + (static_cast<int64_t>(nb[2 * (v + kBlurPrefetchAhead)]) + 1) * stride, stride);
      prefetch_row(src + (static_cast<int64_t>(nb[2 * (v + kBlurPrefetchAhead) + 1]) + 1) * stride, stride);
    }
    const T* __restrict__ n1 = src + (static_cast<int64_t>(nb[2 * v]) + 1) * stride;
    const T* __restrict__ n2 = src + (static_cast<int64_t>(nb[2 * v + 1]) + 1) * stride;
    const T* __restrict__ self = src + (v + 1) * stride;
    T* __restrict__ o = dst + (v + 1) * stride;
    for_chunks<W>(
        stride,
        [&](int64_t c) LD_INLINE_LAMBDA {
          return load_chunk<T, W>(self + c) + T(0.5) * (load_chunk<T, W>(n1 + c) + load_chunk<T, W>(n2 + c));
        },
        [&](int64_t c, ChunkOf<T, W> value) LD_INLINE_LAMBDA { store_chunk<T, W>(o + c, value); });
  }
}

template <typename T>
LD_AVX2_DISPATCH void blur_span(const int32_t* nb, const T* src, T* dst, int64_t stride, int64_t begin, int64_t end) {
#define LD_BLUR_ROWS(W) blur_rows<T, W>(nb, src, dst, stride, begin, end)
  LD_WITH_CHUNK_WIDTH(T, stride, LD_BLUR_ROWS);
#undef LD_BLUR_ROWS
}

template <typename T>
void blur_axis(const FilterArgs<T>& a, int axis, const T* src, T* dst, int64_t stride) {
  const int32_t* nb = a.neighbors + static_cast<int64_t>(axis) * a.M * 2;
  at::parallel_for(a.v_begin, a.v_end, 512, [&](int64_t begin, int64_t end) {
    blur_span(nb, src, dst, stride, begin, end);
  });
}

// In-place softmax of one row (the routine shared with the CUDA filter, lattice.h).
template <typename T>
inline void softmax_row(T* __restrict__ y, int64_t C) {
  lattice::softmax_row(y, C);
}

// Rows per group of the grouped softmax, and the widest row it takes (wider rows go one by
// one).
template <typename T>
constexpr int kSoftmaxLanes = kVectorLanes<T>;
constexpr int64_t kSoftmaxMaxChannels = 256;

// Transposes the 8 x 8 floats of r[0..7] in place: r[k][i] becomes the old r[i][k].
LD_INLINE void transpose_8x8(ChunkOf<float, 8>* r) {
  using V = ChunkOf<float, 8>;
  V t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = __builtin_shufflevector(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[k + 4] = __builtin_shufflevector(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// The softmax's transposes between kSoftmaxLanes rows of y (`ld` apart) and t (t[c * L + i]:
// channel c of row i). With AVX2, float rows of 8 channels or more move in 8 x 8 blocks of
// vectors, the last block overlapping the one before when 8 does not divide C (its channels
// are written twice with the same values); anything else moves value by value (2048x1024x19,
// one thread: -0.1 s a call).
template <typename T>
LD_INLINE void transpose_rows_in(const T* y, int64_t ld, int64_t C, T* t) {
  constexpr int L = kSoftmaxLanes<T>;
  if constexpr (std::is_same_v<T, float>) {
    if (C >= 8 && cpu_has_avx2()) {
      const auto block = [&](int64_t c0) LD_INLINE_LAMBDA {
        ChunkOf<float, 8> r[8];
        for (int i = 0; i < 8; ++i) r[i] = load_chunk<float, 8>(y + i * ld + c0);
        transpose_8x8(r);
        for (int k = 0; k < 8; ++k) store_chunk<float, 8>(t + (c0 + k) * L, r[k]);
      };
      for (int64_t c0 = 0; c0 + 8 <= C; c0 += 8) block(c0);
      if (C % 8 != 0) block(C - 8);
      return;
    }
  }
  for (int i = 0; i < L; ++i) {
    for (int64_t c = 0; c < C; ++c) t[c * L + i] = y[i * ld + c];
  }
}

// transpose_rows_out reads t's channels `t_ld` apart (L for the softmax; the slice also uses it
// to turn L pixels of a channels-first unary into rows).
template <typename T>
LD_INLINE void transpose_rows_out(const T* t, int64_t t_ld, int64_t C, T* y, int64_t ld) {
  constexpr int L = kSoftmaxLanes<T>;
  if constexpr (std::is_same_v<T, float>) {
    if (C >= 8 && cpu_has_avx2()) {
      const auto block = [&](int64_t c0) LD_INLINE_LAMBDA {
        ChunkOf<float, 8> r[8];
        for (int k = 0; k < 8; ++k) r[k] = load_chunk<float, 8>(t + (c0 + k) * t_ld);
        transpose_8x8(r);
        for (int i = 0; i < 8; ++i) store_chunk<float, 8>(y + i * ld + c0, r[i]);
      };
      for (int64_t c0 = 0; c0 + 8 <= C; c0 += 8) block(c0);
      if (C % 8 != 0) block(C - 8);
      return;
    }
  }
  for (int i = 0; i < L; ++i) {
    for (int64_t c = 0; c < C; ++c) y[i * ld + c] = t[c * t_ld + i];
  }
}

// In-place softmax of kSoftmaxLanes rows `ld` apart, one row per vector lane: the rows are
// transposed into a scratch array, and every step of lattice::softmax_row (max, exp, sum in
// channel order, divide) runs once per channel for all lanes. Each row gets exactly
// softmax_row's operations in the same order, so the bits are the same (the CUDA filter runs
// softmax_row), but every exp is in a full vector (a row of 19 left 3 in scalars) and the
// serial max and sum of one row overlap those of the others. Row by row the softmax took
// about as long as the rest of the appearance filter's slice (2048x1024x19, one thread); with
// groups and AVX2 that slice went from 1.58 to 1.28 s a call.
template <typename T>
LD_AVX2_DISPATCH void softmax_lanes(T* y, int64_t ld, int64_t C) {
  constexpr int L = kSoftmaxLanes<T>;
  alignas(64) T t[kSoftmaxMaxChannels * L];  // t[c * L + i]: channel c of row i
  alignas(64) T top[L];
  alignas(64) T sum[L];
  transpose_rows_in<T>(y, ld, C, t);
  for (int i = 0; i < L; ++i) top[i] = t[i];
  for (int64_t c = 1; c < C; ++c) {
    for (int i = 0; i < L; ++i) top[i] = t[c * L + i] > top[i] ? t[c * L + i] : top[i];
  }
  for (int64_t c = 0; c < C; ++c) {
    for (int i = 0; i < L; ++i) t[c * L + i] = lattice::sub_rn(t[c * L + i], top[i]);
  }
  // One flat loop: the compiler vectorises the exp over all C * L values.
  for (int64_t k = 0; k < C * L; ++k) t[k] = lattice::exp_nonpositive(t[k]);
  for (int i = 0; i < L; ++i) sum[i] = T(0);
  for (int64_t c = 0; c < C; ++c) {
    for (int i = 0; i < L; ++i) sum[i] = lattice::add_rn(sum[i], t[c * L + i]);
  }
  for (int64_t c = 0; c < C; ++c) {
    for (int i = 0; i < L; ++i) t[c * L + i] = lattice::div_rn(t[c * L + i], sum[i]);
  }
  transpose_rows_out<T>(t, L, C, y, ld);
}

// In-place softmax of the rows [p_begin, p_end) of y (rows `ld` apart): whole groups of
// lanes, the rest row by row.
template <typename T>
void softmax_span(T* y, int64_t ld, int64_t C, int64_t p_begin, int64_t p_end) {
  constexpr int L = kSoftmaxLanes<T>;
  int64_t p = p_begin;
  if (C <= kSoftmaxMaxChannels) {
    for (; p + L <= p_end; p += L) softmax_lanes(y + p * ld, ld, C);
  }
  for (; p < p_end; ++p) softmax_row(y + p * ld, C);
}

// The sum over one pixel's d+1 vertex rows of chunk [c0, c0 + W), weighted (the slice).
template <typename T, int W>
LD_INLINE ChunkOf<T, W> vertex_sum(const T* const* rows, const T* w, int d1, int64_t c0) {
  ChunkOf<T, W> acc{};
  for (int r = 0; r < d1; ++r) acc = acc + w[r] * load_chunk<T, W>(rows[r] + c0);
  return acc;
}

// W values `stride` apart from u.
template <typename T, int W>
LD_INLINE ChunkOf<T, W> gather_chunk(const T* u, int64_t stride) {
  if constexpr (W == 1) {
    return u[0];
  } else {
    ChunkOf<T, W> v;
    for (int i = 0; i < W; ++i) v[i] = u[i * stride];
    return v;
  }
}

// The slice's output for chunk [c0, c0 + W) from its scaled vertex sum: with no addend, a
// contiguous addend row, or channel c of the caller's unary at u[c * us2] (any strides)
// negated if kSubtract. -u + value is exact negation then the same addition: the same bits as
// with a contiguous row holding -U.
template <typename T>
struct NoAddend {
  template <int W>
  LD_INLINE ChunkOf<T, W> apply(int64_t, ChunkOf<T, W> value) const { return value; }
};
template <typename T>
struct ContiguousAddend {
  const T* addend;
  template <int W>
  LD_INLINE ChunkOf<T, W> apply(int64_t c0, ChunkOf<T, W> value) const { return load_chunk<T, W>(addend + c0) + value; }
};
template <typename T, bool kSubtract>
struct StridedAddend {
  const T* u;
  int64_t us2;
  template <int W>
  LD_INLINE ChunkOf<T, W> apply(int64_t c0, ChunkOf<T, W> value) const {
    const ChunkOf<T, W> g = gather_chunk<T, W>(u + c0 * us2, us2);
    return (kSubtract ? -g : g) + value;
  }
};

// A contiguous row of U, negated: the caller's unary of one pixel as the slice's tiles hold
// it (StridedAddend<T, true> of the same values, the same bits).
template <typename T>
struct NegatedAddend {
  const T* u;
  template <int W>
  LD_INLINE ChunkOf<T, W> apply(int64_t c0, ChunkOf<T, W> value) const { return -load_chunk<T, W>(u + c0) + value; }
};

// One pixel's C outputs, chunk by chunk (for_chunks: an addend that is the output itself is
// read before it is written).
template <typename T, int W, typename Addend>
LD_INLINE void slice_row(const T* const* rows, const T* w, int d1, T scale, const Addend& addend, int64_t C, T* y) {
  for_chunks<W>(
      C, [&](int64_t c0) LD_INLINE_LAMBDA { return addend.template apply<W>(c0, vertex_sum<T, W>(rows, w, d1, c0) * scale); },
      [&](int64_t c0, ChunkOf<T, W> value) LD_INLINE_LAMBDA { store_chunk<T, W>(y + c0, value); });
}

template <typename T, int W>
LD_INLINE void slice_rows(const FilterArgs<T>& a, const T* buf, int64_t stride, int64_t begin, int64_t end) {
  const int d1 = a.d + 1;
  const T alpha = static_cast<T>(lattice::slice_alpha(a.d));
  const T* rows[lattice::kMaxDim + 1];
  T w[lattice::kMaxDim + 1];
  int64_t group = begin;  // the first row not yet through the softmax
  constexpr int kTile = kSoftmaxLanes<T>;
  const bool tiled = a.unary != nullptr && a.us1 == 1 && a.us2 >= kTile && a.C <= kSoftmaxMaxChannels;
  alignas(64) T tile[kTile * kSoftmaxMaxChannels];
  int64_t tile_begin = 0, tile_end = 0;  // the pixels whose unary rows are in `tile`
  for (int64_t p = begin; p < end; ++p) {
    if (p + kPrefetchAhead < end) {
      const int32_t* ahead = a.offsets + (p + kPrefetchAhead) * d1;
      for (int r = 0; r < d1; ++r) prefetch_row(buf + (static_cast<int64_t>(ahead[r]) + 1) * stride, a.C);
    }
    for (int r = 0; r < d1; ++r) {
      rows[r] = buf + (static_cast<int64_t>(a.offsets[p * d1 + r]) + 1) * stride;
      w[r] = static_cast<T>(a.weights[p * d1 + r]) * alpha;
    }
    const T scale = a.scale_out != nullptr ? a.scale_out[p] : T(1);
    T* y = a.out + p * a.out_ld;
    if (a.unary != nullptr) {
      const int64_t b = p / a.un;
      const T* u = a.unary + b * a.us0 + (p - b * a.un) * a.us1;
      // A channels-first unary (the caller's [B, C, H, W]): each channel's next kTile pixels
      // are contiguous, so they are read in vectors and transposed into rows, a tile at a time,
      // instead of C single values a pixel from C places.
      if (tiled && p >= tile_end && p + kTile <= end && (p + kTile - 1) / a.un == b) {
        transpose_rows_out<T>(u, a.us2, a.C, tile, a.C);
        tile_begin = p;
        tile_end = p + kTile;
      }
      if (p < tile_end) {
        const T* row = tile + (p - tile_begin) * a.C;
        if (a.subtract) {
          slice_row<T, W>(rows, w, d1, scale, NegatedAddend<T>{row}, a.C, y);
        } else {
          slice_row<T, W>(rows, w, d1, scale, ContiguousAddend<T>{row}, a.C, y);
        }
      } else if (a.subtract) {
        slice_row<T, W>(rows, w, d1, scale, StridedAddend<T, true>{u, a.us2}, a.C, y);
      } else if (a.us2 == 1) {  // contiguous channels: the plain slice, vector loads
        slice_row<T, W>(rows, w, d1, scale, ContiguousAddend<T>{u}, a.C, y);
      } else {
        slice_row<T, W>(rows, w, d1, scale, StridedAddend<T, false>{u, a.us2}, a.C, y);
      }
    } else if (a.addend != nullptr) {
      slice_row<T, W>(rows, w, d1, scale, ContiguousAddend<T>{a.addend + p * a.addend_ld}, a.C, y);
    } else {
      slice_row<T, W>(rows, w, d1, scale, NoAddend<T>{}, a.C, y);
    }
    // A group of rows is in the cache while it is fresh: softmax it as soon as it is whole.
    if (a.softmax && (p + 1 - group == kSoftmaxLanes<T> || p + 1 == end)) {
      softmax_span(a.out, a.out_ld, a.C, group, p + 1);
      group = p + 1;
    }
  }
}

template <typename T>
LD_AVX2_DISPATCH void slice_span(const FilterArgs<T>& a, const T* buf, int64_t stride, int64_t begin, int64_t end) {
#define LD_SLICE_ROWS(W) slice_rows<T, W>(a, buf, stride, begin, end)
  LD_WITH_CHUNK_WIDTH(T, a.C, LD_SLICE_ROWS);
#undef LD_SLICE_ROWS
}

template <typename T>
void slice(const FilterArgs<T>& a, const T* buf, int64_t stride) {
  at::parallel_for(a.p_begin, a.p_end, 256, [&](int64_t begin, int64_t end) { slice_span(a, buf, stride, begin, end); });
}

template <typename T>
void filter_cpu_kernel(const FilterArgs<T>& a, T* buf_a, T* buf_b, int64_t stride) {
  splat(a, buf_a, stride);
  T* src = buf_a;
  T* dst = buf_b;
  for (int step = 0; step <= a.d; ++step) {
    blur_axis(a, a.reverse ? a.d - step : step, src, dst, stride);
    std::swap(src, dst);
  }
  slice(a, src, stride);
}

// `a` narrowed to image b of a batch of B: its vertex and pixel ranges.
template <typename T>
FilterArgs<T> image_args(const FilterArgs<T>& a, int64_t B, int64_t b) {
  const int64_t N = a.P / B;
  FilterArgs<T> image = a;
  // Images own increasing ranges of vertices, numbered in order of first use.
  image.v_begin = a.bounds->first_unused(b * N);
  image.v_end = b + 1 < B ? a.bounds->first_unused((b + 1) * N) : a.M;
  image.p_begin = b * N;
  image.p_end = (b + 1) * N;
  return image;
}

// Whether a batch is filtered one image per thread (each thread then runs every pass of
// its images alone: no barrier between passes, and a working set of one image) rather
// than every pass in parallel over the batch's vertices: when the images share the
// threads out evenly, or are many more than the threads.
bool parallel_over_images(int64_t B) {
  const int64_t threads = at::get_num_threads();
  return threads > 1 && B >= threads && (B % threads == 0 || B >= 4 * threads);
}

// The filter of `a`, whole batch at once or image by image.
template <typename T>
void filter_batch(const FilterArgs<T>& a, int64_t B, T* buf_a, T* buf_b, int64_t stride) {
  // Row 0 of both buffers reads as a missing neighbour.
  std::fill(buf_a, buf_a + stride, T(0));
  std::fill(buf_b, buf_b + stride, T(0));
  if (!parallel_over_images(B)) {
    filter_cpu_kernel<T>(a, buf_a, buf_b, stride);
    return;
  }
  // The passes inside run on their caller's thread (at::parallel_for does not nest), and
  // compute every vertex and pixel exactly as the batch-wide passes do.
  at::parallel_for(0, B, 1, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) filter_cpu_kernel<T>(image_args(a, B, b), buf_a, buf_b, stride);
  });
}

// The kernel arguments of `in` (values, addend, scales, lattice tables and their vertex
// bounds) writing into `out`, over the whole batch.
template <typename T>
FilterArgs<T> filter_args(const FilterInputs& in, const VertexBounds& bounds, T* out, bool reverse, bool softmax) {
  return FilterArgs<T>{in.values.data_ptr<T>(),
                       out,
                       in.scale_in ? in.scale_in->data_ptr<T>() : nullptr,
                       in.scale_out ? in.scale_out->data_ptr<T>() : nullptr,
                       in.addend ? in.addend->data_ptr<T>() : nullptr,
                       in.P,
                       in.M,
                       in.C,
                       in.d,
                       in.offsets.data_ptr<int32_t>(),
                       in.weights.data_ptr<float>(),
                       in.neighbors.data_ptr<int32_t>(),
                       &bounds,
                       reverse,
                       softmax,
                       0,
                       in.M,
                       0,
                       in.P,
                       in.C,
                       in.C,
                       in.C};
}

// Runs the filter of `in` into `out` ([P, C], contiguous).
void run_filter(const FilterInputs& in, at::Tensor& out, bool reverse, bool softmax) {
  const int64_t P = in.P, C = in.C, M = in.M;
  if (P == 0 || C == 0) return;
  AT_DISPATCH_FLOATING_TYPES(in.values.scalar_type(), "lattice_filter_cpu", [&] {
    using T = scalar_t;
    const int64_t stride = C;  // values per lattice row
    at::Tensor buf_a = empty_pooled({M + 1, stride}, in.values.options());
    at::Tensor buf_b = empty_pooled({M + 1, stride}, in.values.options());
    const VertexBounds bounds(in.offsets.data_ptr<int32_t>(), P, in.d + 1);
    const FilterArgs<T> args = filter_args<T>(in, bounds, out.data_ptr<T>(), reverse, softmax);
    filter_batch<T>(args, in.values.size(0), buf_a.data_ptr<T>(), buf_b.data_ptr<T>(), stride);
  });
}

at::Tensor lattice_filter_cpu(const at::Tensor& values_arg, const at::Tensor& offsets_arg,
                              const at::Tensor& weights_arg, const at::Tensor& neighbors_arg,
                              const at::Tensor& splat_ptr_arg, const at::Tensor& splat_pixel_arg,
                              const at::Tensor& splat_weight_arg,
                              const std::optional<at::Tensor>& scale_in_arg,
                              const std::optional<at::Tensor>& scale_out_arg,
                              const std::optional<at::Tensor>& addend_arg, bool reverse,
                              bool softmax) {
  const FilterInputs in = prepare_filter_inputs(values_arg, offsets_arg, weights_arg, neighbors_arg,
                                               splat_ptr_arg, splat_pixel_arg, splat_weight_arg,
                                               scale_in_arg, scale_out_arg, addend_arg);
  at::Tensor out = empty_pooled(in.values.sizes(), in.values.options());
  run_filter(in, out, reverse, softmax);
  return out;
}

// In-place softmax of the rows [p_begin, p_end) of y [P, C].
template <typename T>
void softmax_rows(T* y, int64_t C, int64_t p_begin, int64_t p_end) {
  at::parallel_for(p_begin, p_end, 256, [&](int64_t begin, int64_t end) {
    softmax_span(y, C, C, begin, end);
  });
}

// Lattice buffers above this size are split into channel blocks: at 4000x3000x21 a buffer of
// all channels is 1.2 GB, and the loop needs two (and the partial sums a block as wide).
// 2048x1024 with 21 classes (194 MiB) still runs in one block. The environment variable
// LIGHTNING_DEEPLAB_CRF_BUFFER_BYTES sets another limit (the tests use it on small images).
constexpr int64_t kMaxLatticeBufferBytes = int64_t{200} << 20;

int64_t lattice_buffer_limit() {
  const char* text = std::getenv("LIGHTNING_DEEPLAB_CRF_BUFFER_BYTES");
  if (text == nullptr || *text == '\0') return kMaxLatticeBufferBytes;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  TORCH_CHECK_VALUE(*end == '\0' && value > 0,
                    "LIGHTNING_DEEPLAB_CRF_BUFFER_BYTES must be a positive number of bytes, got '", text, "'");
  return value;
}

// Channels per block so that a lattice buffer of `rows` rows stays within the limit (all C
// when it fits, at least 1).
int64_t channel_block(int64_t rows, int64_t C, int64_t element_bytes) {
  const int64_t limit = lattice_buffer_limit();
  int64_t blocks = 1;
  while (blocks < C && rows * ((C + blocks - 1) / blocks) * element_bytes > limit) ++blocks;
  return (C + blocks - 1) / blocks;
}

// The Potts mean-field loop over the vertex and pixel ranges set in `kernels`: one image on
// the calling thread, or the whole batch with every pass in parallel. Every iteration, block
// of `block` channels by block, the first kernel's filter adds onto -U (its unary fields)
// into `partial` ([P, block]), every later one adds onto that sum in place, and the last
// writes the sum into q's block (having splatted it already) and applies the softmax. So q
// is updated in place and the loop holds one [P, C] array, q, besides the partial sums.
// With `block` < C the lattice buffers hold `block` channels and the softmax follows as a
// pass of its own: every channel is computed exactly as with all channels at once.
template <typename T>
void potts_loop(const std::vector<FilterArgs<T>>& kernels, const std::vector<T*>& buffers,
                T* q, T* partial, int64_t iterations, int64_t block) {
  const int64_t C = kernels[0].C;
  const size_t K = kernels.size();
  for (int64_t it = 0; it < iterations; ++it) {
    for (int64_t c0 = 0; c0 < C; c0 += block) {
      for (size_t k = 0; k < K; ++k) {
        FilterArgs<T> a = kernels[k];
        a.C = std::min(block, C - c0);
        a.in = q + c0;
        if (k == 0) {
          a.unary += c0 * a.us2;
        } else {
          a.unary = nullptr;
          a.addend = partial;  // the slice reads a row, then writes it
          a.addend_ld = block;
        }
        const bool last = k + 1 == K;
        a.out = last ? q + c0 : partial;
        a.out_ld = last ? C : block;
        a.softmax = last && a.C == C;
        filter_cpu_kernel<T>(a, buffers[2 * k], buffers[2 * k + 1], a.C);
      }
    }
    if (block < C) softmax_rows(q, C, kernels[0].p_begin, kernels[0].p_end);
  }
}

// q <- the Potts mean-field loop from q = softmax(-U): every iteration
//   q <- softmax(-U + sum_k scale_out_k * K_k(scale_in_k * q)),
// the same operations in the same order as lattice_filter with -U as addend for the first
// kernel and the running sum as addend (in place) for every later one. `unary` [B, N, C] may
// have any strides; it holds -U, or U with `subtract_unary` (a view of the caller's
// [B, C, H, W] unary: no copy of -U is made). When the images
// share the threads out (parallel_over_images) or there is one thread, each image runs its
// whole loop on one thread: no barrier between the passes and filters of an iteration (a
// batch then uses the cores as well as one process per core, measured); otherwise the
// batch runs the loop at once, every pass in parallel over its vertices.
void potts_mean_field_cpu(at::Tensor& q, const at::Tensor& unary, at::TensorList offsets,
                          at::TensorList weights, at::TensorList neighbors,
                          at::TensorList splat_ptr, at::TensorList splat_pixel,
                          at::TensorList splat_weight,
                          const c10::List<std::optional<at::Tensor>>& scale_in,
                          const c10::List<std::optional<at::Tensor>>& scale_out,
                          int64_t iterations, bool subtract_unary) {
  const size_t K = offsets.size();
  TORCH_CHECK_VALUE(K >= 1, "potts_mean_field_: at least one kernel is needed");
  TORCH_CHECK_VALUE(weights.size() == K && neighbors.size() == K && splat_ptr.size() == K &&
                        splat_pixel.size() == K && splat_weight.size() == K &&
                        scale_in.size() == K && scale_out.size() == K,
                    "potts_mean_field_: every lattice table and scale list must have one entry "
                    "per kernel (", K, ")");
  TORCH_CHECK_VALUE(iterations >= 0, "potts_mean_field_: iterations must be >= 0, got ", iterations);
  TORCH_CHECK_VALUE(q.is_contiguous(), "potts_mean_field_: q must be contiguous");
  at::assert_no_overlap(q, unary);
  std::vector<FilterInputs> inputs;
  for (size_t k = 0; k < K; ++k) {
    inputs.push_back(prepare_filter_inputs(q, offsets[k], weights[k], neighbors[k], splat_ptr[k],
                                           splat_pixel[k], splat_weight[k], scale_in.get(k),
                                           scale_out.get(k), std::nullopt));
  }
  check_filter_extras(q, std::nullopt, std::nullopt, unary);  // shape, dtype, device; any strides
  const int64_t B = q.size(0), P = inputs[0].P, C = inputs[0].C;
  if (iterations == 0 || P == 0 || C == 0) return;
  const bool one_thread = at::get_num_threads() == 1;
  const bool by_image = one_thread || parallel_over_images(B);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "potts_mean_field_cpu", [&] {
    using T = scalar_t;
    std::vector<VertexBounds> bounds;
    bounds.reserve(K);  // the kernels point into it
    std::vector<FilterArgs<T>> kernels;
    int64_t largest = 0;
    for (const FilterInputs& in : inputs) {
      bounds.emplace_back(in.offsets.data_ptr<int32_t>(), P, in.d + 1);
      kernels.push_back(filter_args<T>(in, bounds.back(), q.data_ptr<T>(), false, false));
      largest = std::max(largest, in.M);
    }
    // Two lattice buffers per kernel when images run in parallel (one thread may filter an
    // image with one kernel while another uses the other); otherwise all share two.
    const bool shared = !by_image || one_thread;
    const int64_t block = channel_block(largest + 1, C, static_cast<int64_t>(sizeof(T)));
    // The sums of the kernels before the last, one channel block of them at a time.
    const at::Tensor partial = K > 1 ? empty_pooled({P, block}, q.options()) : at::Tensor();
    T* partial_p = K > 1 ? partial.data_ptr<T>() : nullptr;
    std::vector<at::Tensor> held;
    std::vector<T*> buffers(2 * K);
    for (size_t i = 0; i < buffers.size(); ++i) {
      if (shared && i >= 2) {
        buffers[i] = buffers[i % 2];
        continue;
      }
      const int64_t rows = (shared ? largest : inputs[i / 2].M) + 1;
      held.push_back(empty_pooled({rows, block}, q.options()));
      buffers[i] = held.back().data_ptr<T>();
      std::fill(buffers[i], buffers[i] + block, T(0));  // row 0 reads as a missing neighbour
    }
    kernels[0].unary = unary.data_ptr<T>();
    kernels[0].un = q.size(1);
    kernels[0].us0 = unary.stride(0);
    kernels[0].us1 = unary.stride(1);
    kernels[0].us2 = unary.stride(2);
    kernels[0].subtract = subtract_unary;
    T* q_p = q.data_ptr<T>();
    if (!by_image) {
      potts_loop(kernels, buffers, q_p, partial_p, iterations, block);
      return;
    }
    at::parallel_for(0, B, 1, [&](int64_t b_begin, int64_t b_end) {
      std::vector<FilterArgs<T>> image(K);
      for (int64_t b = b_begin; b < b_end; ++b) {
        for (size_t k = 0; k < K; ++k) image[k] = image_args(kernels[k], B, b);
        potts_loop(image, buffers, q_p, partial_p, iterations, block);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lightning_deeplab, CPU, m) {
  m.impl("lattice_filter", &lattice_filter_cpu);
  m.impl("potts_mean_field_", &potts_mean_field_cpu);
}

}  // namespace lightning_deeplab
