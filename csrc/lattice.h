// Permutohedral-lattice arithmetic shared by the CPU and CUDA kernels.
//
// Every function here is compiled by g++ as a plain inline function and by nvcc as a
// __host__ __device__ one, so the CPU tests exercise exactly the arithmetic the GPU runs.
// The float operations follow Kraehenbuehl's dense-CRF code (and the order of its
// operations) so the lattice matches pydensecrf; the *_rn helpers stop nvcc from fusing
// multiply-adds, which would make the GPU lattice differ from the CPU one in the last bit
// (the C++ side builds with -ffp-contract=off). The filters of both back ends use them too,
// and compute one softmax (softmax_row), so CPU and CUDA results are bitwise equal.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LD_HOST_DEVICE inline
#endif

namespace lightning_deeplab {
namespace lattice {

// Largest feature dimension d the kernels accept (sizes the per-thread scratch arrays).
constexpr int kMaxDim = 16;

// Elevated coordinates must stay below this magnitude: float32 then still resolves a
// position to 1/32 of a lattice step and keys fit easily in int32 (pydensecrf stores them
// as int16 and silently wraps above 32767). Mirrored in lightning_deeplab/crf/checks.py.
constexpr float kMaxElevated = 262144.0f;  // 2^18

LD_HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

LD_HOST_DEVICE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

LD_HOST_DEVICE float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

LD_HOST_DEVICE float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// The same operations in double (the filter also runs in float64).
LD_HOST_DEVICE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

LD_HOST_DEVICE double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

LD_HOST_DEVICE double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

LD_HOST_DEVICE double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

LD_HOST_DEVICE int32_t float_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(v);
#else
  return std::bit_cast<int32_t>(v);
#endif
}

LD_HOST_DEVICE float bits_float(int32_t v) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(v);
#else
  return std::bit_cast<float>(v);
#endif
}

// Round to nearest, ties to even, for |v| < 2^22 (the lattice keeps |v| < 2^18): adding and
// subtracting 1.5 * 2^23 leaves no fraction bits, and the add rounds in the default mode.
// Bit-identical to rintf, without a libm call on the host.
LD_HOST_DEVICE float round_half_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  // Without -ffast-math the compiler may not fold (v + k) - k into v.
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23
  return (v + kShift) - kShift;
#endif
}

// exp(x) for x <= 0 (Cephes' single-precision polynomial, ~1 ulp), written without branches
// so the compiler vectorises a row of it on the CPU (the clamp is a bit-mask select: a plain
// ?: on floats is not if-converted without -ffinite-math-only). Every operation is rounded
// separately, so the CPU and the GPU return the same bits.
LD_HOST_DEVICE float exp_nonpositive(float x) {
  constexpr float kLowest = -87.0f;  // exp(-87) ~ 1.6e-38 is still a normal float
  const int32_t below = -static_cast<int32_t>(x < kLowest);
  x = bits_float((float_bits(kLowest) & below) | (float_bits(x) & ~below));
  const float n = round_half_even(mul_rn(x, 1.44269504088896341f));
  const float r = sub_rn(sub_rn(x, mul_rn(n, 0.693359375f)), mul_rn(n, -2.12194440e-4f));
  float p = 1.9875691500e-4f;
  p = add_rn(mul_rn(p, r), 1.3981999507e-3f);
  p = add_rn(mul_rn(p, r), 8.3334519073e-3f);
  p = add_rn(mul_rn(p, r), 4.1665795894e-2f);
  p = add_rn(mul_rn(p, r), 1.6666665459e-1f);
  p = add_rn(mul_rn(p, r), 5.0000001201e-1f);
  p = add_rn(add_rn(mul_rn(mul_rn(p, r), r), r), 1.0f);
  // 2^n for n in [-126, 0], built from its exponent bits.
  return mul_rn(p, bits_float((static_cast<int32_t>(n) + 127) << 23));
}

