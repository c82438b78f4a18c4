// CPU Gaussian filtering through a permutohedral lattice: splat (a gather over each vertex's
// pixel list, no atomics), d+1 blur passes, slice. Every stage is parallel over vertices or
// pixels and sums in a fixed order, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "lattice.h"
#include "lattice_checks.h"

namespace lightning_deeplab {
namespace {

template <typename scalar_t>
void filter_cpu_kernel(const scalar_t* in, scalar_t* out, int64_t P, int64_t M, int d, int64_t C,
                       const int32_t* offsets, const float* weights, const int32_t* neighbors,
                       const int32_t* splat_ptr, const int32_t* splat_pixel,
                       const float* splat_weight, bool reverse, scalar_t* buf_a,
                       scalar_t* buf_b) {
  const int d1 = d + 1;
  // Row 0 of each buffer is zero and stands for a missing neighbour (index -1 + 1); vertex v
  // lives in row v + 1.
  std::fill(buf_a, buf_a + C, scalar_t(0));
  std::fill(buf_b, buf_b + C, scalar_t(0));

  at::parallel_for(0, M, 256, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      scalar_t* __restrict__ row = buf_a + (v + 1) * C;
      for (int64_t c = 0; c < C; ++c) row[c] = scalar_t(0);
      for (int32_t k = splat_ptr[v]; k < splat_ptr[v + 1]; ++k) {
        const scalar_t w = static_cast<scalar_t>(splat_weight[k]);
        const scalar_t* __restrict__ x = in + static_cast<int64_t>(splat_pixel[k]) * C;
        for (int64_t c = 0; c < C; ++c) row[c] += w * x[c];
      }
    }
  });

  scalar_t* src = buf_a;
  scalar_t* dst = buf_b;
  for (int step = 0; step < d1; ++step) {
    const int j = reverse ? d - step : step;
    const int32_t* nb = neighbors + static_cast<int64_t>(j) * M * 2;
    at::parallel_for(0, M, 512, [&](int64_t begin, int64_t end) {
      for (int64_t v = begin; v < end; ++v) {
        const scalar_t* __restrict__ a = src + (static_cast<int64_t>(nb[2 * v]) + 1) * C;
        const scalar_t* __restrict__ b = src + (static_cast<int64_t>(nb[2 * v + 1]) + 1) * C;
        const scalar_t* __restrict__ self = src + (v + 1) * C;
        scalar_t* __restrict__ o = dst + (v + 1) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = self[c] + scalar_t(0.5) * (a[c] + b[c]);
      }
    });
    std::swap(src, dst);
  }

  const scalar_t alpha = static_cast<scalar_t>(lattice::slice_alpha(d));
  at::parallel_for(0, P, 256, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      scalar_t* __restrict__ y = out + p * C;
      for (int64_t c = 0; c < C; ++c) y[c] = scalar_t(0);
      for (int r = 0; r < d1; ++r) {
        const scalar_t w = static_cast<scalar_t>(weights[p * d1 + r]) * alpha;
        const scalar_t* __restrict__ row = src + (static_cast<int64_t>(offsets[p * d1 + r]) + 1) * C;
        for (int64_t c = 0; c < C; ++c) y[c] += w * row[c];
      }
    }
  });
}

at::Tensor lattice_filter_cpu(const at::Tensor& values_arg, const at::Tensor& offsets_arg,
                              const at::Tensor& weights_arg, const at::Tensor& neighbors_arg,
                              const at::Tensor& splat_ptr_arg, const at::Tensor& splat_pixel_arg,
                              const at::Tensor& splat_weight_arg, bool reverse) {
  check_filter_args(values_arg, {offsets_arg, weights_arg, neighbors_arg, splat_ptr_arg,
                                 splat_pixel_arg, splat_weight_arg});
  const at::Tensor values = values_arg.contiguous();
  const at::Tensor offsets = offsets_arg.contiguous();
  const at::Tensor weights = weights_arg.contiguous();
  const at::Tensor neighbors = neighbors_arg.contiguous();
  const at::Tensor splat_ptr = splat_ptr_arg.contiguous();
  const at::Tensor splat_pixel = splat_pixel_arg.contiguous();
  const at::Tensor splat_weight = splat_weight_arg.contiguous();

  const int64_t P = values.size(0) * values.size(1);
  const int64_t C = values.size(2);
  const int d = static_cast<int>(offsets.size(2)) - 1;
  const int64_t M = neighbors.size(1);
  at::Tensor out = at::empty_like(values);
  if (P == 0 || C == 0) return out;
  at::Tensor buf_a = at::empty({M + 1, C}, values.options());
  at::Tensor buf_b = at::empty({M + 1, C}, values.options());

  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "lattice_filter_cpu", [&] {
    filter_cpu_kernel<scalar_t>(values.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), P, M, d, C,
                                offsets.data_ptr<int32_t>(), weights.data_ptr<float>(),
                                neighbors.data_ptr<int32_t>(), splat_ptr.data_ptr<int32_t>(),
                                splat_pixel.data_ptr<int32_t>(), splat_weight.data_ptr<float>(),
                                reverse, buf_a.data_ptr<scalar_t>(), buf_b.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lightning_deeplab, CPU, m) { m.impl("lattice_filter", &lattice_filter_cpu); }

}  // namespace lightning_deeplab
