// moe/core/math.hpp — elementary functions written out so that loops over them vectorise.
//
// The expert FFN's activations evaluate an exponential per hidden unit, forward and backward: for a
// GEGLU layer that is more elements than any other element-wise step. glibc's expf/tanhf are calls
// per element, which no loop around them can vectorise (before this header, tanhf and the expm1f
// it calls were 29 % of a GLaM training step on the host). exp_branch_free is straight-line float
// arithmetic and bit operations: g++ vectorises a loop over it at the baseline instruction set.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "moe/core/config.hpp"
#include "moe/core/numeric.hpp"

namespace moe {

namespace detail {

// `limit` where `beyond` holds, else z. A blend of bit patterns: g++ turns `beyond ? limit : z`
// followed by arithmetic into a branch (the arithmetic is folded on the constant side, and floating
// point that may trap is not speculated back), which stops the loop around it from vectorising.
MOE_ALWAYS_INLINE float select_bits(bool beyond, float limit, float z) {
  const std::uint32_t mask = 0u - std::uint32_t(beyond);
  return bits_float((float_bits(limit) & mask) | (float_bits(z) & ~mask));
}

// a if c else b; for float by select_bits, so that a vectorised loop keeps it a blend.
template <class R>
MOE_ALWAYS_INLINE R select(bool c, R a, R b) {
  if constexpr (std::is_same_v<R, float>) return select_bits(c, a, b);
  else return c ? a : b;
}

}  // namespace detail

// e^z in float, within 1.3 ulp of the exact value for z in [-87, 88] (tests/core_numeric_test.cpp
// sweeps it). Outside that range z is clamped: the result stays finite and normal (e^88 = 1.65e38,
// e^-87 = 1.65e-38) instead of overflowing to infinity or flushing to zero, which is what the
// activations want (x·σ(x) of a very negative x is then a tiny number, never ∞·0). NaN stays NaN.
//   z = n·ln 2 + r, n = round(z / ln 2), |r| ≤ ln 2 / 2   (Cody–Waite: ln 2 in two parts, so that
//                                                          n·ln2_hi is exact and r loses nothing)
//   e^r by its Taylor polynomial of degree 7 (remainder < 5.3e-9 relative, below float's 6e-8)
//   2^n built in the exponent field.
MOE_ALWAYS_INLINE float exp_branch_free(float z) {
  z = detail::select_bits(z > 88.0f, 88.0f, z);
  z = detail::select_bits(z < -87.0f, -87.0f, z);
  constexpr float round_shift = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer in the low bits
  const float shifted = z * 1.44269504088896341f + round_shift;
  const float n = shifted - round_shift;
  const float r = (z - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // n = bits(shifted) − bits(1.5·2^23) (|n| ≤ 127 sits in the mantissa); 2^n has exponent field n + 127.
  const std::uint32_t two_to_n = (detail::float_bits(shifted) - detail::float_bits(round_shift) + 127u) << 23;
  return p * detail::bits_float(two_to_n);
}

// e^z in the compute type R: exp_branch_free for float, std::exp otherwise (double keeps the
// library's float64 reference exact, for the gradient checks).
template <class R>
MOE_ALWAYS_INLINE R exp_of(R z) {
  if constexpr (std::is_same_v<R, float>) return exp_branch_free(z);
  else return std::exp(z);
}

// The logistic function σ(u) = 1/(1 + e^(−u)) and σ(u)·(1 − σ(u)), from one exponential of −|u| ≤ 0
// (it never overflows, in float or double, and nothing cancels): with e = e^(−|u|), q = 1/(1 + e),
//   σ = q for u ≥ 0, e·q for u < 0;   σ·(1 − σ) = e·q².
template <class R>
struct logistic_values {
  R s, ds;
};
template <class R>
MOE_ALWAYS_INLINE logistic_values<R> logistic(R u) {
  using std::fabs;
  const R e = exp_of(-fabs(u)), q = R(1) / (R(1) + e);
  return {q * detail::select(u < R(0), e, R(1)), e * q * q};
}

// The largest of v[begin, end) that exceeds `floor`, else floor; NaN never exceeds anything. Kept in
// eight lanes that take interleaved elements: one running maximum makes every element wait for the
// one before (a 4-cycle chain per element, and a stack round trip per element where the loop also
// calls a function), eight independent ones vectorise. Max is exact, so the order of the elements
// does not change the value; of two zeros it may keep either sign.
template <class R>
MOE_HOST_DEVICE R max_above(const R* v, int begin, int end, R floor) {
  constexpr int lanes = 8;
  R lane[lanes];
  for (int j = 0; j < lanes; ++j) lane[j] = floor;
  int i = begin;
  for (; i + lanes <= end; i += lanes)
    for (int j = 0; j < lanes; ++j) lane[j] = v[i + j] > lane[j] ? v[i + j] : lane[j];
  R m = floor;
  for (; i < end; ++i) m = v[i] > m ? v[i] : m;
  for (int j = 0; j < lanes; ++j) m = lane[j] > m ? lane[j] : m;
  return m;
}

}  // namespace moe
