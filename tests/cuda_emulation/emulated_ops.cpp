// Test-only operator library `lightning_deeplab_emu`: the CUDA operators' host code
// (csrc/cuda/lattice_ops.cpp) and kernels (csrc/cuda/*.cu), compiled as C++ over the host
// emulation of the CUDA runtime and registered as CPU kernels with the same schemas as
// `lightning_deeplab`, so the package's Python layer (fake and autograd rules included) runs
// through them on CPU tensors. Built with hidden visibility: nothing here can bind to, or be
// bound by, a CUDA build of `lightning_deeplab._C` in the same process.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda/launch.cuh"
#include "cuda/lattice_ops.h"
#include "cuda_emulation.h"
#include "emulated_device.h"
#include "lattice_checks.h"
#include "schemas.h"

namespace lightning_deeplab {
namespace {

void check_on_cpu(const at::Tensor& t, const char* op) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, " (emulated CUDA): tensors live on the CPU, got ",
                    t.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
build_lattice_emulated(const at::Tensor& features) {
  check_features(features);
  check_on_cpu(features, "build_lattice");
  return trusted_lattice(cuda::run_build_lattice(features, emulation::kDevice));
}

at::Tensor lattice_filter_emulated(const at::Tensor& values, const at::Tensor& offsets,
                                   const at::Tensor& weights, const at::Tensor& neighbors,
                                   const at::Tensor& splat_ptr, const at::Tensor& splat_pixel,
                                   const at::Tensor& splat_weight,
                                   const std::optional<at::Tensor>& scale_in,
                                   const std::optional<at::Tensor>& scale_out,
                                   const std::optional<at::Tensor>& addend, bool reverse,
                                   bool softmax) {
  check_on_cpu(values, "lattice_filter");
  const FilterInputs in = prepare_filter_inputs(values, offsets, weights, neighbors, splat_ptr,
                                               splat_pixel, splat_weight, scale_in, scale_out,
                                               addend);
  return cuda::run_lattice_filter(in, reverse, softmax, emulation::kDevice);
}

// How the emulation runs the blocks of every later launch: on `workers` host threads, in an
// order drawn from `seed`.
void configure(int64_t workers, int64_t seed) {
  TORCH_CHECK_VALUE(workers >= 1 && workers <= 64, "configure: workers must be in [1, 64], got ",
                    workers);
  cuda_emulation::configure(static_cast<int>(workers), static_cast<uint64_t>(seed));
}

// What the launch helper (csrc/cuda/launch.cuh) returns for a grid of `threads` threads of an
// empty kernel: 0 when it ran, else the CUDA error code.
__global__ void empty_kernel() {}

int64_t launch_empty(int64_t threads) {
  return static_cast<int64_t>(cuda::launch(empty_kernel, threads, nullptr));
}

}  // namespace

TORCH_LIBRARY(lightning_deeplab_emu, m) {
  m.def(schema::kBuildLattice);
  m.def(schema::kLatticeFilter);
  m.def("configure(int workers, int seed) -> ()", &configure);
  m.def("launch_empty(int threads) -> int", &launch_empty);
}

TORCH_LIBRARY_IMPL(lightning_deeplab_emu, CPU, m) {
  m.impl("build_lattice", &build_lattice_emulated);
  m.impl("lattice_filter", &lattice_filter_emulated);
}

}  // namespace lightning_deeplab
