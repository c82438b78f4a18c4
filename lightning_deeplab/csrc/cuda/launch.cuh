// Launch geometry shared by the CUDA kernels (nvcc only: included by the .cu files).
#pragma once

#include <cstdint>

namespace lightning_deeplab {
namespace cuda {

constexpr int kThreads = 256;

// Blocks of kThreads that cover n threads.
inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

// The global index of this thread in a one-dimensional launch.
__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

}  // namespace cuda
}  // namespace lightning_deeplab
