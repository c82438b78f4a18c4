// Argument checks shared by the CPU and CUDA operator implementations (host C++ only).
// The Python layer validates user input with friendlier messages; these guard direct calls.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>

#include <array>
#include <cstdint>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

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

// The message of both back ends for features that locate_simplex refuses.
inline void check_in_lattice_range(bool in_range) {
  TORCH_CHECK_VALUE(in_range,
                    "build_lattice: features are not finite or too large for the lattice "
                    "(an elevated coordinate exceeds 2^18); use larger standard deviations");
}

// Whether a lattice carries CSR splat lists (any of the three tables non-empty: the checks
// then want all three whole); a CPU lattice has none.
inline bool has_splat_lists(const at::Tensor& splat_ptr, const at::Tensor& splat_pixel,
                            const at::Tensor& splat_weight) {
  return splat_ptr.numel() > 0 || splat_pixel.numel() > 0 || splat_weight.numel() > 0;
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
  // The CSR splat lists: made by the CUDA build, empty in a CPU lattice (the CPU splat does
  // not read them).
  const bool lists = has_splat_lists(lat.splat_ptr, lat.splat_pixel, lat.splat_weight);
  TORCH_CHECK_VALUE(lat.splat_ptr.dim() == 1 && lat.splat_ptr.size(0) == (lists ? M + 1 : 0),
                    "lattice_filter: splat_ptr must have M+1 = ", M + 1, " entries (or none with ",
                    "no splat lists), got ", lat.splat_ptr.sizes());
  const int64_t E = B * N * d1;
  TORCH_CHECK_VALUE(lat.splat_pixel.dim() == 1 && lat.splat_pixel.size(0) == (lists ? E : 0) &&
                        lat.splat_weight.sizes() == lat.splat_pixel.sizes(),
                    "lattice_filter: splat_pixel/splat_weight must have B*N*(d+1) = ", E,
                    " entries (or none with no splat lists), got ", lat.splat_pixel.sizes(),
                    " and ", lat.splat_weight.sizes());
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

// The index tables of a lattice that build_lattice made, or that passed check_lattice_tables,
// as long as nobody has changed them since: the filters then skip the check (a pass over every
// table, and on CUDA a host synchronisation). A table is known by its TensorImpl, held weakly
// so that a freed table's address is never mistaken for a new one, and by its version
// counter, which every in-place change bumps. Changes that bypass the counter (through
// `.data`, a NumPy view, or in place in inference mode, whose tensors have no counter) are
// not seen.
class TrustedTables {
 public:
  using Tables = std::array<const at::Tensor*, 4>;  // offsets, neighbors, splat_ptr, splat_pixel

  static TrustedTables& instance() {
    static TrustedTables trusted;
    return trusted;
  }

  void add(const Tables& tables) {
    Entry entry;
    for (size_t i = 0; i < tables.size(); ++i) {
      entry.impl.emplace_back(tables[i]->getIntrusivePtr());
      entry.version[i] = version(*tables[i]);
    }
    const std::lock_guard<std::mutex> lock(mutex_);
    std::erase_if(entries_, [](const Entry& e) { return e.impl[0].expired(); });
    if (entries_.size() == kCapacity) entries_.pop_front();
    entries_.push_back(std::move(entry));
  }

  bool contains(const Tables& tables) {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto e = entries_.rbegin(); e != entries_.rend(); ++e) {
      bool same = true;
      for (size_t i = 0; i < tables.size() && same; ++i) {
        same = !e->impl[i].expired() &&
               e->impl[i]._unsafe_get_target() == tables[i]->unsafeGetTensorImpl() &&
               e->version[i] == version(*tables[i]);
      }
      if (same) return true;
    }
    return false;
  }

 private:
  static constexpr size_t kCapacity = 64;  // lattices alive at once, far more than a CRF uses
  struct Entry {
    std::vector<c10::weak_intrusive_ptr<c10::TensorImpl>> impl;
    std::array<int64_t, 4> version{};
  };
  static int64_t version(const at::Tensor& t) { return t.is_inference() ? -1 : t._version(); }

  std::mutex mutex_;
  std::deque<Entry> entries_;
};

