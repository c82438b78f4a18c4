// Argument checks shared by the CPU and CUDA operator implementations (host C++ only).
// The Python layer validates user input with friendlier messages; these guard direct calls.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "lattice.h"

namespace lightning_deeplab {

// Every index the kernels form (pixel, vertex, CSR entry) is an int32: at most kMaxIndex
// (pixel, vertex) entries B * N * (d+1) per call, on both back ends. The CUDA build's hash
// table has the first power of two >= 2 * entries slots, at most 2^32: uint32 slot indices.
constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();

inline void check_features(const at::Tensor& features) {
  TORCH_CHECK_VALUE(features.dim() == 3, "build_lattice: features must be [B, N, d], got ",
                    features.sizes());
  TORCH_CHECK_TYPE(features.scalar_type() == at::kFloat,
                   "build_lattice: features must be float32, got ", features.scalar_type());
  const int64_t d = features.size(2);
  TORCH_CHECK_VALUE(d >= 1 && d <= lattice::kMaxDim, "build_lattice: feature dimension d = ", d,
                    " is outside [1, ", lattice::kMaxDim, "]");
  TORCH_CHECK_VALUE(features.size(0) > 0 && features.size(1) > 0,
                    "build_lattice: features must not be empty, got ", features.sizes());
  // Divided rather than multiplied, so that no product of the sizes can overflow int64.
  TORCH_CHECK_VALUE(features.size(0) <= kMaxIndex / (d + 1) / features.size(1),
                    "build_lattice: B * N * (d+1) = ", features.size(0), " * ", features.size(1),
                    " * ", d + 1, " lattice entries overflow int32 indices (at most ", kMaxIndex,
                    ")");
}

struct LatticeTensors {
  const at::Tensor& offsets;
  const at::Tensor& weights;
  const at::Tensor& neighbors;
  const at::Tensor& splat_ptr;
  const at::Tensor& splat_pixel;
  const at::Tensor& splat_weight;
};

inline void check_filter_args(const at::Tensor& values, const LatticeTensors& lat) {
  TORCH_CHECK_VALUE(values.dim() == 3, "lattice_filter: values must be [B, N, C], got ",
                    values.sizes());
  TORCH_CHECK_TYPE(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble,
                   "lattice_filter: values must be float32 or float64, got ",
                   values.scalar_type());
  const int64_t B = values.size(0), N = values.size(1);
  TORCH_CHECK_VALUE(lat.offsets.dim() == 3 && lat.offsets.size(0) == B && lat.offsets.size(1) == N,
                    "lattice_filter: offsets ", lat.offsets.sizes(),
                    " do not belong to values of shape ", values.sizes());
  const int64_t d1 = lat.offsets.size(2);
  TORCH_CHECK_VALUE(d1 >= 2 && d1 <= lattice::kMaxDim + 1, "lattice_filter: offsets last dim ",
                    d1, " is not d+1 for a valid d");
  TORCH_CHECK_VALUE(lat.weights.sizes() == lat.offsets.sizes(), "lattice_filter: weights ",
                    lat.weights.sizes(), " differ from offsets ", lat.offsets.sizes());
  TORCH_CHECK_VALUE(lat.neighbors.dim() == 3 && lat.neighbors.size(0) == d1 &&
                        lat.neighbors.size(2) == 2,
                    "lattice_filter: neighbors must be [d+1, M, 2], got ", lat.neighbors.sizes());
  const int64_t M = lat.neighbors.size(1);
  TORCH_CHECK_VALUE(lat.splat_ptr.dim() == 1 && lat.splat_ptr.size(0) == M + 1,
                    "lattice_filter: splat_ptr must have M+1 = ", M + 1, " entries, got ",
                    lat.splat_ptr.sizes());
  const int64_t E = B * N * d1;
  TORCH_CHECK_VALUE(lat.splat_pixel.dim() == 1 && lat.splat_pixel.size(0) == E &&
                        lat.splat_weight.sizes() == lat.splat_pixel.sizes(),
                    "lattice_filter: splat_pixel/splat_weight must have B*N*(d+1) = ", E,
                    " entries, got ", lat.splat_pixel.sizes(), " and ", lat.splat_weight.sizes());
  for (const at::Tensor* t : {&lat.offsets, &lat.neighbors, &lat.splat_ptr, &lat.splat_pixel}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kInt, "lattice_filter: lattice index tensors must be int32, got ",
                     t->scalar_type());
  }
  for (const at::Tensor* t : {&lat.weights, &lat.splat_weight}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat,
                     "lattice_filter: lattice weights must be float32, got ", t->scalar_type());
  }
  for (const at::Tensor* t : {&lat.offsets, &lat.weights, &lat.neighbors, &lat.splat_ptr,
                              &lat.splat_pixel, &lat.splat_weight}) {
    TORCH_CHECK_VALUE(t->device() == values.device(), "lattice_filter: lattice tensor on ",
                      t->device(), " but values on ", values.device());
  }
  TORCH_CHECK_VALUE((M + 1) * values.size(2) <= std::numeric_limits<int64_t>::max() / 2,
                    "lattice_filter: lattice too large");
}

