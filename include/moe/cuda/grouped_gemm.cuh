// moe/cuda/grouped_gemm.cuh — tiled GEMM kernels whose groups are described by device offsets.
//
// The expert FFNs multiply expert-contiguous rows by per-expert weights: rows of expert g are
// [offsets[g], offsets[g+1]) with the offsets in device memory (computed by the routing on the
// device). cuBLAS's grouped GEMM wants the group sizes on the host, which would need a host
// synchronisation in the middle of forward; these kernels read the offsets themselves (see
// tiles.cuh for the mapping of blocks to (group, row tile)), so forward and backward stay
// asynchronous and capturable.
//
// Two tile engines, both deterministic (no atomics; every output element is summed in a fixed
// order by one owner):
//   - bf16/fp16 operands with float accumulation: tensor cores through WMMA (16×16×16 bf16/fp16
//     MMAs, float accumulators), 128 × 128 tiles of C, 32-deep panels staged in shared memory in
//     the operand type and in the orientation they are stored in (16-byte loads where aligned;
//     transposed operands are loaded as column-major fragments); each of the 8 warps owns a
//     64 × 32 block of the tile.
//   - everything else (float, double, mixed inputs): a 64 × 64 SIMT tile, TK-deep panels widened to
//     the accumulation type, each output element owned by one thread and summed in ascending k.
//     Also the dense fallback for type combinations cuBLAS does not take.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

#include "moe/core/config.hpp"
#include "moe/core/numeric.hpp"
#include "moe/core/op.hpp"
#include "moe/cuda/async_copy.cuh"
#include "moe/cuda/error.cuh"
#include "moe/cuda/launch.cuh"
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

// ---- tensor cores (WMMA) ------------------------------------------------------------------------
inline constexpr int tc_tm = 128, tc_tn = 128, tc_tk = 32;
inline constexpr int tc_threads = 256;  // 8 warps: 2 (rows) × 4 (columns), 64 × 32 of C each
inline constexpr int tc_pad = 8;        // row padding of the panels: 16 bytes, keeps ldm a multiple of 8
inline constexpr int tc_piece = 8;      // 16-bit elements per 16-byte piece when staging operands

// The CUDA type the WMMA fragments take for a 16-bit storage type (same bits).
template <class T>
struct wmma_operand;
template <>
struct wmma_operand<bfloat16> {
  using type = __nv_bfloat16;
  __device__ static type from(bfloat16 v) { return __ushort_as_bfloat16(v.bits); }
};
template <>
struct wmma_operand<float16> {
  using type = __half;
  __device__ static type from(float16 v) { return __ushort_as_half(v.bits); }
};

// Whether a grouped GEMM takes the tensor-core tile: both operands of one 16-bit type, float sums.
template <class TA, class TB, class Acc>
inline constexpr bool tensor_core_operands = std::is_same_v<TA, TB> && is_half_v<TA> && std::is_same_v<Acc, float>;

// The shared memory of the tensor-core tile, declared once per kernel (gemm_tile_tc) and viewed by
// each orientation: static __shared__ arrays of the four instantiations would each take their own.
// Two stages of each operand's panel (the next one is copied in while the tensor cores work on the
// current one); the epilogue's accumulator tiles reuse A's stages once the panels are consumed, so
// the whole stays within the 48 KiB of static shared memory (40 KiB).
template <class W>
struct tc_shared {
  // An operand panel as stored: [128][32 + pad] (op none) or [32][128 + pad] (transposed), 16-bit.
  static constexpr int panel = (tc_tm * (tc_tk + tc_pad) > tc_tk * (tc_tm + tc_pad) ? tc_tm * (tc_tk + tc_pad)
                                                                                    : tc_tk * (tc_tm + tc_pad));
  static constexpr int stages = 2;
  using c_tiles = float[tc_threads / 32][16][16 + 4];  // one accumulator tile per warp
  static_assert(sizeof(c_tiles) <= sizeof(W) * panel * stages, "the accumulator tiles fit in A's stages");
  W* a;  // stages × panel
  W* b;  // stages × panel
};

