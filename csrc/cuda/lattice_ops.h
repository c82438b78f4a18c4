// Host side of the CUDA lattice operators: allocation, the kernel sequence and its error
// checks, on one stream. Compiled into the CUDA operators (ops_cuda.cpp, which adds the device
// guard and the current stream) and, for the tests, over the host emulation of the CUDA
// runtime into an operator library that runs these same lines on CPU tensors.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>

#include <tuple>

#include "lattice_checks.h"

namespace lightning_deeplab {
namespace cuda {

// Where the kernels run: the stream, and how a fresh (uninitialised) device buffer is made.
struct DeviceContext {
  cudaStream_t stream;
  at::Tensor (*empty)(at::IntArrayRef sizes, const at::TensorOptions& options);
};

// build_lattice's outputs for features [B, N, d] already checked (check_features), on their
// device.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
run_build_lattice(const at::Tensor& features, const DeviceContext& context);

// lattice_filter of checked inputs (prepare_filter_inputs) into a new tensor.
at::Tensor run_lattice_filter(const FilterInputs& in, bool reverse, bool softmax,
                              const DeviceContext& context);

}  // namespace cuda
}  // namespace lightning_deeplab
