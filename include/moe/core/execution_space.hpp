// moe/core/execution_space.hpp — what an execution space must provide.
//
// Policies are written against these primitives only, so the same policy code runs on every space
// (Thrust/Kokkos style). `moe::host` (moe/host/space.hpp) is the reference; `moe::cuda`
// (moe/cuda.cuh) runs the same calls on a CUDA stream.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>

#include "moe/core/config.hpp"
#include "moe/core/op.hpp"

namespace moe {

namespace detail {
struct index_functor_archetype {
  MOE_HOST_DEVICE void operator()(index_t) const {}
};
struct element_functor_archetype {
  MOE_HOST_DEVICE float operator()(index_t, index_t) const { return 0.0f; }
};
struct pair_column_archetype {
  MOE_HOST_DEVICE index_t operator()(index_t, int) const { return -1; }
};
struct pair_value_archetype {
  MOE_HOST_DEVICE float operator()(index_t, int) const { return 0.0f; }
};
// A task body runs on the host and issues calls on the space (parallel_tasks).
struct task_functor_archetype {
  void operator()(index_t) const {}
};
}  // namespace detail

template <class S>
concept execution_space =
    std::copy_constructible<S> &&
    requires(const S& s, void* p, const void* cp, std::size_t bytes, index_t n, const int* ci, int* i,
             const std::uint64_t* ck, std::uint64_t* k, const float* cf, float* f) {
      { S::name } -> std::convertible_to<const char*>;
      { S::host_accessible } -> std::convertible_to<bool>;
      { s.allocate(bytes) } -> std::same_as<void*>;
      s.deallocate(p, bytes);
      s.copy(p, cp, bytes);
      s.copy_to_host(p, cp, bytes);
      s.copy_from_host(p, cp, bytes);
      s.fill_zero(p, bytes);
      s.synchronize();
      s.parallel_for(n, detail::index_functor_archetype{});
      // f(i) for i in [0, n), each f(i) a host function issuing calls on the space (a GEMM or more,
      // such as one attention head's): side by side where the space can (the host's pool), in index
      // order on the calling thread where its calls queue anyway (a CUDA stream). Tasks write
      // disjoint outputs; the results are the same bits either way.
      s.parallel_tasks(n, detail::task_functor_archetype{});
      s.group_row_sums(1, n, n, detail::element_functor_archetype{}, f);
      s.group_pair_sums(1, n, n, 1, detail::pair_column_archetype{}, detail::pair_value_archetype{}, f);
      s.exclusive_scan(ci, i, n);
      s.offsets_from_counts(ci, i, n);
      s.histogram(ci, n, i, 1);
      s.reduce_sum(cf, n, f);
      s.reduce_max(cf, n, 0.0f, f);
      // Raises (host) or records for the next synchronize() (device) the first non-finite element.
      s.check_finite(cf, n, n, "what", "row", "col");
      { S::radix_sort_scratch_bytes(n) } -> std::convertible_to<std::size_t>;
      s.radix_sort_pairs(ck, k, ci, i, n, 64, p, bytes);
      // Only each segment's first `head` pairs in order (key bits from segment_shift up: the segment).
      s.radix_sort_segment_heads(ck, k, ci, i, n, 64, 32, n, p, bytes);
      s.gemm(op::none, op::none, n, n, n, 1.0f, cf, n, cf, n, 0.0f, f, n);
      s.batched_gemm(op::none, op::none, 1, n, n, n, 1.0f, cf, n, n, cf, n, n, 0.0f, f, n, n);
      s.grouped_gemm(op::none, 1, ci, n, n, 1.0f, cf, n, cf, n, n, 0.0f, f, n);
      s.grouped_gemm_tn(1, ci, n, n, 1.0f, cf, n, cf, n, 0.0f, f, n, n);
    };

}  // namespace moe