// One operand's panel of the tensor-core tile, as stored: where the operand allows 16-byte pieces
// (`pieces`: pieces_aligned), each piece inside it is one asynchronous copy of its bits (T and W are
// the same 16 bits), each piece wholly outside a zero-filling copy (nothing read: `src` only gives
// it a valid address), and a piece cut by the last column is written element by element; otherwise
// ordinary loads and stores, element by element.
template <int R, int C, int LD, class W, class T, class Conv>
__device__ void stage_panel_tc(W (*dst)[LD], const T* src, index_t ld, bool pieces, index_t r0, index_t rows,
                               index_t c0, index_t cols, W zero, Conv conv, int tid) {
  static_assert(sizeof(W) == sizeof(T) && tc_piece * sizeof(T) == 16 && LD * sizeof(W) % 16 == 0,
                "stage_panel_tc: 16-byte pieces of 16-bit elements, rows of whole pieces");
  const auto async_piece = [src](W* d, const T* s) { async_copy_16(d, s ? s : src, s ? 16 : 0); };
  if (pieces)
    stage_tile_pieces<R, C, LD, tc_piece>(dst, src, ld, r0, rows, c0, cols, zero, conv, tid, tc_threads, async_piece);
  else
    stage_tile<R, C, LD>(dst, src, ld, false, r0, rows, c0, cols, zero, conv, tid, tc_threads);
}

