// Host stand-ins for the two cub calls of the CUDA lattice build, keeping cub's contract: a
// call with no temporary storage only reports how many bytes it needs, a call with less than
// that fails with cudaErrorInvalidValue, and the storage is really used (so AddressSanitizer
// sees a buffer that is too small); the radix sort is stable and orders by the bits
// [begin_bit, end_bit) of the keys only (signed keys with their sign bit flipped, as cub does).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <type_traits>

#include "cuda_emulation.h"

namespace cub {

struct DeviceScan {
  template <typename InputIt, typename OutputIt, typename NumItems>
  static cudaError_t ExclusiveSum(void* temp, size_t& temp_bytes, InputIt in, OutputIt out,
                                  NumItems num_items, cudaStream_t = nullptr) {
    using Value = typename std::iterator_traits<InputIt>::value_type;
    const int64_t n = static_cast<int64_t>(num_items);
    const size_t needed = sizeof(Value) * static_cast<size_t>(std::max<int64_t>(n, 0)) + 16;
    if (temp == nullptr) {
      temp_bytes = needed;
      return cudaSuccess;
    }
    if (temp_bytes < needed || n < 0) return cudaErrorInvalidValue;
    // Summed into the temporary storage first, so `out` may alias `in`.
    Value* sums = static_cast<Value*>(temp);
    Value running = Value(0);
    for (int64_t i = 0; i < n; ++i) {
      sums[i] = running;
      running = running + in[i];
    }
    std::copy(sums, sums + n, out);
    return cudaSuccess;
  }
};

struct DeviceRadixSort {
  template <typename Key, typename Value, typename NumItems>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const Key* keys_in, Key* keys_out,
                               const Value* values_in, Value* values_out, NumItems num_items,
                               int begin_bit = 0, int end_bit = sizeof(Key) * 8,
                               cudaStream_t = nullptr) {
    static_assert(std::is_integral_v<Key>, "the emulated radix sort takes integer keys");
    using Bits = std::make_unsigned_t<Key>;
    constexpr int kKeyBits = sizeof(Key) * 8;
    const int64_t n = static_cast<int64_t>(num_items);
    const size_t needed = sizeof(int64_t) * static_cast<size_t>(std::max<int64_t>(n, 0)) + 16;
    if (temp == nullptr) {
      temp_bytes = needed;
      return cudaSuccess;
    }
    if (temp_bytes < needed || n < 0 || begin_bit < 0 || end_bit > kKeyBits ||
        begin_bit > end_bit) {
      return cudaErrorInvalidValue;
    }
    const auto digits = [&](Key key) -> Bits {
      Bits bits = static_cast<Bits>(key);
      if constexpr (std::is_signed_v<Key>) bits ^= Bits{1} << (kKeyBits - 1);
      const int width = end_bit - begin_bit;
      if (width == 0) return 0;
      bits = static_cast<Bits>(bits >> begin_bit);
      return width == kKeyBits ? bits : static_cast<Bits>(bits & ((Bits{1} << width) - 1));
    };
    int64_t* order = static_cast<int64_t*>(temp);
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order, order + n,
                     [&](int64_t a, int64_t b) { return digits(keys_in[a]) < digits(keys_in[b]); });
    for (int64_t i = 0; i < n; ++i) {
      keys_out[i] = keys_in[order[i]];
      values_out[i] = values_in[order[i]];
    }
    return cudaSuccess;
  }
};

}  // namespace cub
