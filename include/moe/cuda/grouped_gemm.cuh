// moe/cuda/grouped_gemm.cuh — tiled GEMM kernels whose groups are described by device offsets.
//
// The expert FFNs multiply expert-contiguous rows by per-expert weights: rows of expert g are
// [offsets[g], offsets[g+1]) with the offsets in device memory (computed by the routing on the
// device). cuBLAS's grouped GEMM wants the group sizes on the host, which would need a host
// synchronisation in the middle of forward; these kernels read the offsets themselves (see
// tiles.cuh for the mapping of blocks to (group, row tile)), so forward and backward stay
// asynchronous and capturable.
//
// One TM × TN tile of C per block iteration, TK-deep panels of op(A) and op(B) staged in shared
// memory and widened to the accumulation type (float for float/bf16/fp16, double for double). Each
// output element is owned by one thread and summed in ascending k: deterministic, no atomics.
// Also serves as the dense fallback for type combinations cuBLAS does not take.
#pragma once

#include <cuda_runtime.h>

#include "moe/core/config.hpp"
#include "moe/core/numeric.hpp"
#include "moe/core/op.hpp"
#include "moe/cuda/error.cuh"
#include "moe/cuda/tiles.cuh"

namespace moe::cuda_detail {

inline constexpr int gemm_tm = 64, gemm_tn = 64, gemm_tk = 16;
inline constexpr int gemm_threads = 256;  // 16 × 16 threads, 4 × 4 outputs each

// The operands of one tile job: C[m, n] = alpha · op(A)[m, k] · op(B)[k, n] + beta · C (row-major,
// pointers already at the job's origin). beta == 0 writes C without reading it (BLAS rule).
template <class TA, class TB, class TC, class Acc>
struct tile_job {
  const TA* a;
  index_t lda;
  bool a_trans;  // op(A)[i, p] = a[p·lda + i] instead of a[i·lda + p]
  const TB* b;
  index_t ldb;
  bool b_trans;  // op(B)[p, j] = b[j·ldb + p] instead of b[p·ldb + j]
  TC* c;
  index_t ldc;
  index_t m, n, k;
  Acc alpha, beta;
};

// Computes rows [row0, row0 + TM) ∩ [0, m) and columns [col0, col0 + TN) ∩ [0, n) of a job.
// All threads of the block must call it (it synchronises the block).
template <class TA, class TB, class TC, class Acc>
__device__ void gemm_tile(const tile_job<TA, TB, TC, Acc>& job, index_t row0, index_t col0) {
  __shared__ Acc as[gemm_tk][gemm_tm + 1];
  __shared__ Acc bs[gemm_tk][gemm_tn + 1];
  const int tid = int(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;
  Acc acc[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = Acc(0);

  for (index_t p0 = 0; p0 < job.k; p0 += gemm_tk) {
    // Stage op(A)[row0.., p0..] and op(B)[p0.., col0..]: 1024 elements each, 4 per thread.
    stage_panel<gemm_tk, gemm_tm>(as, job.a, job.lda, job.a_trans, row0, job.m, p0, job.k, tid, gemm_threads);
    stage_panel<gemm_tk, gemm_tn>(bs, job.b, job.ldb, !job.b_trans, col0, job.n, p0, job.k, tid, gemm_threads);
    __syncthreads();
    for (int p = 0; p < gemm_tk; ++p) {
      Acc av[4], bv[4];
      for (int i = 0; i < 4; ++i) av[i] = as[p][ty + 16 * i];
      for (int j = 0; j < 4; ++j) bv[j] = bs[p][tx + 16 * j];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const index_t gi = row0 + ty + 16 * i;
    if (gi >= job.m) continue;
    for (int j = 0; j < 4; ++j) {
      const index_t gj = col0 + tx + 16 * j;
      if (gj >= job.n) continue;
      TC* cp = job.c + gi * job.ldc + gj;
      const Acc prior = job.beta == Acc(0) ? Acc(0) : job.beta * convert<Acc>(*cp);
      *cp = convert<TC>(job.alpha * acc[i][j] + prior);
    }
  }
}

// Dense: tiles (blockIdx.x: rows, blockIdx.y: columns), grid-stride in both.
template <class TA, class TB, class TC, class Acc>
__global__ void __launch_bounds__(gemm_threads) dense_gemm_kernel(tile_job<TA, TB, TC, Acc> job) {
  const index_t row_tiles = tiles_of(job.m, gemm_tm), col_tiles = tiles_of(job.n, gemm_tn);
  for (index_t ct = blockIdx.y; ct < col_tiles; ct += gridDim.y)
    for (index_t rt = blockIdx.x; rt < row_tiles; rt += gridDim.x) gemm_tile(job, rt * gemm_tm, ct * gemm_tn);
}

// Grouped rows: C[rows_g] = alpha · A[rows_g] · op(B_g) + beta · C[rows_g], B_g = b + g·b_stride.
// blockIdx.y strides over column tiles, blockIdx.x over the virtual row tiles of tiles.cuh, whose
// count the kernel reads from the device offsets.
template <class TA, class TB, class TC, class Acc>
__global__ void __launch_bounds__(gemm_threads)
    grouped_gemm_kernel(tile_job<TA, TB, TC, Acc> job, int groups, const int* offsets, index_t b_stride) {
  const index_t virtual_tiles = group_tile_count(offsets, groups, gemm_tm);
  const index_t col_tiles = tiles_of(job.n, gemm_tn);
  for (index_t ct = blockIdx.y; ct < col_tiles; ct += gridDim.y)
    for (index_t vt = blockIdx.x; vt < virtual_tiles; vt += gridDim.x) {
      const group_tile t = find_group_tile(offsets, groups, gemm_tm, vt);
      if (t.row_begin >= t.row_end) continue;  // uniform over the block: no divergent __syncthreads
      tile_job<TA, TB, TC, Acc> g = job;
      g.a = job.a + t.row_begin * job.lda;
      g.b = job.b + index_t(t.group) * b_stride;
      g.c = job.c + t.row_begin * job.ldc;
      g.m = t.row_end - t.row_begin;
      gemm_tile(g, 0, ct * gemm_tn);
    }
}

// Grouped weight gradients: C_g[m, n] = alpha · A[rows_g]ᵀ · B[rows_g] + beta · C_g,
// C_g = c + g·c_stride. blockIdx.x: m × n tiles of C_g, blockIdx.y: groups (grid-stride). The depth
// of each product is the group's row count, read from the device offsets; empty groups give
// C_g = beta · C_g.
template <class TA, class TB, class TC, class Acc>
__global__ void __launch_bounds__(gemm_threads)
    grouped_gemm_tn_kernel(tile_job<TA, TB, TC, Acc> job, int groups, const int* offsets, index_t c_stride) {
  const index_t row_tiles = tiles_of(job.m, gemm_tm), col_tiles = tiles_of(job.n, gemm_tn);
  for (index_t g = blockIdx.y; g < groups; g += gridDim.y)
    for (index_t t = blockIdx.x; t < row_tiles * col_tiles; t += gridDim.x) {
      const index_t r0 = offsets[g];
      tile_job<TA, TB, TC, Acc> q = job;
      q.a = job.a + r0 * job.lda;
      q.b = job.b + r0 * job.ldb;
      q.c = job.c + g * c_stride;
      q.k = index_t(offsets[g + 1]) - r0;
      gemm_tile(q, (t / col_tiles) * gemm_tm, (t % col_tiles) * gemm_tn);
    }
}

inline unsigned grid_dim(index_t blocks, index_t limit) {
  if (blocks < 1) blocks = 1;
  return unsigned(blocks < limit ? blocks : limit);
}

template <class TA, class TB, class TC, class Acc>
void launch_dense_gemm(cudaStream_t stream, const tile_job<TA, TB, TC, Acc>& job) {
  if (job.m <= 0 || job.n <= 0) return;
  const dim3 grid(grid_dim(tiles_of(job.m, gemm_tm), 1 << 30), grid_dim(tiles_of(job.n, gemm_tn), 65535));
  dense_gemm_kernel<<<grid, gemm_threads, 0, stream>>>(job);
  check_launch("dense_gemm_kernel", "(m=", job.m, " n=", job.n, " k=", job.k, ")");
}

// target_blocks: about how many blocks fill the device (a few per SM).
template <class TA, class TB, class TC, class Acc>
void launch_grouped_gemm(cudaStream_t stream, const tile_job<TA, TB, TC, Acc>& job, int groups, const int* offsets,
                         index_t b_stride, index_t target_blocks) {
  if (groups <= 0 || job.n <= 0) return;
  const index_t col_tiles = tiles_of(job.n, gemm_tn);
  const dim3 grid(grid_dim(persistent_row_blocks(target_blocks, col_tiles), 65535), grid_dim(col_tiles, 65535));
  grouped_gemm_kernel<<<grid, gemm_threads, 0, stream>>>(job, groups, offsets, b_stride);
  check_launch("grouped_gemm_kernel", "(groups=", groups, " n=", job.n, " k=", job.k, ")");
}

template <class TA, class TB, class TC, class Acc>
void launch_grouped_gemm_tn(cudaStream_t stream, const tile_job<TA, TB, TC, Acc>& job, int groups,
                            const int* offsets, index_t c_stride) {
  if (groups <= 0 || job.m <= 0 || job.n <= 0) return;
  const index_t tiles = tiles_of(job.m, gemm_tm) * tiles_of(job.n, gemm_tn);
  const dim3 grid(grid_dim(tiles, 1 << 30), grid_dim(groups, 65535));
  grouped_gemm_tn_kernel<<<grid, gemm_threads, 0, stream>>>(job, groups, offsets, c_stride);
  check_launch("grouped_gemm_tn_kernel", "(groups=", groups, " m=", job.m, " n=", job.n, ")");
}

}  // namespace moe::cuda_detail