// Computes rows [row0, row0 + 128) ∩ [0, m) and columns [col0, col0 + 128) ∩ [0, n) of a job with
// tensor cores, for one orientation of the operands. All threads of the block must call it (it
// synchronises the block).
//
// Each operand is staged in the orientation it is stored in, so that consecutive threads read
// consecutive addresses and write consecutive shared-memory words, and the fragments are loaded
// row- or column-major to match (a transposed operand is a column-major one). ATrans: op(A)[i, p] =
// a[p·lda + i], staged as [p][i]; BTrans: op(B)[p, j] = b[j·ldb + p], staged as [j][p]. Until 2026-12
// transposed operands were transposed while staging, one 2-byte load per element: the
// input-gradient and weight-gradient products, two thirds of a step's expert GEMMs.
//
// Two stages: while the tensor cores multiply panel t, the copies of panel t + 1 are in flight
// (cp.async, 16-byte pieces, where the pointer and stride are 16-byte aligned; otherwise ordinary
// loads and stores into the other stage). Per panel: issue the next panel's copies, wait for this
// panel's own, barrier, multiply, barrier (the next iteration refills the stage just read).
template <bool ATrans, bool BTrans, class T, class TC>
__device__ void gemm_tile_tc_oriented(const tile_job<T, T, TC, float>& job, index_t row0, index_t col0,
                                      tc_shared<typename wmma_operand<T>::type> sh) {
  namespace wmma = nvcuda::wmma;
  using W = typename wmma_operand<T>::type;
  using S = tc_shared<W>;
  using a_layout = std::conditional_t<ATrans, wmma::col_major, wmma::row_major>;
  using b_layout = std::conditional_t<BTrans, wmma::col_major, wmma::row_major>;
  constexpr int a_rows = ATrans ? tc_tk : tc_tm, a_cols = ATrans ? tc_tm : tc_tk, a_ld = a_cols + tc_pad;
  constexpr int b_rows = BTrans ? tc_tn : tc_tk, b_cols = BTrans ? tc_tk : tc_tn, b_ld = b_cols + tc_pad;
  static_assert(a_rows * a_ld <= S::panel && b_rows * b_ld <= S::panel);
  const auto a_stage = [&](int s) { return reinterpret_cast<W (*)[a_ld]>(sh.a + s * S::panel); };
  const auto b_stage = [&](int s) { return reinterpret_cast<W (*)[b_ld]>(sh.b + s * S::panel); };
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int wm = warp / 4, wn = warp % 4;  // the warp's 64 × 32 block: rows wm·64, columns wn·32
  const W zero = wmma_operand<T>::from(T(0.0f));
  // Uniform over the block (the job's pointers and strides), so the staging branches do not diverge.
  // Block origins are multiples of 8 elements (tile origins and panel depths are), so the pointer and
  // the stride alone decide whether the 16-byte pieces are aligned.
  const bool a_pieces = pieces_aligned<tc_piece>(job.a, job.lda);
  const bool b_pieces = pieces_aligned<tc_piece>(job.b, job.ldb);
  const auto to_operand = [](T v) { return wmma_operand<T>::from(v); };

  // Copies panel p0.. of both operands into stage s and commits them as one group. The stored
  // blocks: A rows row0.. × depth p0.. (depth × rows when transposed); B depth p0.. × columns col0..
  // (columns × depth when transposed).
  const auto stage = [&](index_t p0, int s) {
    const index_t ar0 = ATrans ? p0 : row0, a_extent_r = ATrans ? job.k : job.m;
    const index_t ac0 = ATrans ? row0 : p0, a_extent_c = ATrans ? job.m : job.k;
    const index_t br0 = BTrans ? col0 : p0, b_extent_r = BTrans ? job.n : job.k;
    const index_t bc0 = BTrans ? p0 : col0, b_extent_c = BTrans ? job.k : job.n;
    stage_panel_tc<a_rows, a_cols, a_ld>(a_stage(s), job.a, job.lda, a_pieces, ar0, a_extent_r, ac0, a_extent_c, zero,
                                         to_operand, tid);
    stage_panel_tc<b_rows, b_cols, b_ld>(b_stage(s), job.b, job.ldb, b_pieces, br0, b_extent_r, bc0, b_extent_c, zero,
                                         to_operand, tid);
    async_copy_commit();
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
  // Fragments are indexed with compile-time constants only (unrolled loops), or they go to local memory.
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const index_t panels = tiles_of(job.k, tc_tk);
  if (panels > 0) stage(0, 0);
  for (index_t t = 0; t < panels; ++t) {
    const int s = int(t & 1);
    if (t + 1 < panels)
      stage((t + 1) * tc_tk, 1 - s);
    else
      async_copy_commit();  // an empty group: "all but the newest" below is then panel t in every iteration
    async_copy_wait<1>();   // this thread's copies of panel t have landed
    __syncthreads();        // ... and every thread's
    W (*as)[a_ld] = a_stage(s);
    W (*bs)[b_ld] = b_stage(s);
#pragma unroll
    for (int kk = 0; kk < tc_tk; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, W, a_layout> af[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, W, b_layout> bf[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = wm * 64 + i * 16;  // op(A) rows r.., depth kk..
        wmma::load_matrix_sync(af[i], ATrans ? &as[kk][r] : &as[r][kk], a_ld);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int c = wn * 32 + j * 16;  // op(B) depth kk.., columns c..
        wmma::load_matrix_sync(bf[j], BTrans ? &bs[c][kk] : &bs[kk][c], b_ld);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], af[i], bf[j], acc[i][j]);
    }
    __syncthreads();  // stage s is refilled by the next iteration's copies
  }
  async_copy_wait<0>();  // the last, empty group: nothing is left in flight into shared memory

  // Epilogue, one 16 × 16 accumulator at a time through the warp's shared tile (in A's stages, read
  // by no one after the last barrier): alpha, beta, the bounds and the conversion to TC.
  float (*cs)[16][16 + 4] = reinterpret_cast<float (*)[16][16 + 4]>(sh.a);
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(&cs[warp][0][0], acc[i][j], 16 + 4, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int r = e / 16, c = e % 16;
        const index_t gi = row0 + wm * 64 + i * 16 + r, gj = col0 + wn * 32 + j * 16 + c;
        if (gi >= job.m || gj >= job.n) continue;
        TC* cp = job.c + gi * job.ldc + gj;
        const float prior = job.beta == 0.0f ? 0.0f : job.beta * convert<float>(*cp);
        *cp = convert<TC>(job.alpha * cs[warp][r][c] + prior);
      }
      __syncwarp();
    }
  // A persistent block goes on to its next tile, whose first copies refill A's stages, where other
  // warps may still be reading their accumulator tiles.
  __syncthreads();
}

