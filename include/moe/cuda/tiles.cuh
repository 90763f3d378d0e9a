// moe/cuda/tiles.cuh — launch-shape and tile-mapping arithmetic of the CUDA kernels.
//
// Plain MOE_HOST_DEVICE arithmetic with no CUDA API in it, so that a host test (compiled by any C++
// compiler, run where there is no GPU) checks the very functions the kernels use.
//
// Grouped GEMM tiles. Rows of group g are [offsets[g], offsets[g+1]) and the offsets live in device
// memory: the host never learns how many rows a group has, so it cannot enumerate the tiles. Instead
// every group g owns a fixed range of "virtual" row tiles starting at
//   first_tile(g) = g + offsets[g] / TM,
// which is computable from the offsets alone and strictly increasing in g. Group g needs
// ceil(rows_g / TM) tiles and owns first_tile(g+1) − first_tile(g) = 1 + ⌊off[g+1]/TM⌋ − ⌊off[g]/TM⌋
// ≥ ceil(rows_g / TM) of them (write off[g] = qa·TM + ra, off[g+1] = qb·TM + rb: rows_g < (qb−qa+1)·TM),
// so no group runs out; the surplus tiles (at most one per group) find no rows and return. The total,
// first_tile(groups) = groups + total_rows / TM, is the upper bound the issue asks for; the kernel
// reads it from the device and loops over it (a persistent grid), so the host needs no copy of the
// counts and the launch stays capturable in a CUDA graph.
#pragma once

#include <cstdint>

#include "moe/core/config.hpp"
#include "moe/core/numeric.hpp"

namespace moe::cuda_detail {

// Threads per block of the element-wise kernels (parallel_for).
inline constexpr int for_threads = 256;
// Blocks of a grid-stride loop over n elements: enough for one element per thread, at most
// `max_blocks` (the loop covers the rest). 0 for n <= 0 (nothing is launched).
MOE_HOST_DEVICE index_t grid_stride_blocks(index_t n, int threads, index_t max_blocks) {
  if (n <= 0) return 0;
  const index_t b = (n + threads - 1) / threads;
  return b < max_blocks ? b : max_blocks;
}

// The first virtual row tile of group g (see the top of this file).
MOE_HOST_DEVICE index_t group_first_tile(const int* offsets, int g, int tile_rows) {
  return index_t(g) + index_t(offsets[g]) / tile_rows;
}
// Virtual row tiles of all groups: groups + total_rows / tile_rows.
MOE_HOST_DEVICE index_t group_tile_count(const int* offsets, int groups, int tile_rows) {
  return group_first_tile(offsets, groups, tile_rows);
}

// Where virtual tile `tile` falls: its group and its first row (row_end = the group's end). A tile
// past its group's rows has row_begin >= row_end and does nothing.
struct group_tile {
  int group;
  index_t row_begin;
  index_t row_end;
};
// Binary search for the last group whose first tile is <= tile (first_tile is strictly increasing).
// Requires 0 <= tile < group_tile_count(offsets, groups, tile_rows) and groups >= 1.
MOE_HOST_DEVICE group_tile find_group_tile(const int* offsets, int groups, int tile_rows, index_t tile) {
  int lo = 0, hi = groups - 1;
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    if (group_first_tile(offsets, mid, tile_rows) <= tile)
      lo = mid;
    else
      hi = mid - 1;
  }
  const index_t local = tile - group_first_tile(offsets, lo, tile_rows);
  return {lo, index_t(offsets[lo]) + local * tile_rows, index_t(offsets[lo + 1])};
}

// Tiles of `extent` in steps of `tile` (columns of C, the m × n tiles of a weight gradient).
MOE_HOST_DEVICE index_t tiles_of(index_t extent, index_t tile) { return extent <= 0 ? 0 : (extent + tile - 1) / tile; }

// Blocks in x of a persistent grouped-GEMM grid: about `target_blocks` in all over `col_tiles`
// columns of tiles, at least one, at most the grid limit.
MOE_HOST_DEVICE index_t persistent_row_blocks(index_t target_blocks, index_t col_tiles) {
  index_t b = col_tiles > 0 ? target_blocks / col_tiles : target_blocks;
  if (b < 1) b = 1;
  return b < 65535 ? b : 65535;
}

