// CUDA implementations of the lattice operators: argument checks, the device guard and the
// current stream; the host sequence of allocations and kernels is lattice_ops.cpp (shared with
// the tests' emulation), the kernels are in the .cu files next to this one.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda/lattice_ops.h"
#include "lattice_checks.h"

namespace lightning_deeplab {
namespace {

at::Tensor empty_on_device(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options);
}

cuda::DeviceContext current_context() {
  return {c10::cuda::getCurrentCUDAStream(), &empty_on_device};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
build_lattice_cuda(const at::Tensor& features) {
  check_features(features);
  const c10::cuda::CUDAGuard guard(features.device());
  return trusted_lattice(cuda::run_build_lattice(features, current_context()));
}

at::Tensor lattice_filter_cuda(const at::Tensor& values, const at::Tensor& offsets,
                               const at::Tensor& weights, const at::Tensor& neighbors,
                               const at::Tensor& splat_ptr, const at::Tensor& splat_pixel,
                               const at::Tensor& splat_weight,
                               const std::optional<at::Tensor>& scale_in,
                               const std::optional<at::Tensor>& scale_out,
                               const std::optional<at::Tensor>& addend, bool reverse,
                               bool softmax) {
  const FilterInputs in = prepare_filter_inputs(values, offsets, weights, neighbors, splat_ptr,
                                               splat_pixel, splat_weight, scale_in, scale_out,
                                               addend);
  const c10::cuda::CUDAGuard guard(values.device());
  return cuda::run_lattice_filter(in, reverse, softmax, current_context());
}

}  // namespace

TORCH_LIBRARY_IMPL(lightning_deeplab, CUDA, m) {
  m.impl("build_lattice", &build_lattice_cuda);
  m.impl("lattice_filter", &lattice_filter_cuda);
}

}  // namespace lightning_deeplab