// Computes rows [row0, row0 + 128) ∩ [0, m) and columns [col0, col0 + 128) ∩ [0, n) of a job with
// tensor cores. All threads of the block must call it (it synchronises the block).
template <class T, class TC>
__device__ void gemm_tile_tc(const tile_job<T, T, TC, float>& job, index_t row0, index_t col0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // No bf16 WMMA before sm_80: the SIMT tile, four times.
  for (int dr = 0; dr < tc_tm; dr += gemm_tm)
    for (int dc = 0; dc < tc_tn; dc += gemm_tn) gemm_tile(job, row0 + dr, col0 + dc);
#else
  using W = typename wmma_operand<T>::type;
  __shared__ __align__(128) W a_stages[tc_shared<W>::stages * tc_shared<W>::panel];
  __shared__ __align__(128) W b_stages[tc_shared<W>::stages * tc_shared<W>::panel];
  const tc_shared<W> sh{a_stages, b_stages};
  // Uniform over the block. The grouped GEMMs take three of the four: forward (none, none), input
  // gradients (none, transposed) and weight gradients (transposed, none).
  if (!job.a_trans && !job.b_trans)
    gemm_tile_tc_oriented<false, false>(job, row0, col0, sh);
  else if (!job.a_trans)
    gemm_tile_tc_oriented<false, true>(job, row0, col0, sh);
  else if (!job.b_trans)
    gemm_tile_tc_oriented<true, false>(job, row0, col0, sh);
  else
    gemm_tile_tc_oriented<true, true>(job, row0, col0, sh);
#endif
}

// Dense: tiles (blockIdx.x: rows, blockIdx.y: columns), grid-stride in both.
template <class TA, class TB, class TC, class Acc>
__global__ void __launch_bounds__(gemm_threads) dense_gemm_kernel(tile_job<TA, TB, TC, Acc> job) {
  const index_t row_tiles = tiles_of(job.m, gemm_tm), col_tiles = tiles_of(job.n, gemm_tn);
  for (index_t ct = blockIdx.y; ct < col_tiles; ct += gridDim.y)
    for (index_t rt = blockIdx.x; rt < row_tiles; rt += gridDim.x) gemm_tile(job, rt * gemm_tm, ct * gemm_tn);
}

// The grouped kernels take one of two tile engines: its tile size, block size and tile function.
struct simt_engine {
  static constexpr int tm = gemm_tm, tn = gemm_tn, threads = gemm_threads;
  static constexpr const char* name = "simt";
  template <class TA, class TB, class TC, class Acc>
  __device__ static void tile(const tile_job<TA, TB, TC, Acc>& job, index_t row0, index_t col0) {
    gemm_tile(job, row0, col0);
  }
};
struct tensor_core_engine {
  static constexpr int tm = tc_tm, tn = tc_tn, threads = tc_threads;
  static constexpr const char* name = "tensor_core";
  template <class T, class TC>
  __device__ static void tile(const tile_job<T, T, TC, float>& job, index_t row0, index_t col0) {
    gemm_tile_tc(job, row0, col0);
  }
};
template <class TA, class TB, class Acc>
using tile_engine = std::conditional_t<tensor_core_operands<TA, TB, Acc>, tensor_core_engine, simt_engine>;

// Grouped rows: C[rows_g] = alpha · A[rows_g] · op(B_g) + beta · C[rows_g], B_g = b + g·b_stride.
// blockIdx.y strides over column tiles, blockIdx.x over the virtual row tiles of tiles.cuh, whose
// count the kernel reads from the device offsets.
template <class Engine, class TA, class TB, class TC, class Acc>
__global__ void __launch_bounds__(Engine::threads)
    grouped_gemm_kernel(tile_job<TA, TB, TC, Acc> job, int groups, const int* offsets, index_t b_stride) {
  const index_t virtual_tiles = group_tile_count(offsets, groups, Engine::tm);
  const index_t col_tiles = tiles_of(job.n, Engine::tn);
  for (index_t ct = blockIdx.y; ct < col_tiles; ct += gridDim.y)
    for (index_t vt = blockIdx.x; vt < virtual_tiles; vt += gridDim.x) {
      const group_tile t = find_group_tile(offsets, groups, Engine::tm, vt);
      if (t.row_begin >= t.row_end) continue;  // uniform over the block: no divergent __syncthreads
      tile_job<TA, TB, TC, Acc> g = job;
      g.a = job.a + t.row_begin * job.lda;
      g.b = job.b + index_t(t.group) * b_stride;
      g.c = job.c + t.row_begin * job.ldc;
      g.m = t.row_end - t.row_begin;
      Engine::tile(g, 0, ct * Engine::tn);
    }
}

