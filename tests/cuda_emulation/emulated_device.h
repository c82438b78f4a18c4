// The emulated device the CUDA host code runs on: CPU memory, one (ignored) stream, and fresh
// buffers that hold garbage, as uninitialised device memory does.
#pragma once

#include <ATen/ATen.h>

#include <cstring>

#include "cuda/lattice_ops.h"

namespace lightning_deeplab {
namespace emulation {

// Bytes of 0x7F read as a huge int32 index (2139062143) or a huge float, so a buffer that a
// kernel should have written and did not cannot pass unnoticed.
constexpr int kGarbageByte = 0x7F;

inline at::Tensor garbage_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (t.nbytes() > 0) std::memset(t.data_ptr(), kGarbageByte, t.nbytes());
  return t;
}

inline const cuda::DeviceContext kDevice{nullptr, &garbage_empty};

}  // namespace emulation
}  // namespace lightning_deeplab
