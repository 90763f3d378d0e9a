// The launch-shape and tile-mapping arithmetic of the CUDA kernels (moe/cuda/tiles.cuh), checked on
// the host: no GPU and no CUDA toolkit needed, so this runs in CI on every build with CUDA targets.
#include <doctest/doctest.h>

#include <random>
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