// Grouped weight gradients: C_g[m, n] = alpha · A[rows_g]ᵀ · B[rows_g] + beta · C_g,
// C_g = c + g·c_stride. blockIdx.x: m × n tiles of C_g, blockIdx.y: groups (grid-stride). The depth
// of each product is the group's row count, read from the device offsets; empty groups give
// C_g = beta · C_g.
template <class Engine, class TA, class TB, class TC, class Acc>
__global__ void __launch_bounds__(Engine::threads)
    grouped_gemm_tn_kernel(tile_job<TA, TB, TC, Acc> job, int groups, const int* offsets, index_t c_stride) {
  const index_t row_tiles = tiles_of(job.m, Engine::tm), col_tiles = tiles_of(job.n, Engine::tn);
  for (index_t g = blockIdx.y; g < groups; g += gridDim.y)
    for (index_t t = blockIdx.x; t < row_tiles * col_tiles; t += gridDim.x) {
      const index_t r0 = offsets[g];
      tile_job<TA, TB, TC, Acc> q = job;
      q.a = job.a + r0 * job.lda;
      q.b = job.b + r0 * job.ldb;
      q.c = job.c + g * c_stride;
      q.k = index_t(offsets[g + 1]) - r0;
      Engine::tile(q, (t / col_tiles) * Engine::tm, (t % col_tiles) * Engine::tn);
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
  MOE_CUDA_LAUNCH(grid, gemm_threads, stream, dense_gemm_kernel<TA, TB, TC, Acc>)(job);
  check_launch("dense_gemm_kernel", "(m=", job.m, " n=", job.n, " k=", job.k, ")");
}

// target_blocks: about how many blocks fill the device (a few per SM).
template <class TA, class TB, class TC, class Acc>
void launch_grouped_gemm(cudaStream_t stream, const tile_job<TA, TB, TC, Acc>& job, int groups, const int* offsets,
                         index_t b_stride, index_t target_blocks) {
  if (groups <= 0 || job.n <= 0) return;
  using E = tile_engine<TA, TB, Acc>;
  const index_t col_tiles = tiles_of(job.n, E::tn);
  const dim3 grid(grid_dim(persistent_row_blocks(target_blocks, col_tiles), 65535), grid_dim(col_tiles, 65535));
  MOE_CUDA_LAUNCH(grid, E::threads, stream, grouped_gemm_kernel<E, TA, TB, TC, Acc>)(job, groups, offsets, b_stride);
  check_launch("grouped_gemm_kernel", "(", E::name, " groups=", groups, " n=", job.n, " k=", job.k, ")");
}

template <class TA, class TB, class TC, class Acc>
void launch_grouped_gemm_tn(cudaStream_t stream, const tile_job<TA, TB, TC, Acc>& job, int groups,
                            const int* offsets, index_t c_stride) {
  if (groups <= 0 || job.m <= 0 || job.n <= 0) return;
  using E = tile_engine<TA, TB, Acc>;
  const index_t tiles = tiles_of(job.m, E::tm) * tiles_of(job.n, E::tn);
  const dim3 grid(grid_dim(tiles, 1 << 30), grid_dim(groups, 65535));
  MOE_CUDA_LAUNCH(grid, E::threads, stream, grouped_gemm_tn_kernel<E, TA, TB, TC, Acc>)(job, groups, offsets, c_stride);
  check_launch("grouped_gemm_tn_kernel", "(", E::name, " groups=", groups, " m=", job.m, " n=", job.n, ")");
}

}  // namespace moe::cuda_detail