// One K-deep panel of a GEMM operand staged for a tile: dst[p][i] = element (outer0 + i, p0 + p) of
// the operand for p < TK, i < W, widened to Acc, zero outside [0, outer) × [0, k). k_major: the
// element (i, p) is stored at src[p·ld + i] (op(A) with A transposed, or B not transposed); else at
// src[i·ld + p]. Thread `tid` of `threads` copies elements tid, tid + threads, …, and consecutive
// threads walk the stored matrix's contiguous dimension, so the loads coalesce. The grouped GEMM
// stages both operands with it (grouped_gemm.cuh).
template <int TK, int W, class T, class Acc>
MOE_HOST_DEVICE void stage_panel(Acc (*dst)[W + 1], const T* src, index_t ld, bool k_major, index_t outer0,
                                 index_t outer, index_t p0, index_t k, int tid, int threads) {
  for (int e = tid; e < TK * W; e += threads) {
    const int i = k_major ? e % W : e / TK, p = k_major ? e / W : e % TK;
    const index_t gi = outer0 + i, gp = p0 + p;
    Acc v = Acc(0);
    if (gi < outer && gp < k) v = convert<Acc>(k_major ? src[gp * ld + gi] : src[gi * ld + gp]);
    dst[p][i] = v;
  }
}

// N consecutive elements loaded or stored as one access of N·sizeof(T) bytes (16 bytes: LDG.128).
template <class T, int N>
struct alignas(sizeof(T) * N) row_piece {
  T v[N];
};

// One tile of a GEMM operand staged in its own type (the tensor-core grouped GEMM, grouped_gemm.cuh):
// dst[r][c] = conv(element (r0 + r, c0 + c)) for r < R, c < C, `zero` outside [0, rows) × [0, cols).
// Element (x, y) is stored at src[x·ld + y], or at src[y·ld + x] when `transposed`. Thread `tid` of
// `threads` takes e = tid, tid + threads, …, and consecutive e walk the stored matrix's contiguous
// dimension, so the loads coalesce.
template <int R, int C, int LD, class Dst, class T, class Conv>
MOE_HOST_DEVICE void stage_tile(Dst (*dst)[LD], const T* src, index_t ld, bool transposed, index_t r0, index_t rows,
                                index_t c0, index_t cols, Dst zero, Conv conv, int tid, int threads) {
  static_assert(LD >= C, "stage_tile: the row stride must hold a row");
  for (int e = tid; e < R * C; e += threads) {
    const int r = transposed ? e % R : e / C, c = transposed ? e / R : e % C;
    const index_t gr = r0 + r, gc = c0 + c;
    Dst v = zero;
    if (gr < rows && gc < cols) v = conv(transposed ? src[gc * ld + gr] : src[gr * ld + gc]);
    dst[r][c] = v;
  }
}

