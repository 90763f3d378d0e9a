// moe/cuda/nonfinite.cuh — non-finite values found on the device, reported on the host later.
//
// The host space throws moe::numeric_error from check_finite() at once. Device code cannot throw,
// and a forward pass must not synchronise (it has to be capturable in a CUDA graph), so the CUDA
// space records the first non-finite element of a check in a small device record instead; the
// host raises the same moe::numeric_error, with the same message, at the space's next
// synchronize() (which layer::statistics(), layer::routing() and moe::cuda::check_status() call).
// Until then the step runs on with the non-finite values (routing keeps every index in range; see
// top_k::select), and its results are garbage.
//
// Which element is reported is deterministic: the checks record in stream order and the first
// check that finds anything wins; within a check, the lowest flat index (an integer atomicMin, which
// gives the same result in any order).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "moe/core/config.hpp"
#include "moe/core/numeric.hpp"

namespace moe::cuda_detail {

inline constexpr unsigned long long no_index = ~0ull;

// Lives in device memory; `what`, `row_name`, `col_name` are host pointers to string literals
// (carried through the device as integers, only ever dereferenced on the host).
struct nonfinite_record {
  unsigned long long index = no_index;  // flat index of the element; no_index: nothing found
  long long cols = 0;
  double value = 0;
  std::uint64_t what = 0, row_name = 0, col_name = 0;
};

template <class V>
__global__ void find_nonfinite_kernel(const V* data, index_t n, unsigned long long* probe) {
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < n; i += index_t(blockDim.x) * gridDim.x)
    if (!is_finite(widen(data[i]))) atomicMin(probe, static_cast<unsigned long long>(i));
}

// One thread: moves a probe hit into the record, unless an earlier check already filled it.
template <class V>
__global__ void record_nonfinite_kernel(const V* data, index_t cols, const unsigned long long* probe,
                                        nonfinite_record* record, std::uint64_t what, std::uint64_t row_name,
                                        std::uint64_t col_name) {
  const unsigned long long i = *probe;
  if (i == no_index || record->index != no_index) return;
  record->index = i;
  record->cols = cols;
  record->value = double(widen(data[i]));
  record->what = what;
  record->row_name = row_name;
  record->col_name = col_name;
}

}  // namespace moe::cuda_detail
