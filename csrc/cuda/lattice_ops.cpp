// Host side of the CUDA lattice operators (see lattice_ops.h): every allocation and kernel of
// one build or filter, in order, on the context's stream. build_lattice synchronises once, to
// size its outputs by the vertex count.
#include "cuda/lattice_ops.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>

#include "cuda/lattice_cuda.h"
#include "lattice.h"

namespace lightning_deeplab {
namespace cuda {
namespace {

void check(cudaError_t status, const char* step) {
  TORCH_CHECK(status == cudaSuccess, "lightning_deeplab CUDA kernels, ", step, ": ",
              cudaGetErrorString(status));
}

at::Tensor scratch(const DeviceContext& context, size_t bytes, const at::Tensor& like) {
  return context.empty({std::max<int64_t>(static_cast<int64_t>(bytes), 1)},
                       like.options().dtype(at::kByte));
}

int bits_for(int64_t value) {
  int bits = 1;
  while ((int64_t{1} << bits) <= value) ++bits;
  return bits;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
run_build_lattice(const at::Tensor& features_arg, const DeviceContext& context) {
  const cudaStream_t stream = context.stream;
  const at::Tensor features = features_arg.contiguous();
  const int64_t B = features.size(0);
  const int64_t N = features.size(1);
  const int d = static_cast<int>(features.size(2));
  const int64_t d1 = d + 1;
  const int64_t P = B * N;
  const int64_t E = P * d1;
  const auto int_opts = features.options().dtype(at::kInt);

  at::Tensor rem0 = context.empty({P, d1}, int_opts);
  at::Tensor rank = context.empty({P, d1}, int_opts);
  at::Tensor weights = context.empty({B, N, d1}, features.options());
  at::Tensor out_of_range = at::zeros({1}, int_opts);
  check(locate_pixels(features.data_ptr<float>(), P, d, lattice::elevation_scale(d),
                      rem0.data_ptr<int32_t>(), rank.data_ptr<int32_t>(),
                      weights.data_ptr<float>(), out_of_range.data_ptr<int32_t>(), stream),
        "locate_pixels");

  // At most E distinct vertices: a table of >= 2E slots never fills up. check_features keeps
  // E <= 2^31 - 1, so the table has at most 2^32 slots and a slot index fits uint32.
  int64_t capacity = 1024;
  while (capacity < 2 * E) capacity *= 2;
  TORCH_INTERNAL_ASSERT(capacity <= (int64_t{1} << 32), "build_lattice: hash table of ", capacity,
                        " slots exceeds uint32 slot indices");
  at::Tensor table = at::full({capacity}, -1, int_opts);
  // uint32 slot indices, held in an int32 tensor of the same size.
  at::Tensor slot_of_entry = context.empty({E}, int_opts);
  uint32_t* slot_of_entry_p = reinterpret_cast<uint32_t*>(slot_of_entry.data_ptr<int32_t>());
  at::Tensor is_first = context.empty({E}, int_opts);
  check(insert_entries(rem0.data_ptr<int32_t>(), rank.data_ptr<int32_t>(), N, P, d,
                       table.data_ptr<int32_t>(), capacity, slot_of_entry_p,
                       is_first.data_ptr<int32_t>(), stream),
        "insert_entries");
  at::Tensor first_index = context.empty({E}, int_opts);
  {
    size_t bytes = 0;
    check(exclusive_sum_temp_bytes(E, &bytes), "exclusive_sum_temp_bytes");
    at::Tensor temp = scratch(context, bytes, features);
    check(exclusive_sum(is_first.data_ptr<int32_t>(), first_index.data_ptr<int32_t>(), E,
                        temp.data_ptr(), bytes, stream),
          "exclusive_sum");
  }

  // The one synchronisation: the vertex count sizes the outputs.
  const at::Tensor tail =
      at::stack({first_index[E - 1], is_first[E - 1], out_of_range[0]}).to(at::kCPU);
  const int32_t* tail_p = tail.data_ptr<int32_t>();
  check_in_lattice_range(tail_p[2] == 0);
  const int64_t M = static_cast<int64_t>(tail_p[0]) + tail_p[1];

  at::Tensor offsets = context.empty({B, N, d1}, int_opts);
  at::Tensor vertex_entry = context.empty({M}, int_opts);
  check(assign_vertices(table.data_ptr<int32_t>(), slot_of_entry_p, is_first.data_ptr<int32_t>(),
                        first_index.data_ptr<int32_t>(), E, offsets.data_ptr<int32_t>(),
                        vertex_entry.data_ptr<int32_t>(), stream),
        "assign_vertices");
  at::Tensor neighbors = at::full({d1, M, 2}, -1, int_opts);
  check(find_neighbors(rem0.data_ptr<int32_t>(), rank.data_ptr<int32_t>(),
                       table.data_ptr<int32_t>(), capacity, first_index.data_ptr<int32_t>(),
                       vertex_entry.data_ptr<int32_t>(), M, N, d, neighbors.data_ptr<int32_t>(),
                       stream),
        "find_neighbors");

  at::Tensor sorted_vertex = context.empty({E}, int_opts);
  at::Tensor sorted_entry = context.empty({E}, int_opts);
  {
    at::Tensor iota = context.empty({E}, int_opts);
    const int key_bits = bits_for(M);
    size_t bytes = 0;
    check(sort_entries_temp_bytes(E, key_bits, &bytes), "sort_entries_temp_bytes");
    at::Tensor temp = scratch(context, bytes, features);
    check(sort_entries(offsets.data_ptr<int32_t>(), sorted_vertex.data_ptr<int32_t>(),
                       sorted_entry.data_ptr<int32_t>(), iota.data_ptr<int32_t>(), E, key_bits,
                       temp.data_ptr(), bytes, stream),
          "sort_entries");
  }
  at::Tensor splat_ptr = context.empty({M + 1}, int_opts);
  at::Tensor splat_pixel = context.empty({E}, int_opts);
  at::Tensor splat_weight = context.empty({E}, features.options());
  check(fill_splat_lists(sorted_vertex.data_ptr<int32_t>(), sorted_entry.data_ptr<int32_t>(),
                         weights.data_ptr<float>(), E, M, d, splat_ptr.data_ptr<int32_t>(),
                         splat_pixel.data_ptr<int32_t>(), splat_weight.data_ptr<float>(), stream),
        "fill_splat_lists");
  at::Tensor vertex_counts = context.empty({B}, features.options().dtype(at::kLong));
  check(count_vertices(first_index.data_ptr<int32_t>(), B, N, d, M,
                       vertex_counts.data_ptr<int64_t>(), stream),
        "count_vertices");
  return {offsets, weights, neighbors, splat_ptr, splat_pixel, splat_weight, vertex_counts};
}

at::Tensor run_lattice_filter(const FilterInputs& in, bool reverse, bool softmax,
                              const DeviceContext& context) {
  check_splat_lists(in);
  const int64_t P = in.P, C = in.C, M = in.M;
  const int d = in.d;
  at::Tensor out = context.empty(in.values.sizes(), in.values.options());
  if (P == 0 || C == 0) return out;
  at::Tensor buf_a = context.empty({M + 1, C}, in.values.options());
  at::Tensor buf_b = context.empty({M + 1, C}, in.values.options());

  AT_DISPATCH_FLOATING_TYPES(in.values.scalar_type(), "lattice_filter_cuda", [&] {
    using T = scalar_t;
    FilterPointers<T> ptrs{in.values.data_ptr<T>(),
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
    check(lattice_filter<T>(ptrs, P, M, C, d, reverse, softmax, context.stream), "lattice_filter");
  });
  return out;
}

}  // namespace cuda
}  // namespace lightning_deeplab