inline void check_filter_extras(const at::Tensor& values, const std::optional<at::Tensor>& scale_in,
                                const std::optional<at::Tensor>& scale_out,
                                const std::optional<at::Tensor>& addend) {
  for (const auto* scale : {&scale_in, &scale_out}) {
    if (!scale->has_value()) continue;
    const at::Tensor& t = scale->value();
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == values.size(0) && t.size(1) == values.size(1),
                      "lattice_filter: scales must be [B, N] = [", values.size(0), ", ",
                      values.size(1), "], got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == values.scalar_type(), "lattice_filter: scale dtype ",
                     t.scalar_type(), " differs from values dtype ", values.scalar_type());
    TORCH_CHECK_VALUE(t.device() == values.device(), "lattice_filter: scale on ", t.device(),
                      " but values on ", values.device());
  }
  if (addend.has_value()) {
    const at::Tensor& t = addend.value();
    TORCH_CHECK_VALUE(t.sizes() == values.sizes(), "lattice_filter: addend ", t.sizes(),
                      " differs from values ", values.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == values.scalar_type(), "lattice_filter: addend dtype ",
                     t.scalar_type(), " differs from values dtype ", values.scalar_type());
    TORCH_CHECK_VALUE(t.device() == values.device(), "lattice_filter: addend on ", t.device(),
                      " but values on ", values.device());
  }
}

// The filter's tensors, checked and made contiguous: what the CPU and the CUDA op start from.
struct FilterInputs {
  at::Tensor values, offsets, weights, neighbors, splat_ptr, splat_pixel, splat_weight;
  std::optional<at::Tensor> scale_in, scale_out, addend;
  int64_t P;  // pixels over the batch
  int64_t C;  // channels
  int64_t M;  // lattice vertices over the batch
  int d;      // feature dimension
};

inline FilterInputs prepare_filter_inputs(
    const at::Tensor& values, const at::Tensor& offsets, const at::Tensor& weights,
    const at::Tensor& neighbors, const at::Tensor& splat_ptr, const at::Tensor& splat_pixel,
    const at::Tensor& splat_weight, const std::optional<at::Tensor>& scale_in,
    const std::optional<at::Tensor>& scale_out, const std::optional<at::Tensor>& addend) {
  check_filter_args(values, {offsets, weights, neighbors, splat_ptr, splat_pixel, splat_weight});
  check_filter_extras(values, scale_in, scale_out, addend);
  const auto contiguous = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
  };
  return FilterInputs{values.contiguous(),
                      offsets.contiguous(),
                      weights.contiguous(),
                      neighbors.contiguous(),
                      splat_ptr.contiguous(),
                      splat_pixel.contiguous(),
                      splat_weight.contiguous(),
                      contiguous(scale_in),
                      contiguous(scale_out),
                      contiguous(addend),
                      values.size(0) * values.size(1),
                      values.size(2),
                      neighbors.size(1),
                      static_cast<int>(offsets.size(2)) - 1};
}

}  // namespace lightning_deeplab
