// Compiling hot CPU loops for the vector units the machine has, without changing their bits.
#pragma once

// A function compiled twice, for AVX2 and for any x86-64, the loader picking one for the CPU
// it runs on (GCC and Clang function multiversioning; elsewhere one build). The extension
// builds with -ffp-contract=off, so the AVX2 version does the same float operations on wider
// vectors (no fused multiply-adds): the same bits.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define LD_AVX2_DISPATCH __attribute__((target_clones("avx2", "default")))
#else
#define LD_AVX2_DISPATCH
#endif

// Whether the loader picks the AVX2 copies of LD_AVX2_DISPATCH functions. Code in them that is
// fast only with AVX2 (8-lane shuffles, which other x86-64 CPUs take value by value) tests it:
// it is false wherever the other copy runs.
inline bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
#else
  return false;
#endif
}

// Forced inline: loops instantiated inside a LD_AVX2_DISPATCH function are compiled for its
// target only where they are inlined into it. (A lambda that takes or returns a 32-byte vector
// must be inlined too: called out of line from the AVX2 copy it would pass the vector in a
// register the other side does not read.)
#if defined(__GNUC__) || defined(__clang__)
#define LD_INLINE inline __attribute__((always_inline))
#define LD_INLINE_LAMBDA __attribute__((always_inline))
#else
#define LD_INLINE inline
#define LD_INLINE_LAMBDA
#endif