// stage_tile for a row-major source (element (x, y) at src[x·ld + y]) in pieces of V consecutive
// columns: every piece inside [0, rows) × [0, cols) is handed to copy_piece(dst_piece, src_piece), every
// piece wholly outside to copy_piece(dst_piece, nullptr) (zeros), and a piece cut by the last column
// is written element by element (zeros past the edge). The caller guarantees that src, ld and c0 keep
// every piece aligned to V elements (src aligned to V·sizeof(T) bytes, ld and c0 multiples of V).
// The copier is what differs between callers: one V-element load here (load_piece), an asynchronous
// copy in the pipelined tensor-core GEMM (grouped_gemm.cuh).
template <int R, int C, int LD, int V, class Dst, class T, class Conv, class CopyPiece>
MOE_HOST_DEVICE void stage_tile_pieces(Dst (*dst)[LD], const T* src, index_t ld, index_t r0, index_t rows, index_t c0,
                                       index_t cols, Dst zero, Conv conv, int tid, int threads, CopyPiece copy_piece) {
  static_assert(C % V == 0 && LD >= C, "stage_tile_pieces: a row of the tile is whole pieces");
  constexpr int per_row = C / V;
  for (int e = tid; e < R * per_row; e += threads) {
    const int r = e / per_row, c = (e - r * per_row) * V;
    const index_t gr = r0 + r, gc = c0 + c;
    if (gr < rows && gc + V <= cols) {
      copy_piece(&dst[r][c], src + gr * ld + gc);
    } else if (gr >= rows || gc >= cols) {
      copy_piece(&dst[r][c], static_cast<const T*>(nullptr));
    } else {
      for (int j = 0; j < V; ++j) dst[r][c + j] = gc + j < cols ? conv(src[gr * ld + gc + j]) : zero;
    }
  }
}
// The synchronous copier: one V-element load (LDG.128 for 16 bytes) converted element by element,
// or V zeros.
template <int V, class Dst, class T, class Conv>
struct load_piece {
  Dst zero;
  Conv conv;
  MOE_HOST_DEVICE void operator()(Dst* d, const T* s) const {
    if (!s) {
      for (int j = 0; j < V; ++j) d[j] = zero;
      return;
    }
    const row_piece<T, V> piece = *reinterpret_cast<const row_piece<T, V>*>(s);
    for (int j = 0; j < V; ++j) d[j] = conv(piece.v[j]);
  }
};
template <int R, int C, int LD, int V, class Dst, class T, class Conv>
MOE_HOST_DEVICE void stage_tile_pieces(Dst (*dst)[LD], const T* src, index_t ld, index_t r0, index_t rows, index_t c0,
                                       index_t cols, Dst zero, Conv conv, int tid, int threads) {
  stage_tile_pieces<R, C, LD, V>(dst, src, ld, r0, rows, c0, cols, zero, conv, tid, threads,
                                 load_piece<V, Dst, T, Conv>{zero, conv});
}
// Whether stage_tile_pieces may read a row-major operand at `src` with row stride `ld` in pieces of V.
template <int V, class T>
MOE_HOST_DEVICE bool pieces_aligned(const T* src, index_t ld) {
  return ld % V == 0 && reinterpret_cast<std::uintptr_t>(src) % (sizeof(T) * V) == 0;
}

// group_row_sums: a block of group_sum_threads threads covers `lanes` adjacent columns (a power of
// two, at most 32: coalesced reads of a row) and threads / lanes "row lanes"; the rows of a group
// are cut into chunks of row_lanes · group_sum_rows_per_thread rows, one block per (group, chunk,
// column tile), so a long group still spreads over many blocks. Each block writes one partial sum
// per column; a second pass adds a group's partials in chunk order.
inline constexpr int group_sum_threads = 256;
inline constexpr int group_sum_rows_per_thread = 16;
// The shortest chunk (32 columns per block: 8 row lanes × 16 rows), which bounds the partials.
inline constexpr index_t group_sum_min_chunk_rows = index_t(group_sum_threads / 32) * group_sum_rows_per_thread;
struct group_sum_shape {
  int lanes = 1;         // columns per block
  int row_lanes = 1;     // threads per column
  index_t chunk_rows = 0;
  index_t chunks = 0;    // per group
  index_t col_tiles = 0;
  index_t blocks = 0;    // groups · chunks · col_tiles
};
MOE_HOST_DEVICE group_sum_shape group_sum_layout(int groups, index_t rows, index_t cols) {
  group_sum_shape s;
  while (s.lanes < 32 && s.lanes < cols) s.lanes *= 2;
  s.row_lanes = group_sum_threads / s.lanes;
  s.chunk_rows = index_t(s.row_lanes) * group_sum_rows_per_thread;
  s.chunks = rows > 0 ? (rows + s.chunk_rows - 1) / s.chunk_rows : 0;
  s.col_tiles = cols > 0 ? (cols + s.lanes - 1) / s.lanes : 0;
  s.blocks = index_t(groups > 0 ? groups : 0) * s.chunks * s.col_tiles;
  return s;
}

// Row pieces of the dispatchers' gathers (rows.cuh).
// Elements of T in a 16-byte piece.
template <class T>
inline constexpr int row_piece_elements = 16 / int(sizeof(T)) > 0 ? 16 / int(sizeof(T)) : 1;

// Whether rows of d elements at these base addresses can be read in pieces of N elements: d a
// multiple of N and every base aligned to its own N-element piece (rows of another element type,
// like a float output of bf16 rows, need their own wider alignment).
template <int N, class... P>
bool pieces_fit(index_t d, const P*... bases) {
  if (d % N != 0) return false;
  return ((reinterpret_cast<std::uintptr_t>(bases) % (sizeof(P) * N) == 0) && ...);
}

}  // namespace moe::cuda_detail
