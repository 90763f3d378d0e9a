// moe/cuda/reduce.cuh — the kernels of moe::cuda::group_row_sums: per-group column sums of a
// matrix given element-wise, in a fixed order (no atomics: the same bits run to run); group_pair_sums
// runs them on the cells of its pairs.
//
// Pass 1: one block per (group, chunk of rows, tile of columns) (group_sum_layout, tiles.cuh); each
// thread adds its rows of the chunk in order, then the block adds its row lanes in a fixed tree.
// Pass 2: one thread per (group, column) adds the chunks' partials in chunk order.
#pragma once

#include "moe/core/config.hpp"
#include "moe/cuda/tiles.cuh"

namespace moe::cuda_detail {

template <class R, class F>
__global__ void __launch_bounds__(group_sum_threads)
    group_row_partials_kernel(group_sum_shape sh, index_t rows, index_t cols, F f, R* partial) {
  __shared__ R lane_sums[group_sum_threads];
  const index_t b = blockIdx.x;
  const index_t tile = b % sh.col_tiles, rest = b / sh.col_tiles;
  const index_t chunk = rest % sh.chunks, g = rest / sh.chunks;
  const int lane = int(threadIdx.x) % sh.lanes, row_lane = int(threadIdx.x) / sh.lanes;
  const index_t c = tile * sh.lanes + lane;
  const index_t r0 = chunk * sh.chunk_rows;
  const index_t r1 = r0 + sh.chunk_rows < rows ? r0 + sh.chunk_rows : rows;
  R acc = 0;
  if (c < cols)
    for (index_t r = r0 + row_lane; r < r1; r += sh.row_lanes) acc += f(g * rows + r, c);
  lane_sums[threadIdx.x] = acc;
  __syncthreads();
  for (int half = sh.row_lanes / 2; half > 0; half /= 2) {
    if (row_lane < half) lane_sums[threadIdx.x] += lane_sums[threadIdx.x + half * sh.lanes];
    __syncthreads();
  }
  if (row_lane == 0 && c < cols) partial[(g * sh.chunks + chunk) * cols + c] = lane_sums[threadIdx.x];
}

template <class R>
__global__ void __launch_bounds__(for_threads)
    group_row_finish_kernel(index_t groups_cols, index_t chunks, index_t cols, const R* partial, R* out) {
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < groups_cols;
       i += index_t(blockDim.x) * gridDim.x) {
    const index_t g = i / cols, c = i - g * cols;
    R acc = 0;
    for (index_t k = 0; k < chunks; ++k) acc += partial[(g * chunks + k) * cols + c];
    out[i] = acc;
  }
}

// The cells of moe::cuda::group_pair_sums: what row r hands to column c, its pairs' values added in
// pair order (moe::host::group_pair_sums walks the pairs instead; the cell is the same sum).
template <class R, class C, class V>
struct pair_cells {
  C column_of;
  V value_of;
  int pairs;
  MOE_HOST_DEVICE R operator()(index_t r, index_t c) const {
    R cell = 0;
    for (int j = 0; j < pairs; ++j)
      if (index_t(column_of(r, j)) == c) cell += value_of(r, j);
    return cell;
  }
};

}  // namespace moe::cuda_detail
