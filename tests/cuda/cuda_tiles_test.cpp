// The launch-shape and tile-mapping arithmetic of the CUDA kernels (moe/cuda/tiles.cuh), checked on
// the host: no GPU and no CUDA toolkit needed, so this runs in CI on every build with CUDA targets.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include <moe/cuda/tiles.cuh>

namespace cd = moe::cuda_detail;

namespace {

// Walks every virtual tile as the grouped GEMM kernel does and counts how often each row is
// covered, checking that a tile's rows lie inside its group.
void check_mapping(const std::vector<int>& offsets, int tile_rows) {
  const int groups = int(offsets.size()) - 1;
  const moe::index_t total = offsets.back();
  const moe::index_t tiles = cd::group_tile_count(offsets.data(), groups, tile_rows);
  CHECK(tiles == groups + total / tile_rows);  // the upper bound: groups + rows / TM
  std::vector<int> covered(static_cast<std::size_t>(total), 0);
  std::vector<moe::index_t> used_tiles(static_cast<std::size_t>(groups), 0);
  for (moe::index_t t = 0; t < tiles; ++t) {
    const cd::group_tile gt = cd::find_group_tile(offsets.data(), groups, tile_rows, t);
    REQUIRE(gt.group >= 0);
    REQUIRE(gt.group < groups);
    CHECK(gt.row_end == offsets[std::size_t(gt.group) + 1]);
    CHECK(gt.row_begin >= offsets[std::size_t(gt.group)]);
    if (gt.row_begin >= gt.row_end) continue;
    ++used_tiles[std::size_t(gt.group)];
    const moe::index_t end = std::min<moe::index_t>(gt.row_begin + tile_rows, gt.row_end);
    for (moe::index_t r = gt.row_begin; r < end; ++r) ++covered[std::size_t(r)];
  }
  for (moe::index_t r = 0; r < total; ++r) {
    INFO("row ", r);
    CHECK(covered[std::size_t(r)] == 1);  // every row exactly once
  }
  for (int g = 0; g < groups; ++g) {
    const moe::index_t rows = offsets[std::size_t(g) + 1] - offsets[std::size_t(g)];
    CHECK(used_tiles[std::size_t(g)] == (rows + tile_rows - 1) / tile_rows);  // no tile wasted on rows
  }
}

}  // namespace

TEST_CASE("grouped GEMM tiles cover every row once: hand-made offsets") {
  check_mapping({0, 0}, 64);                       // one empty group
  check_mapping({0, 1}, 64);                       // one row
  check_mapping({0, 64, 128}, 64);                 // exact tiles
  check_mapping({0, 0, 65, 65, 65, 200, 200}, 64); // empty groups between full ones
  check_mapping({0, 63, 64, 127, 129}, 64);        // groups straddling tile boundaries
  check_mapping({0, 5, 5, 5, 5, 6}, 4);
}

TEST_CASE("grouped GEMM tiles cover every row once: random offsets") {
  std::mt19937_64 gen(7);
  for (int trial = 0; trial < 200; ++trial) {
    const int groups = 1 + int(gen() % 70);
    const int tile_rows = trial % 3 == 0 ? 64 : 1 + int(gen() % 40);
    std::vector<int> offsets(static_cast<std::size_t>(groups) + 1, 0);
    for (int g = 0; g < groups; ++g) {
      const int rows = gen() % 4 == 0 ? 0 : int(gen() % 300);
      offsets[std::size_t(g) + 1] = offsets[std::size_t(g)] + rows;
    }
    INFO("trial ", trial, " groups ", groups, " tile_rows ", tile_rows);
    check_mapping(offsets, tile_rows);
  }
}

TEST_CASE("every token routed to one expert: the mapping still covers all rows") {
  // E = 64 experts, T·k = 4096 rows, all in expert 17 (the worst case the buffers are sized for).
  std::vector<int> offsets(65, 0);
  for (int g = 18; g <= 64; ++g) offsets[std::size_t(g)] = 4096;
  check_mapping(offsets, 64);
}

TEST_CASE("launch shapes") {
  CHECK(cd::grid_stride_blocks(0, 256, 100) == 0);
  CHECK(cd::grid_stride_blocks(-5, 256, 100) == 0);
  CHECK(cd::grid_stride_blocks(1, 256, 100) == 1);
  CHECK(cd::grid_stride_blocks(256, 256, 100) == 1);
  CHECK(cd::grid_stride_blocks(257, 256, 100) == 2);
  CHECK(cd::grid_stride_blocks(moe::index_t(1) << 40, 256, 4224) == 4224);
  CHECK(cd::tiles_of(0, 64) == 0);
  CHECK(cd::tiles_of(1, 64) == 1);
  CHECK(cd::tiles_of(128, 64) == 2);
  CHECK(cd::tiles_of(129, 64) == 3);
  CHECK(cd::persistent_row_blocks(528, 4) == 132);
  CHECK(cd::persistent_row_blocks(528, 1000) == 1);
  CHECK(cd::persistent_row_blocks(1 << 30, 1) == 65535);
  CHECK(cd::persistent_row_blocks(528, 0) == 528);
}

