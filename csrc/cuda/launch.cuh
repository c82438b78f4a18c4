// Launch geometry and the one kernel launch of the CUDA kernels (included by the .cu files).
//
// Every kernel is launched through `launch`, so the launch syntax appears once: compiled by
// g++ instead of nvcc (the tests' host emulation of the CUDA runtime, tests/cuda_emulation),
// the same sources run on the CPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <utility>

namespace lightning_deeplab {
namespace cuda {

constexpr int kThreads = 256;
// The largest grid the runtime accepts along x.
constexpr int64_t kMaxBlocks = 2147483647;

// The global index of this thread in a one-dimensional launch.
__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

// Runs `kernel(args...)` on `threads` threads (one-dimensional blocks of kThreads) on `stream`.
// A grid the runtime cannot hold (no thread, or more than kMaxBlocks blocks) is refused with
// cudaErrorInvalidConfiguration before anything runs, never wrapped into a smaller one.
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), int64_t threads, cudaStream_t stream,
                   Args&&... args) {
  if (threads < 1) return cudaErrorInvalidConfiguration;
  const int64_t blocks = (threads - 1) / kThreads + 1;  // no overflow near INT64_MAX
  if (blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned int>(blocks));
#if defined(__CUDACC__)
  kernel<<<grid, kThreads, 0, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
#else
  return emulated_launch(kernel, grid, dim3(kThreads), 0, stream, std::forward<Args>(args)...);
#endif
}

}  // namespace cuda
}  // namespace lightning_deeplab
