// Runs the CUDA lattice build and filter (csrc/cuda: host code and kernels) on the host
// emulation with several worker threads, for ThreadSanitizer, which cannot be preloaded into
// Python. TSan reports any data race itself (and, built with -fsanitize=thread, ends the run
// with exit code 66 when TSAN_OPTIONS has halt_on_error=1). The driver checks that every
// (workers, seed) setting gives the bitwise same lattice and filter outputs, and that the
// emulation itself keeps the runtime's and cub's contracts. Exit code 0: all held.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdio>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "cub_emulation.h"
#include "cuda/lattice_ops.h"
#include "cuda_emulation.h"
#include "emulated_device.h"
#include "lattice_checks.h"

namespace {

using lightning_deeplab::FilterInputs;
using lightning_deeplab::prepare_filter_inputs;
namespace cuda = lightning_deeplab::cuda;
using lightning_deeplab::emulation::kDevice;

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what.c_str());
    ++failures;
  }
}

// Features [2, H*W, d]: positions over sigma plus, for d = 5, the colours of an image of
// flat blocks (many pixels share a vertex: contended hash insertions) and of noise.
at::Tensor features(int64_t height, int64_t width, int d) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const at::Tensor y = at::arange(height, at::kFloat).view({height, 1}).expand({height, width});
  const at::Tensor x = at::arange(width, at::kFloat).view({1, width}).expand({height, width});
  std::vector<at::Tensor> channels{x / 3.0, y / 3.0};
  for (int c = 2; c < d; ++c) {
    const at::Tensor blocks = ((x.floor_divide(16) * 7 + y.floor_divide(16) * 3 + c) % 5) * 20.0;
    const at::Tensor noise = at::rand({height, width}, gen) * 255.0;
    channels.push_back(at::stack({blocks, noise}) / 13.0);
  }
  at::Tensor f = at::empty({2, height * width, d});
  for (int c = 0; c < d; ++c) {
    const at::Tensor channel = c < 2 ? channels[c].expand({2, height, width}) : channels[c];
    f.select(2, c).copy_(channel.reshape({2, height * width}));
  }
  return f;
}

std::vector<at::Tensor> run(const at::Tensor& f, at::ScalarType dtype) {
  const auto lattice = cuda::run_build_lattice(f, kDevice);
  std::vector<at::Tensor> out{std::get<0>(lattice), std::get<1>(lattice), std::get<2>(lattice),
                              std::get<3>(lattice), std::get<4>(lattice), std::get<5>(lattice),
                              std::get<6>(lattice)};
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const int64_t B = f.size(0), N = f.size(1), C = 5;
  const at::Tensor values = at::randn({B, N, C}, gen).to(dtype);
  const at::Tensor scale = at::rand({B, N}, gen).to(dtype);
  const at::Tensor addend = at::randn({B, N, C}, gen).to(dtype);
  for (const bool reverse : {false, true}) {
    for (const bool softmax : {false, true}) {
      const FilterInputs in = prepare_filter_inputs(values, out[0], out[1], out[2], out[3], out[4],
                                                    out[5], scale, scale, addend);
      out.push_back(cuda::run_lattice_filter(in, reverse, softmax, kDevice));
    }
  }
  return out;
}

