// Emulation shim (tests/emu): WMMA on the host. A fragment holds the whole 16×16 tile in float in
// every lane; loads, stores and MMAs are warp collectives (all 32 lanes, same arguments), and the
// PTX ISA's alignment rules are checked: a 256-bit aligned pointer and a leading dimension that is a
// multiple of 16 bytes. One lane writes a stored tile, so lanes that read it back need a
// __syncwarp, as on a GPU.
#pragma once

#include <source_location>
#include <string>
#include <type_traits>

#include "moe_emu/device.hpp"
#include "moe_emu/half_types.hpp"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  float v[rows][cols];
};

namespace detail {
template <class T>
MOE_EMU_INTERNAL void check_operand(const char* what, const T* p, unsigned ldm, std::source_location loc) {
  const std::string who = ::moe_emu::this_block().who();
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0)
    ::moe_emu::die(who + ": " + what + " at " + ::moe_emu::where(loc) + ": pointer not 256-bit aligned");
  if ((std::size_t(ldm) * sizeof(T)) % 16 != 0)
    ::moe_emu::die(who + ": " + what + " at " + ::moe_emu::where(loc) + ": ldm " + std::to_string(ldm) +
                   " is not a multiple of 16 bytes");
  ::moe_emu::require_uniform(what, p, loc);
  ::moe_emu::require_uniform(what, ldm, loc);
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float value) {
  for (auto& row : f.v)
    for (float& x : row) x = value;
}

template <class Use, int M, int N, int K, class T, class Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm,
                      std::source_location loc = std::source_location::current()) {
  static_assert(!std::is_void_v<Layout>, "an accumulator load takes a layout_t");
  detail::check_operand("wmma::load_matrix_sync", p, ldm, loc);
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.v[r][c] = float(std::is_same_v<Layout, row_major> ? p[std::size_t(r) * ldm + std::size_t(c)]
                                                          : p[std::size_t(c) * ldm + std::size_t(r)]);
}

// Every lane's fragments hold the same tiles (loads are uniform over the warp), so the product is
// computed once per warp and copied to each lane.
template <int M, int N, int K, class TA, class LA, class TB, class LB>
MOE_EMU_INTERNAL void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, float>& c,
              std::source_location loc = std::source_location::current()) {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator does the 16x16x16 shapes");
  ::moe_emu::warp_barrier("wmma::mma_sync", 0xffffffffu, loc);
  ::moe_emu::warp_state& w = ::moe_emu::this_warp();
  if (w.mma_generation != w.generation) {
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        float s = c.v[i][j];
        for (int p = 0; p < K; ++p) s += a.v[i][p] * b.v[p][j];
        w.mma[i][j] = s;
      }
    w.mma_generation = w.generation;
  }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) d.v[i][j] = w.mma[i][j];
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout,
                       std::source_location loc = std::source_location::current()) {
  detail::check_operand("wmma::store_matrix_sync", p, ldm, loc);
  if (::moe_emu::lane_id() != 0) return;
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      (layout == mem_row_major ? p[std::size_t(r) * ldm + std::size_t(c)] : p[std::size_t(c) * ldm + std::size_t(r)]) =
          f.v[r][c];
}

}  // namespace nvcuda::wmma