// Records build_lattice's outputs (offsets, weights, neighbors, splat_ptr, splat_pixel, ...)
// as trusted, and returns them.
template <typename Outputs>
Outputs trusted_lattice(Outputs outputs) {
  TrustedTables::instance().add({&std::get<0>(outputs), &std::get<2>(outputs),
                                 &std::get<3>(outputs), &std::get<4>(outputs)});
  return outputs;
}

// Every index the filters read from the tables stays in bounds: offsets in [0, M), neighbours
// in [-1, M) and, where there are splat lists, splat_ptr strictly increasing from 0 to E
// (every vertex has a pixel) and splat pixels in [0, P). One pass over the tables, read back
// once; skipped for trusted tables, which are trusted from here on.
inline void check_lattice_tables(const at::Tensor& offsets, const at::Tensor& neighbors,
                                 const at::Tensor& splat_ptr, const at::Tensor& splat_pixel,
                                 int64_t P) {
  const TrustedTables::Tables tables{&offsets, &neighbors, &splat_ptr, &splat_pixel};
  if (TrustedTables::instance().contains(tables)) return;
  const int64_t M = neighbors.size(1);
  const int64_t E = splat_pixel.size(0);
  const auto outside = [](const at::Tensor& t, int64_t lo, int64_t hi) {
    return t.numel() == 0 ? at::zeros({}, t.options().dtype(at::kBool))
                          : at::logical_or(t.min() < lo, t.max() >= hi);
  };
  const at::Tensor no = at::zeros({}, offsets.options().dtype(at::kBool));
  const bool lists = splat_ptr.numel() > 0;
  const at::Tensor bad =
      at::stack({outside(offsets, 0, M), outside(neighbors, -1, M), outside(splat_pixel, 0, P),
                 lists ? splat_ptr[0] != 0 : no, lists ? splat_ptr[M] != E : no,
                 !lists || M == 0 ? no : (splat_ptr.diff() <= 0).any()})
          .to(at::kCPU);
  const bool* b = bad.data_ptr<bool>();
  const char* problem = b[0]   ? "offsets holds a vertex index outside [0, M)"
                        : b[1] ? "neighbors holds an index outside [-1, M)"
                        : b[2] ? "splat_pixel holds a pixel index outside [0, B*N)"
                        : b[3] ? "splat_ptr does not start at 0"
                        : b[4] ? "splat_ptr does not end at B*N*(d+1)"
                        : b[5] ? "splat_ptr is not strictly increasing (a vertex without pixels)"
                               : nullptr;
  TORCH_CHECK_VALUE(problem == nullptr, "lattice_filter: ", problem, " (M = ", M, ", B*N = ", P,
                    "): the lattice tables were not made by build_lattice or were changed since");
  TrustedTables::instance().add(tables);
}

// The CUDA splat gathers through the CSR lists: a lattice without them was built on the CPU.
inline void check_splat_lists(const FilterInputs& in) {
  TORCH_CHECK_VALUE(has_splat_lists(in.splat_ptr, in.splat_pixel, in.splat_weight),
                    "lattice_filter: this lattice has no splat lists (CPU lattices have none); "
                    "the CUDA filter needs a lattice built on the GPU (build_lattice of features on "
                    "the GPU), or a CPU lattice given its lists with Lattice.with_splat_lists() "
                    "before it is moved");
}

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
  const at::Tensor offsets_c = offsets.contiguous(), neighbors_c = neighbors.contiguous();
  const at::Tensor splat_ptr_c = splat_ptr.contiguous(), splat_pixel_c = splat_pixel.contiguous();
  check_lattice_tables(offsets_c, neighbors_c, splat_ptr_c, splat_pixel_c,
                       values.size(0) * values.size(1));
  return FilterInputs{values.contiguous(),
                      offsets_c,
                      weights.contiguous(),
                      neighbors_c,
                      splat_ptr_c,
                      splat_pixel_c,
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