void check_emulation_contracts() {
  using cuda_emulation::check_configuration;
  expect(check_configuration(dim3(2147483647u), dim3(256), 0) == cudaSuccess, "largest grid");
  expect(check_configuration(dim3(0), dim3(256), 0) == cudaErrorInvalidConfiguration, "empty grid");
  expect(check_configuration(dim3(1, 65536), dim3(256), 0) == cudaErrorInvalidConfiguration,
         "grid y above 65535");
  expect(check_configuration(dim3(1), dim3(1025), 0) == cudaErrorInvalidConfiguration,
         "block above 1024 threads");
  expect(check_configuration(dim3(1), dim3(32, 32, 2), 0) == cudaErrorInvalidConfiguration,
         "block of 2048 threads");
  expect(check_configuration(dim3(1), dim3(256), 16) == cudaErrorInvalidValue, "shared memory");

  std::vector<int32_t> keys{5, 3, 5, 1, 3, 0, 7, 3}, values{0, 1, 2, 3, 4, 5, 6, 7};
  std::vector<int32_t> keys_out(8), values_out(8);
  size_t bytes = 0;
  expect(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys.data(), keys_out.data(),
                                         values.data(), values_out.data(), 8, 0, 3) ==
                 cudaSuccess && bytes > 0,
         "sort size query");
  std::vector<char> temp(bytes);
  size_t too_few = bytes - 1;
  expect(cub::DeviceRadixSort::SortPairs(temp.data(), too_few, keys.data(), keys_out.data(),
                                         values.data(), values_out.data(), 8, 0, 3) ==
             cudaErrorInvalidValue,
         "sort with too little storage");
  expect(cub::DeviceRadixSort::SortPairs(temp.data(), bytes, keys.data(), keys_out.data(),
                                         values.data(), values_out.data(), 8, 0, 3) == cudaSuccess,
         "sort");
  expect(keys_out == std::vector<int32_t>{0, 1, 3, 3, 3, 5, 5, 7} &&
             values_out == std::vector<int32_t>{5, 3, 1, 4, 7, 0, 2, 6},
         "sort is stable and ascending");
  // Only bits [0, 2) count: 5, 5, 1 (01) tie and keep their order, as 3, 3, 7, 3 (11) do.
  expect(cub::DeviceRadixSort::SortPairs(temp.data(), bytes, keys.data(), keys_out.data(),
                                         values.data(), values_out.data(), 8, 0, 2) == cudaSuccess &&
             keys_out == std::vector<int32_t>{0, 5, 5, 1, 3, 3, 7, 3},
         "sort looks at the bit range only");

  std::vector<int32_t> flags{1, 0, 1, 1, 0}, sums(5);
  expect(cub::DeviceScan::ExclusiveSum(nullptr, bytes, flags.data(), sums.data(), 5) ==
             cudaSuccess,
         "scan size query");
  temp.assign(bytes, 0);
  too_few = bytes - 1;
  expect(cub::DeviceScan::ExclusiveSum(temp.data(), too_few, flags.data(), sums.data(), 5) ==
             cudaErrorInvalidValue,
         "scan with too little storage");
  expect(cub::DeviceScan::ExclusiveSum(temp.data(), bytes, flags.data(), sums.data(), 5) ==
                 cudaSuccess &&
             sums == std::vector<int32_t>{0, 1, 1, 2, 3},
         "exclusive sum");
}

}  // namespace

int main() {
  at::set_num_threads(1);  // torch's own OpenMP threads are not instrumented
  check_emulation_contracts();
  const std::vector<std::pair<int, uint64_t>> settings{{1, 0}, {4, 1}, {3, 12345}};
  for (const int d : {2, 5}) {
    for (const at::ScalarType dtype : {at::kFloat, at::kDouble}) {
      const at::Tensor f = features(48, 40, d);
      std::vector<at::Tensor> first;
      for (const auto& [workers, seed] : settings) {
        cuda_emulation::configure(workers, seed);
        const std::vector<at::Tensor> outputs = run(f, dtype);
        if (first.empty()) {
          first = outputs;
          continue;
        }
        for (size_t i = 0; i < outputs.size(); ++i) {
          expect(at::equal(outputs[i], first[i]),
                 "output " + std::to_string(i) + " of d = " + std::to_string(d) + " with " +
                     std::to_string(workers) + " workers, seed " + std::to_string(seed) +
                     " differs from 1 worker, seed 0");
        }
      }
    }
  }
  // Features out of the lattice's range in many pixels at once: every thread that meets one
  // raises the same flag, concurrently.
  at::Tensor bad = features(48, 40, 5);
  bad.select(0, 1).fill_(std::numeric_limits<float>::quiet_NaN());
  cuda_emulation::configure(4, 3);
  bool refused = false;
  try {
    cuda::run_build_lattice(bad, kDevice);
  } catch (const c10::ValueError&) {
    refused = true;
  }
  expect(refused, "non-finite features refused");
  std::printf("tsan driver: %s\n", failures == 0 ? "all checks held" : "FAILED");
  return failures == 0 ? 0 : 1;
}