// In float64 each back end calls its own libm exp (glibc's and CUDA's may differ in the
// last bit): float64 softmax outputs agree to about 1 ulp, not bitwise.
LD_HOST_DEVICE double exp_nonpositive(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// In-place softmax of one row of C values: max-subtracted exp, divided by the sum (as the
// reference), summed in channel order. The softmax of the CUDA filter. The CPU filter computes
// it on groups of rows (softmax_lanes in cpu/lattice_filter_cpu.cpp): these operations, in
// this order, for every row of a group, so the same bits (the CUDA emulation tests compare
// the two). A change here must be made there too.
template <typename T>
LD_HOST_DEVICE void softmax_row(T* __restrict__ y, int64_t C) {
  T top = y[0];
  for (int64_t c = 1; c < C; ++c) top = y[c] > top ? y[c] : top;
  for (int64_t c = 0; c < C; ++c) y[c] = exp_nonpositive(sub_rn(y[c], top));
  T sum = T(0);
  for (int64_t c = 0; c < C; ++c) sum = add_rn(sum, y[c]);
  for (int64_t c = 0; c < C; ++c) y[c] = div_rn(y[c], sum);
}

// Diagonal of the elevation matrix: scale[i] = sqrt(2/3) (d+1) / sqrt((i+1)(i+2)), float32,
// computed in double and rounded once (as the reference does).
struct ElevationScale {
  float s[kMaxDim];
};

inline ElevationScale elevation_scale(int d) {
  ElevationScale scale{};
  const float inv_std = static_cast<float>(std::sqrt(2.0 / 3.0) * (d + 1));
  for (int i = 0; i < d && i < kMaxDim; ++i) {
    scale.s[i] = static_cast<float>(1.0 / std::sqrt(static_cast<double>((i + 2) * (i + 1))) *
                                    static_cast<double>(inv_std));
  }
  return scale;
}

// Blur scaling constant of the slice: 1 / (1 + 2^-d).
inline float slice_alpha(int d) { return 1.0f / (1.0f + std::pow(2.0f, static_cast<float>(-d))); }

// Locates feature vector f (length d) in the lattice: the remainder-0 point rem0[0..d], the
// rank of every coordinate and the barycentric weight bary[0..d] of the d+1 enclosing
// vertices. Returns false (and zeroes the outputs) when an elevated coordinate is not
// finite or exceeds kMaxElevated.
LD_HOST_DEVICE bool locate_simplex(const float* f, int d, const ElevationScale& scale,
                                   int32_t* rem0, int32_t* rank, float* bary) {
  float elevated[kMaxDim + 1];
  float sm = 0.0f;
  for (int j = d; j > 0; --j) {
    const float cf = mul_rn(f[j - 1], scale.s[j - 1]);
    elevated[j] = sub_rn(sm, mul_rn(static_cast<float>(j), cf));
    sm = add_rn(sm, cf);
  }
  elevated[0] = sm;

  bool in_range = true;
  for (int i = 0; i <= d; ++i) {
    // Written so that NaN fails the test.
    if (!(elevated[i] <= kMaxElevated && elevated[i] >= -kMaxElevated)) in_range = false;
  }
  if (!in_range) {
    for (int i = 0; i <= d; ++i) {
      rem0[i] = 0;
      rank[i] = i;
      bary[i] = 0.0f;
    }
    return false;
  }

  // Nearest remainder-0 point: round each coordinate to a multiple of d+1.
  const float down = 1.0f / static_cast<float>(d + 1);
  const float up = static_cast<float>(d + 1);
  float rem0f[kMaxDim + 1];
  float sum = 0.0f;
  for (int i = 0; i <= d; ++i) {
    const float v = round_half_even(mul_rn(down, elevated[i]));
    rem0f[i] = mul_rn(v, up);
    sum = add_rn(sum, v);
  }

  // Rank of each coordinate's remainder (a smaller remainder ranks higher; ties go to j).
  for (int i = 0; i <= d; ++i) rank[i] = 0;
  for (int i = 0; i < d; ++i) {
    const float di = sub_rn(elevated[i], rem0f[i]);
    for (int j = i + 1; j <= d; ++j) {
      if (di < sub_rn(elevated[j], rem0f[j])) {
        rank[i] += 1;
      } else {
        rank[j] += 1;
      }
    }
  }

  // Bring the point back onto the plane sum(x) = 0.
  const int shift = static_cast<int>(sum);
  for (int i = 0; i <= d; ++i) {
    rank[i] += shift;
    if (rank[i] < 0) {
      rank[i] += d + 1;
      rem0f[i] = add_rn(rem0f[i], up);
    } else if (rank[i] > d) {
      rank[i] -= d + 1;
      rem0f[i] = sub_rn(rem0f[i], up);
    }
  }

  // Barycentric coordinates.
  float b[kMaxDim + 2];
  for (int i = 0; i <= d + 1; ++i) b[i] = 0.0f;
  for (int i = 0; i <= d; ++i) {
    const float v = mul_rn(sub_rn(elevated[i], rem0f[i]), down);
    b[d - rank[i]] = add_rn(b[d - rank[i]], v);
    b[d - rank[i] + 1] = sub_rn(b[d - rank[i] + 1], v);
  }
  b[0] = add_rn(b[0], add_rn(1.0f, b[d + 1]));

  for (int i = 0; i <= d; ++i) {
    rem0[i] = static_cast<int32_t>(rem0f[i]);
    bary[i] = b[i];
  }
  return true;
}

// Coordinate i (i < d) of the key of enclosing vertex r (r = 0..d) of a located point.
LD_HOST_DEVICE int32_t vertex_key_coord(const int32_t* rem0, const int32_t* rank, int d, int r,
                                        int i) {
  return rem0[i] + (rank[i] <= d - r ? r : r - (d + 1));
}

// Key of vertex r: its first d coordinates (the last one is implied by sum = 0).
LD_HOST_DEVICE void vertex_key(const int32_t* rem0, const int32_t* rank, int d, int r,
                               int32_t* key) {
  for (int i = 0; i < d; ++i) key[i] = vertex_key_coord(rem0, rank, d, r, i);
}

// Keys of the two blur neighbours of `key` along axis j (j = 0..d):
// n1 = key - 1 with coordinate j set to key[j] + d, n2 = key + 1 with coordinate j set to
// key[j] - d (for j = d only the -1 / +1 shifts apply, coordinate d being implied).
LD_HOST_DEVICE void neighbour_keys(const int32_t* key, int d, int j, int32_t* n1, int32_t* n2) {
  for (int i = 0; i < d; ++i) {
    n1[i] = key[i] - 1;
    n2[i] = key[i] + 1;
  }
  if (j < d) {
    n1[j] = key[j] + d;
    n2[j] = key[j] - d;
  }
}

// 32-bit hash of a key (and the image it belongs to), well mixed in the low bits so a
// power-of-two table with linear probing spreads it.
LD_HOST_DEVICE uint32_t hash_key(const int32_t* key, int d, uint32_t image) {
  uint32_t h = 0x9E3779B9u ^ (image * 0x85EBCA6Bu);
  for (int i = 0; i < d; ++i) {
    h ^= static_cast<uint32_t>(key[i]);
    h *= 0x01000193u;
    h ^= h >> 15;
  }
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

LD_HOST_DEVICE bool keys_equal(const int32_t* a, const int32_t* b, int d) {
  for (int i = 0; i < d; ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

}  // namespace lattice
}  // namespace lightning_deeplab
