// Host emulation of the part of the CUDA runtime that the project's kernels use, so that the
// .cu sources and their host code compile with g++ and run on the CPU (tests only).
//
// The kernels use one-dimensional grids, no shared memory, no barriers and no warp
// intrinsics; for such kernels running every thread to completion, blocks in any order, is an
// exact model. The emulation runs the blocks in a seeded shuffled order, the threads of a
// block in a shuffled order too, optionally on several host threads at once (so that
// ThreadSanitizer sees what runs concurrently on a GPU), and validates each launch's
// configuration as the runtime does. Atomics are the compiler's atomic builtins, relaxed like
// CUDA's. A kernel that needs __shared__, __syncthreads or warp intrinsics does not compile
// here: extend the emulation first.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA keywords ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

// ---- runtime types ---------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};

// The running thread's coordinates, one set per host worker thread.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
  }
  return "unrecognized error code";
}

// Every emulated call completes before it returns, so there is never an error left pending
// for cudaGetLastError (a bad launch configuration is returned by the launch itself).
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

inline cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  if (bytes == 0) return cudaSuccess;
  if (ptr == nullptr) return cudaErrorInvalidValue;
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

// ---- atomics (relaxed, as CUDA's are) ----------------------------------------------------------
inline int atomicCAS(int* address, int compare, int value) {
  __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;  // the old value, whether or not it was replaced
}

inline int atomicExch(int* address, int value) {
  return __atomic_exchange_n(address, value, __ATOMIC_RELAXED);
}

inline int atomicMin(int* address, int value) {
  int old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (value < old && !__atomic_compare_exchange_n(address, &old, value, true, __ATOMIC_RELAXED,
                                                     __ATOMIC_RELAXED)) {
  }
  return old;
}

// ---- launches --------------------------------------------------------------------------------
namespace cuda_emulation {

// Host threads that run the blocks of a launch, and the seed that orders blocks and threads.
inline std::atomic<int>& worker_setting() {
  static std::atomic<int> workers{1};
  return workers;
}

inline std::atomic<uint64_t>& seed_setting() {
  static std::atomic<uint64_t> seed{0};
  return seed;
}

inline void configure(int workers, uint64_t seed) {
  worker_setting() = std::max(workers, 1);
  seed_setting() = seed;
}

// Launches so far: each launch shuffles with its own stream of the seed.
inline std::atomic<uint64_t>& launch_counter() {
  static std::atomic<uint64_t> launches{0};
  return launches;
}

// The runtime's limits (compute capability 9.0): grid x up to 2^31 - 1, y and z up to
// 65535; at most 1024 threads a block (z at most 64); 48 KiB of dynamic shared memory
// without an opt-in, and the emulation has none to give.
inline cudaError_t check_configuration(dim3 grid, dim3 block, size_t shared_bytes) {
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || block.x < 1 || block.y < 1 || block.z < 1) {
    return cudaErrorInvalidConfiguration;
  }
  if (grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) {
    return cudaErrorInvalidConfiguration;
  }
  if (block.x > 1024u || block.y > 1024u || block.z > 64u ||
      uint64_t{block.x} * block.y * block.z > 1024u) {
    return cudaErrorInvalidConfiguration;
  }
  if (shared_bytes != 0) return cudaErrorInvalidValue;  // no __shared__ memory here
  return cudaSuccess;
}

}  // namespace cuda_emulation

// kernel<<<grid, block, shared_bytes, stream>>>(args...), run to completion. The arguments are
// converted to the kernel's parameter types once, at the launch, and every thread gets its own
// copy of them (as every CUDA thread reads its parameters).
template <typename... Params, typename... Args>
cudaError_t emulated_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                            cudaStream_t, Args&&... args) {
  const cudaError_t valid = cuda_emulation::check_configuration(grid, block, shared_bytes);
  if (valid != cudaSuccess) return valid;
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  const uint64_t stream_seed = cuda_emulation::seed_setting().load() * 0x9E3779B97F4A7C15ull +
                               cuda_emulation::launch_counter()++;
  std::vector<uint64_t> order(blocks);
  std::iota(order.begin(), order.end(), uint64_t{0});
  std::mt19937_64 shuffle_blocks(stream_seed);
  std::shuffle(order.begin(), order.end(), shuffle_blocks);

  std::atomic<uint64_t> next{0};
  const auto work = [&] {
    gridDim = grid;
    blockDim = block;
    std::vector<uint64_t> thread_order(threads);
    while (true) {
      const uint64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= blocks) break;
      const uint64_t b = order[i];
      blockIdx = {static_cast<unsigned int>(b % grid.x),
                  static_cast<unsigned int>(b / grid.x % grid.y),
                  static_cast<unsigned int>(b / grid.x / grid.y)};
      std::iota(thread_order.begin(), thread_order.end(), uint64_t{0});
      std::mt19937_64 shuffle_threads(stream_seed ^ (b + 1) * 0xD1B54A32D192ED03ull);
      std::shuffle(thread_order.begin(), thread_order.end(), shuffle_threads);
      for (const uint64_t t : thread_order) {
        threadIdx = {static_cast<unsigned int>(t % block.x),
                     static_cast<unsigned int>(t / block.x % block.y),
                     static_cast<unsigned int>(t / block.x / block.y)};
        std::apply(kernel, params);
      }
    }
  };
  const int workers = static_cast<int>(
      std::min<uint64_t>(static_cast<uint64_t>(cuda_emulation::worker_setting().load()), blocks));
  std::vector<std::thread> helpers;
  for (int w = 1; w < workers; ++w) helpers.emplace_back(work);
  work();
  for (std::thread& helper : helpers) helper.join();
  return cudaSuccess;
}
