// CUDA implementations of the lattice operators: argument checks, allocation and the kernel
// sequence (the kernels are in the .cu files next to this one). Everything runs on the
// current stream; build_lattice synchronises once, to size its outputs by the vertex count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>

#include "cuda/lattice_cuda.h"
#include "lattice.h"
#include "lattice_checks.h"

namespace lightning_deeplab {
namespace {

at::Tensor scratch(int64_t bytes, const at::Tensor& like) {
  return at::empty({std::max<int64_t>(bytes, 1)}, like.options().dtype(at::kByte));
}

int bits_for(int64_t value) {
  int bits = 1;
  while ((int64_t{1} << bits) <= value) ++bits;
  return bits;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
build_lattice_cuda(const at::Tensor& features_arg) {
  check_features(features_arg);
  const c10::cuda::CUDAGuard guard(features_arg.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor features = features_arg.contiguous();
  const int64_t B = features.size(0);
  const int64_t N = features.size(1);
  const int d = static_cast<int>(features.size(2));
  const int64_t d1 = d + 1;
  const int64_t P = B * N;
  const int64_t E = P * d1;
  const auto int_opts = features.options().dtype(at::kInt);

  at::Tensor rem0 = at::empty({P, d1}, int_opts);
  at::Tensor rank = at::empty({P, d1}, int_opts);
  at::Tensor weights = at::empty({B, N, d1}, features.options());
  at::Tensor out_of_range = at::zeros({1}, int_opts);
  C10_CUDA_CHECK(cuda::locate_pixels(features.data_ptr<float>(), P, d, lattice::elevation_scale(d),
                                     rem0.data_ptr<int32_t>(), rank.data_ptr<int32_t>(),
                                     weights.data_ptr<float>(), out_of_range.data_ptr<int32_t>(),
                                     stream));

  // At most E distinct vertices: a table of >= 2E slots never fills up. check_features keeps
  // E <= 2^31 - 1, so the table has at most 2^32 slots and a slot index fits uint32.
  int64_t capacity = 1024;
  while (capacity < 2 * E) capacity *= 2;
  TORCH_INTERNAL_ASSERT(capacity <= (int64_t{1} << 32), "build_lattice: hash table of ", capacity,
                        " slots exceeds uint32 slot indices");
  at::Tensor table = at::full({capacity}, -1, int_opts);
  // uint32 slot indices, held in an int32 tensor of the same size.
  at::Tensor slot_of_entry = at::empty({E}, int_opts);
  uint32_t* slot_of_entry_p = reinterpret_cast<uint32_t*>(slot_of_entry.data_ptr<int32_t>());
  at::Tensor is_first = at::empty({E}, int_opts);
  C10_CUDA_CHECK(cuda::insert_entries(rem0.data_ptr<int32_t>(), rank.data_ptr<int32_t>(), N, P, d,
                                      table.data_ptr<int32_t>(), capacity,
                                      slot_of_entry_p, is_first.data_ptr<int32_t>(),
                                      stream));
  at::Tensor first_index = at::empty({E}, int_opts);
  {
    const size_t bytes = cuda::exclusive_sum_temp_bytes(E);
    at::Tensor temp = scratch(static_cast<int64_t>(bytes), features);
    C10_CUDA_CHECK(cuda::exclusive_sum(is_first.data_ptr<int32_t>(), first_index.data_ptr<int32_t>(),
                                       E, temp.data_ptr(), bytes, stream));
  }

  // The one synchronisation: the vertex count sizes the outputs.
  const at::Tensor tail =
      at::stack({first_index[E - 1], is_first[E - 1], out_of_range[0]}).to(at::kCPU);
  const int32_t* tail_p = tail.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(tail_p[2] == 0,
                    "build_lattice: features are not finite or too large for the lattice "
                    "(an elevated coordinate exceeds 2^18); use larger standard deviations");
  const int64_t M = static_cast<int64_t>(tail_p[0]) + tail_p[1];

  at::Tensor offsets = at::empty({B, N, d1}, int_opts);
  at::Tensor vertex_entry = at::empty({M}, int_opts);
  C10_CUDA_CHECK(cuda::assign_vertices(table.data_ptr<int32_t>(), slot_of_entry_p,
                                       is_first.data_ptr<int32_t>(), first_index.data_ptr<int32_t>(),
                                       E, offsets.data_ptr<int32_t>(), vertex_entry.data_ptr<int32_t>(),
                                       stream));
  at::Tensor neighbors = at::full({d1, M, 2}, -1, int_opts);
  C10_CUDA_CHECK(cuda::find_neighbors(rem0.data_ptr<int32_t>(), rank.data_ptr<int32_t>(),
                                      table.data_ptr<int32_t>(), capacity,
                                      first_index.data_ptr<int32_t>(), vertex_entry.data_ptr<int32_t>(),
                                      M, N, d, neighbors.data_ptr<int32_t>(), stream));

  at::Tensor sorted_vertex = at::empty({E}, int_opts);
  at::Tensor sorted_entry = at::empty({E}, int_opts);
  {
    at::Tensor iota = at::empty({E}, int_opts);
    const int key_bits = bits_for(M);
    const size_t bytes = cuda::sort_entries_temp_bytes(E, key_bits);
    at::Tensor temp = scratch(static_cast<int64_t>(bytes), features);
    C10_CUDA_CHECK(cuda::sort_entries(offsets.data_ptr<int32_t>(), sorted_vertex.data_ptr<int32_t>(),
                                      sorted_entry.data_ptr<int32_t>(), iota.data_ptr<int32_t>(), E,
                                      key_bits, temp.data_ptr(), bytes, stream));
  }
  at::Tensor splat_ptr = at::empty({M + 1}, int_opts);
  at::Tensor splat_pixel = at::empty({E}, int_opts);
  at::Tensor splat_weight = at::empty({E}, features.options());
  C10_CUDA_CHECK(cuda::fill_splat_lists(sorted_vertex.data_ptr<int32_t>(),
                                        sorted_entry.data_ptr<int32_t>(), weights.data_ptr<float>(), E,
                                        M, d, splat_ptr.data_ptr<int32_t>(),
                                        splat_pixel.data_ptr<int32_t>(),
                                        splat_weight.data_ptr<float>(), stream));
  at::Tensor vertex_counts = at::empty({B}, features.options().dtype(at::kLong));
  C10_CUDA_CHECK(cuda::count_vertices(first_index.data_ptr<int32_t>(), B, N, d, M,
                                      vertex_counts.data_ptr<int64_t>(), stream));
  return {offsets, weights, neighbors, splat_ptr, splat_pixel, splat_weight, vertex_counts};
}

at::Tensor lattice_filter_cuda(const at::Tensor& values_arg, const at::Tensor& offsets_arg,
                               const at::Tensor& weights_arg, const at::Tensor& neighbors_arg,
                               const at::Tensor& splat_ptr_arg, const at::Tensor& splat_pixel_arg,
                               const at::Tensor& splat_weight_arg,
                               const std::optional<at::Tensor>& scale_in_arg,
                               const std::optional<at::Tensor>& scale_out_arg,
                               const std::optional<at::Tensor>& addend_arg, bool reverse,
                               bool softmax) {
  const FilterInputs in = prepare_filter_inputs(values_arg, offsets_arg, weights_arg, neighbors_arg,
                                               splat_ptr_arg, splat_pixel_arg, splat_weight_arg,
                                               scale_in_arg, scale_out_arg, addend_arg);
  const c10::cuda::CUDAGuard guard(values_arg.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t P = in.P, C = in.C, M = in.M;
  const int d = in.d;
  at::Tensor out = at::empty_like(in.values, at::MemoryFormat::Contiguous);
  if (P == 0 || C == 0) return out;
  at::Tensor buf_a = at::empty({M + 1, C}, in.values.options());
  at::Tensor buf_b = at::empty({M + 1, C}, in.values.options());

  AT_DISPATCH_FLOATING_TYPES(in.values.scalar_type(), "lattice_filter_cuda", [&] {
    using T = scalar_t;
    cuda::FilterPointers<T> ptrs{in.values.data_ptr<T>(),
                                 out.data_ptr<T>(),
                                 in.scale_in ? in.scale_in->data_ptr<T>() : nullptr,
                                 in.scale_out ? in.scale_out->data_ptr<T>() : nullptr,
                                 in.addend ? in.addend->data_ptr<T>() : nullptr,
                                 in.offsets.data_ptr<int32_t>(),
                                 in.weights.data_ptr<float>(),
                                 in.neighbors.data_ptr<int32_t>(),
                                 in.splat_ptr.data_ptr<int32_t>(),
                                 in.splat_pixel.data_ptr<int32_t>(),
                                 in.splat_weight.data_ptr<float>(),
                                 buf_a.data_ptr<T>(),
                                 buf_b.data_ptr<T>()};
    C10_CUDA_CHECK(cuda::lattice_filter<T>(ptrs, P, M, C, d, reverse, softmax, stream));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lightning_deeplab, CUDA, m) {
  m.impl("build_lattice", &build_lattice_cuda);
  m.impl("lattice_filter", &lattice_filter_cuda);
}

}  // namespace lightning_deeplab
