// moe/cuda/rows.cuh — the dispatchers' row gathers on the GPU with 16-byte vector accesses.
//
// The dispatch stages move whole rows of d_model elements: permute (token → expert rows), combine
// (expert rows → token, gate-weighted), and their backwards. They are memory-bound, so their speed is
// the bytes per load: one thread per 16-byte piece of a row (8 bf16/fp16, 4 float, 2 double) turns
// each into one 128-bit load and store (LDG.128/STG.128), against one element per thread in the
// generic loops of moe/dispatch/rows.hpp. Rows whose width or base address is not a multiple of 16
// bytes take the same kernels with one element per piece.
//
// Same arithmetic, same order as the generic loops: a token's pairs are summed in choice order for
// every element (no atomics), and a pair's gate-gradient dot product is reduced in a fixed
// warp-shuffle tree, so two runs give the same bits.
#pragma once

#include <cstdint>
#include <type_traits>

#include "moe/core/config.hpp"
#include "moe/core/numeric.hpp"
#include "moe/cuda/tiles.cuh"

namespace moe::cuda_detail {

// Calls launch(std::integral_constant<int, N>) with N = 16 bytes' worth of T when the rows fit in
// such pieces, else N = 1.
template <class T, class Launch>
void by_pieces(bool fits, Launch&& launch) {
  if (fits)
    launch(std::integral_constant<int, row_piece_elements<T>>{});
  else
    launch(std::integral_constant<int, 1>{});
}

// xp[r] = scale · x[row_token[r]] for rows of an expert (row_expert[r] >= 0): scale = pair_scale of
// the row's pair, or 1 without pair_scale; zeros where row_token[r] < 0 (an empty padded slot); rows
// that belong to no expert are left alone.
template <class T, class R, int N>
__global__ void __launch_bounds__(for_threads)
    gather_rows_kernel(index_t rows, index_t d, const int* row_token, const int* row_expert, const int* row_pair,
                       const R* pair_scale, const T* x, T* xp) {
  using piece = row_piece<T, N>;
  const index_t pieces = d / N;
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < rows * pieces;
       i += index_t(blockDim.x) * gridDim.x) {
    const index_t r = i / pieces, c = i - r * pieces;
    if (row_expert[r] < 0) continue;
    const int t = row_token[r];
    piece out;
    if (t < 0) {
      for (int j = 0; j < N; ++j) out.v[j] = T(0.0f);
    } else {
      out = reinterpret_cast<const piece*>(x + index_t(t) * d)[c];
      if (pair_scale) {
        const R g = pair_scale[row_pair[r]];
        for (int j = 0; j < N; ++j) out.v[j] = convert<T>(g * R(widen(out.v[j])));
      }
    }
    reinterpret_cast<piece*>(xp + r * d)[c] = out;
  }
}

// y[t] = Σ_{q in [offsets[t], offsets[t+1])} g_q · rows[pair_row[pairs[q]]], g_q = gate[pairs[q]]
// (1 without gate), summed in q order in R; zero for a token with no pairs.
template <class T, class R, class Out, int N>
__global__ void __launch_bounds__(for_threads)
    combine_rows_kernel(index_t tokens, index_t d, const int* offsets, const int* pairs, const int* pair_row,
                        const R* gate, const T* rows, Out* y) {
  using in_piece = row_piece<T, N>;
  using out_piece = row_piece<Out, N>;
  const index_t pieces = d / N;
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < tokens * pieces;
       i += index_t(blockDim.x) * gridDim.x) {
    const index_t t = i / pieces, c = i - t * pieces;
    R acc[N];
    for (int j = 0; j < N; ++j) acc[j] = 0;
    for (int q = offsets[t]; q < offsets[t + 1]; ++q) {
      const int p = pairs[q];
      const R g = gate ? gate[p] : R(1);
      const in_piece o = reinterpret_cast<const in_piece*>(rows + index_t(pair_row[p]) * d)[c];
      for (int j = 0; j < N; ++j) acc[j] += g * R(widen(o.v[j]));
    }
    out_piece out;
    for (int j = 0; j < N; ++j) out.v[j] = convert<Out>(acc[j]);
    reinterpret_cast<out_piece*>(y + t * d)[c] = out;
  }
}

// dgate[p] = <dy[p / K], rows[pair_row[p]]> (0 for a dropped pair): one warp per pair, lanes over
// the pieces of the row, then a fixed butterfly over the lanes.
inline constexpr int pair_dot_warps = for_threads / 32;
template <class T, class R, int N>
__global__ void __launch_bounds__(for_threads)
    pair_row_dots_kernel(index_t pair_count, int K, index_t d, const int* pair_row, const T* dy, const T* rows,
                         R* dgate) {
  using piece = row_piece<T, N>;
  const index_t pieces = d / N;
  const int lane = int(threadIdx.x) % 32;
  const index_t warps = index_t(gridDim.x) * pair_dot_warps;
  for (index_t p = blockIdx.x * index_t(pair_dot_warps) + threadIdx.x / 32; p < pair_count; p += warps) {
    const int r = pair_row[p];  // the same for every lane of the warp: no divergence
    R acc = 0;
    if (r >= 0) {
      const piece* a = reinterpret_cast<const piece*>(dy + (p / K) * d);
      const piece* b = reinterpret_cast<const piece*>(rows + index_t(r) * d);
      for (index_t c = lane; c < pieces; c += 32) {
        const piece u = a[c], v = b[c];
        for (int j = 0; j < N; ++j) acc += R(widen(u.v[j])) * R(widen(v.v[j]));
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    if (lane == 0) dgate[p] = acc;
  }
}

}  // namespace moe::cuda_detail