TEST_CASE("group_row_sums layout: every (group, row, column) falls in exactly one block and lane") {
  for (const auto& [groups, rows, cols] : {std::tuple{1, 32768, 8}, std::tuple{3, 1000, 1}, std::tuple{2, 4097, 33},
                                          std::tuple{7, 5, 256}, std::tuple{1, 1, 3}}) {
    CAPTURE(groups);
    CAPTURE(rows);
    CAPTURE(cols);
    const cd::group_sum_shape sh = cd::group_sum_layout(groups, rows, cols);
    CHECK(sh.lanes >= 1);
    CHECK(sh.lanes <= 32);
    CHECK((sh.lanes & (sh.lanes - 1)) == 0);
    CHECK(sh.lanes * sh.row_lanes == cd::group_sum_threads);
    CHECK((sh.row_lanes & (sh.row_lanes - 1)) == 0);  // the block's tree halves it down to 1
    CHECK(sh.blocks == groups * sh.chunks * sh.col_tiles);
    CHECK(sh.chunk_rows >= cd::group_sum_min_chunk_rows);  // the scratch reserve relies on it
    // Walk the kernel's index arithmetic on the host.
    std::vector<int> seen(std::size_t(groups) * std::size_t(rows) * std::size_t(cols), 0);
    for (moe::index_t b = 0; b < sh.blocks; ++b) {
      const moe::index_t tile = b % sh.col_tiles, rest = b / sh.col_tiles;
      const moe::index_t chunk = rest % sh.chunks, g = rest / sh.chunks;
      for (int t = 0; t < cd::group_sum_threads; ++t) {
        const int lane = t % sh.lanes, row_lane = t / sh.lanes;
        const moe::index_t c = tile * sh.lanes + lane;
        const moe::index_t r0 = chunk * sh.chunk_rows, r1 = std::min<moe::index_t>(rows, r0 + sh.chunk_rows);
        if (c >= cols) continue;
        for (moe::index_t r = r0 + row_lane; r < r1; r += sh.row_lanes) ++seen[std::size_t((g * rows + r) * cols + c)];
      }
    }
    CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
  }
  CHECK(cd::group_sum_layout(4, 0, 8).blocks == 0);
  CHECK(cd::group_sum_layout(0, 100, 8).blocks == 0);
}

TEST_CASE("row pieces: 16 bytes of each element type, used only when the width and every base allow") {
  CHECK(cd::row_piece_elements<double> == 2);
  CHECK(cd::row_piece_elements<float> == 4);
  CHECK(cd::row_piece_elements<std::uint16_t> == 8);  // bf16 and fp16 are two bytes
  alignas(64) static float f[64];
  alignas(64) static std::uint16_t h[64];
  CHECK(cd::pieces_fit<8>(64, h, h + 8));
  CHECK_FALSE(cd::pieces_fit<8>(60, h));      // width not a multiple of the piece
  CHECK_FALSE(cd::pieces_fit<8>(64, h + 1));  // a base off by one element
  CHECK(cd::pieces_fit<8>(64, h, f));         // a float output of bf16 rows: 32-byte pieces...
  CHECK_FALSE(cd::pieces_fit<8>(64, h, f + 4));  // ...so 16-byte alignment is not enough for it
  CHECK(cd::pieces_fit<1>(13, h + 3, f + 1));
}

TEST_CASE("stage_tile: the tensor-core operand tiles, both storage orders, edge tiles zero-filled") {
  constexpr int R = 32, C = 16, LD = C + 8;
  const moe::index_t rows = 45, cols = 21, ld = 50;
  std::vector<float> src(std::size_t(ld * ld));
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = float(i) + 0.5f;  // distinct, never zero
  for (const bool transposed : {false, true})
    for (const auto& [r0, c0] : {std::pair<moe::index_t, moe::index_t>{0, 0}, {32, 16}, {32, 0}}) {
      CAPTURE(transposed);
      CAPTURE(r0);
      CAPTURE(c0);
      float dst[R][LD];
      for (auto& row : dst)
        for (float& v : row) v = -1.0f;
      for (int tid = 0; tid < 64; ++tid)  // every thread of a 64-thread block, one after another
        cd::stage_tile<R, C, LD>(dst, src.data(), ld, transposed, r0, rows, c0, cols, 0.0f,
                                 [](float v) { return 2.0f * v; }, tid, 64);
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < LD; ++c) {
          if (c >= C) {  // padding untouched
            REQUIRE(dst[r][c] == -1.0f);
            continue;
          }
          const moe::index_t gr = r0 + r, gc = c0 + c;
          const float want = gr < rows && gc < cols ? 2.0f * src[std::size_t(transposed ? gc * ld + gr : gr * ld + gc)]
                                                    : 0.0f;
          REQUIRE(dst[r][c] == want);
        }
    }
}

TEST_CASE("stage_tile_pieces: 8-element loads inside the operand, element by element at its edges") {
  constexpr int R = 32, C = 32, LD = C + 8, V = 8;
  const moe::index_t ld = 48;  // a multiple of V
  alignas(64) static float src[64 * 48];
  for (int i = 0; i < 64 * 48; ++i) src[i] = float(i) + 0.25f;  // distinct, never zero
  CHECK(cd::pieces_aligned<V>(src, ld));
  CHECK_FALSE(cd::pieces_aligned<V>(src + 1, ld));
  CHECK_FALSE(cd::pieces_aligned<V>(src, ld + 1));
  // cols 44: the piece at columns 40..47 of the second column tile is cut by the edge
  for (const auto& [r0, c0, rows, cols] : {std::tuple<moe::index_t, moe::index_t, moe::index_t, moe::index_t>{0, 0, 64, 48},
                                          {32, 16, 45, 44}, {32, 32, 64, 41}}) {
    CAPTURE(r0);
    CAPTURE(c0);
    CAPTURE(rows);
    CAPTURE(cols);
    float dst[R][LD];
    for (auto& row : dst)
      for (float& v : row) v = -1.0f;
    for (int tid = 0; tid < 64; ++tid)
      cd::stage_tile_pieces<R, C, LD, V>(dst, src, ld, r0, rows, c0, cols, 0.0f, [](float v) { return 2.0f * v; },
                                         tid, 64);
    // The same tile element by element, for comparison.
    float ref[R][LD];
    for (auto& row : ref)
      for (float& v : row) v = -1.0f;
    for (int tid = 0; tid < 64; ++tid)
      cd::stage_tile<R, C, LD>(ref, src, ld, false, r0, rows, c0, cols, 0.0f, [](float v) { return 2.0f * v; }, tid, 64);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < LD; ++c) REQUIRE(dst[r][c] == ref[r][c]);

    // With a copier of its own (the pipelined tensor-core GEMM's is an asynchronous copy): it gets
    // every whole piece and every piece wholly outside (null source), and the tile comes out the same.
    int whole = 0, outside = 0;
    const auto copier = [&](float* d, const float* p) {
      ++(p ? whole : outside);
      for (int j = 0; j < V; ++j) d[j] = p ? 2.0f * p[j] : 0.0f;
    };
    float via[R][LD];
    for (auto& row : via)
      for (float& v : row) v = -1.0f;
    for (int tid = 0; tid < 64; ++tid)
      cd::stage_tile_pieces<R, C, LD, V>(via, src, ld, r0, rows, c0, cols, 0.0f, [](float v) { return 2.0f * v; },
                                         tid, 64, copier);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < LD; ++c) REQUIRE(via[r][c] == ref[r][c]);
    // Pieces: R · C/V in all; the cut ones (columns past `cols` in rows inside) go element by element.
    const int rows_in = int(std::clamp<moe::index_t>(rows - r0, 0, R));
    const int cut = (c0 + C > cols && cols > c0 && (cols - c0) % V != 0) ? rows_in : 0;
    CHECK(whole + outside + cut == R * C / V);
    CHECK(whole == rows_in * int(std::clamp<moe::index_t>((cols - c0) / V, 0, C / V)));
  }
}

TEST_CASE("stage_panel: every (outer, k) element of a GEMM panel, both storage orders, zero outside") {
  constexpr int TK = 16, W = 64, threads = 256;
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> value(0.5f, 2.0f);
  for (const bool k_major : {false, true}) {
    // An operand with outer extent 70 and depth 21 (neither a multiple of the tile), stored with
    // leading dimension ld ≥ its contiguous extent.
    const moe::index_t outer = 70, k = 21, ld = k_major ? 75 : 23;
    const moe::index_t stored_rows = k_major ? k : outer;
    std::vector<moe::bfloat16> src(static_cast<std::size_t>(stored_rows * ld));
    for (auto& v : src) v = moe::bfloat16(value(gen));
    auto at = [&](moe::index_t i, moe::index_t p) {
      return float(src[static_cast<std::size_t>(k_major ? p * ld + i : i * ld + p)]);
    };
    for (const moe::index_t outer0 : {moe::index_t(0), moe::index_t(64)})
      for (const moe::index_t p0 : {moe::index_t(0), moe::index_t(16)}) {
        CAPTURE(k_major);
        CAPTURE(outer0);
        CAPTURE(p0);
        float dst[TK][W + 1];
        for (auto& row : dst)
          for (float& v : row) v = -1.0f;  // every element must be written
        for (int tid = 0; tid < threads; ++tid)
          cd::stage_panel<TK, W>(dst, src.data(), ld, k_major, outer0, outer, p0, k, tid, threads);
        for (int p = 0; p < TK; ++p)
          for (int i = 0; i < W; ++i) {
            const moe::index_t gi = outer0 + i, gp = p0 + p;
            const float want = gi < outer && gp < k ? at(gi, gp) : 0.0f;
            REQUIRE(dst[p][i] == want);
          }
      }
  }
}
