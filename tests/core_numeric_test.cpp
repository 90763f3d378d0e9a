// Tests of moe/core/numeric.hpp: the 16-bit storage types against references computed
// independently in double arithmetic (scale to an integer grid, std::nearbyint ties to even), and the
// conversion helpers and type traits.
#include <doctest/doctest.h>

#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ios>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <moe/core/math.hpp>
#include <moe/core/numeric.hpp>
#include <moe/experts/activations.hpp>

namespace {

std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Format of a binary floating-point type with `mantissa_bits` stored bits and minimum normal
// exponent `min_exp`; `overflow` is the first power of two past the largest finite value.
struct format {
  int mantissa_bits;
  int min_exp;
  double overflow;
};
constexpr format half_format{10, -14, 65536.0};
constexpr format bf16_format{7, -126, 0x1p128};

// The value x rounds to (round to nearest, ties to even), as a double; ±inf on overflow.
// Uses only double arithmetic: |x| / quantum is exact (power-of-two scaling) and nearbyint rounds
// ties to the even integer, i.e. to the even mantissa.
double reference_round(double x, format fmt) {
  if (std::isnan(x) || std::isinf(x) || x == 0) return x;
  const double mag = std::fabs(x);
  int e2;
  std::frexp(mag, &e2);  // 2^(e2-1) <= mag < 2^e2
  const int e = std::max(e2 - 1, fmt.min_exp);
  const double quantum = std::ldexp(1.0, e - fmt.mantissa_bits);
  double r = std::nearbyint(mag / quantum) * quantum;
  // IEEE overflow: anything that rounds (at unbounded exponent) to >= 2^emax+1 becomes inf.
  if (r >= fmt.overflow) r = std::numeric_limits<double>::infinity();
  return std::copysign(r, x);
}

// Independent decoding of binary16 bits.
double reference_half_value(std::uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  double v;
  if (exp == 0x1f) v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (exp == 0) v = std::ldexp(double(mant), -24);
  else v = std::ldexp(double(1024 + mant), exp - 25);
  return sign ? -v : v;
}

bool half_is_nan(std::uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }
bool bf16_is_nan(std::uint16_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0; }

// Checks that float16(x) (x float or double) is the correctly rounded value of x.
template <class X>
void check_half_rounds(X x) {
  const std::uint16_t h = moe::float16(x).bits;
  const double want = reference_round(double(x), half_format);
  const double got = reference_half_value(h);
  INFO("x = " << double(x) << " bits 0x" << std::hex << h);
  REQUIRE(got == want);
  REQUIRE(std::signbit(got) == std::signbit(want));
}

template <class X>
void check_bf16_rounds(X x) {
  const moe::bfloat16 b(x);
  const double want = reference_round(double(x), bf16_format);
  // bf16 bits are the top half of a float: decoding through float is exact and independent of
  // the rounding code under test.
  const double got = double(float_of(std::uint32_t(b.bits) << 16));
  INFO("x = " << double(x) << " bits 0x" << std::hex << b.bits);
  REQUIRE(got == want);
  REQUIRE(std::signbit(got) == std::signbit(want));
}

}  // namespace

TEST_CASE("numeric: storage types are 16-bit, trivially copyable values") {
  static_assert(sizeof(moe::bfloat16) == 2 && sizeof(moe::float16) == 2);
  static_assert(std::is_trivially_copyable_v<moe::bfloat16> && std::is_trivially_copyable_v<moe::float16>);
  static_assert(std::is_standard_layout_v<moe::bfloat16> && std::is_standard_layout_v<moe::float16>);
  CHECK(moe::bfloat16().bits == 0);
  CHECK(moe::float16().bits == 0);
  CHECK(moe::float16::from_bits(0x3c00).bits == 0x3c00);
  CHECK(float(moe::float16::from_bits(0x3c00)) == 1.0f);
  CHECK(float(moe::bfloat16::from_bits(0x3f80)) == 1.0f);
}

TEST_CASE("numeric: float16 to_float decodes all 65536 patterns exactly") {
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto h = std::uint16_t(i);
    const float f = moe::float16::to_float(h);
    const double want = reference_half_value(h);
    INFO("bits 0x" << std::hex << i);
    if (half_is_nan(h)) {
      REQUIRE(std::isnan(f));
      REQUIRE(std::signbit(f) == bool(h & 0x8000u));
    } else {
      REQUIRE(double(f) == want);
      REQUIRE(std::signbit(f) == std::signbit(want));
      REQUIRE(double(float(moe::float16::from_bits(h))) == want);
    }
  }
}

TEST_CASE("numeric: float16 from_float round-trips every non-NaN pattern, NaN stays NaN") {
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto h = std::uint16_t(i);
    const float f = moe::float16::to_float(h);
    const std::uint16_t back = moe::float16::from_float(f);
    INFO("bits 0x" << std::hex << i);
    if (half_is_nan(h)) {
      REQUIRE(half_is_nan(back));
      REQUIRE((back & 0x8000u) == (h & 0x8000u));
    } else {
      REQUIRE(back == h);  // includes -0 (0x8000) and ±inf
    }
  }
}

TEST_CASE("numeric: float16 midpoints between consecutive halves round to the even one") {
  // Every pair of consecutive non-negative finite halves (plus 65504 -> inf), both signs.
  for (std::uint32_t lo = 0; lo < 0x7c00u; ++lo) {
    const double a = reference_half_value(std::uint16_t(lo));
    const double b = lo + 1 == 0x7c00u ? 65536.0 : reference_half_value(std::uint16_t(lo + 1));
    const double mid = (a + b) / 2;  // exact: needs one more bit than a half has
    const float midf = float(mid);
    REQUIRE(double(midf) == mid);
    const std::uint16_t even = (lo & 1u) == 0 ? std::uint16_t(lo) : std::uint16_t(lo + 1);
    INFO("lo 0x" << std::hex << lo);
    REQUIRE(moe::float16::from_float(midf) == even);
    REQUIRE(moe::float16::from_float(-midf) == (even | 0x8000u));
    // One float ulp either side of the midpoint decides the direction.
    REQUIRE(moe::float16::from_float(std::nextafter(midf, 0.0f)) == lo);
    REQUIRE(moe::float16::from_float(std::nextafter(midf, 1e30f)) == lo + 1);
  }
}

TEST_CASE("numeric: float16 subnormals, overflow threshold, zeros, infinities and NaN") {
  using moe::float16;
  const float tiny = std::ldexp(1.0f, -24);  // smallest subnormal half
  CHECK(float16::from_float(tiny) == 0x0001);
  CHECK(float16::from_float(tiny / 2) == 0x0000);  // exact tie with 0: even is 0
  CHECK(float16::from_float(std::nextafter(tiny / 2, 1.0f)) == 0x0001);
  CHECK(float16::from_float(-tiny / 2) == 0x8000);  // keeps the sign of zero
  CHECK(float16::from_float(tiny * 1.5f) == 0x0002);  // tie between 1 and 2 ulps: even is 2
  CHECK(float16::from_float(tiny * 2.5f) == 0x0002);
  CHECK(float16::from_float(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
  CHECK(float16::from_float(std::ldexp(1023.0f, -24)) == 0x03ff);  // largest subnormal
  CHECK(float16::from_float(std::ldexp(1023.5f, -24)) == 0x0400);  // rounds up into the normals
  CHECK(float16::from_float(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(float16::from_float(65504.0f) == 0x7bff);
  CHECK(float16::from_float(std::nextafter(65520.0f, 0.0f)) == 0x7bff);  // just below: max finite
  CHECK(float16::from_float(65520.0f) == 0x7c00);  // the tie goes to inf (65504 is odd)
  CHECK(float16::from_float(-65520.0f) == 0xfc00);
  CHECK(float16::from_float(1e10f) == 0x7c00);
  CHECK(float16::from_float(std::numeric_limits<float>::max()) == 0x7c00);
  CHECK(float16::from_float(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK(float16::from_float(-std::numeric_limits<float>::infinity()) == 0xfc00);
  CHECK(float16::from_float(0.0f) == 0x0000);
  CHECK(float16::from_float(-0.0f) == 0x8000);
  CHECK(std::signbit(float(float16(-0.0f))));
  CHECK(float16::from_float(1.0f) == 0x3c00);
  CHECK(float16::from_float(-2.0f) == 0xc000);
  CHECK(float16::from_float(0.1f) == 0x2e66);
  // NaNs with payloads anywhere (including only in bits that a half drops) stay NaN.
  for (std::uint32_t u : {0x7fc00000u, 0x7f800001u, 0x7fbfffffu, 0xffc00000u, 0xff800001u, 0x7f802000u}) {
    const std::uint16_t h = float16::from_float(float_of(u));
    INFO("float bits 0x" << std::hex << u);
    CHECK(half_is_nan(h));
    CHECK((h & 0x0200u) != 0);  // quiet
    CHECK((h & 0x8000u) == ((u >> 16) & 0x8000u));
    CHECK(std::isnan(float(float16::from_bits(h))));
  }
}

TEST_CASE("numeric: float16 from_float matches the double reference on sampled floats") {
  REQUIRE(std::fegetround() == FE_TONEAREST);  // the reference relies on it
  // A strided sweep over all non-negative float patterns below inf (all exponents, varied
  // mantissas), then random patterns of both signs.
  for (std::uint64_t u = 0; u < 0x7f800000u; u += 997) check_half_rounds(float_of(std::uint32_t(u)));
  std::mt19937 gen(12345);
  for (int i = 0; i < 200000; ++i) {
    const float x = float_of(gen());
    if (!std::isnan(x)) check_half_rounds(x);
  }
  // Dense around the interesting range, where the mantissa tail decides the rounding.
  std::uniform_int_distribution<std::uint32_t> near(0x33000000u - 4096, 0x47800000u + 4096);
  for (int i = 0; i < 200000; ++i) check_half_rounds(float_of(near(gen)));
}

TEST_CASE("numeric: bfloat16 from_float matches the double reference, ties to even") {
  // For every bf16 pattern, the float inputs whose dropped bits are 0, just below the midpoint,
  // the midpoint itself (the tie), just above, the maximum, and a random tail.
  std::mt19937 gen(777);
  for (std::uint32_t hi = 0; hi < 65536; ++hi) {
    for (std::uint32_t lo : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, std::uint32_t(gen()) & 0xffffu}) {
      const std::uint32_t u = (hi << 16) | lo;
      const float x = float_of(u);
      if (std::isnan(x)) continue;
      check_bf16_rounds(x);
    }
  }
  // Explicit ties: the result is the neighbour with an even last bit.
  CHECK(moe::bfloat16(float_of(0x3f808000u)).bits == 0x3f80);  // 1 + 2^-8: tie, 0x3f80 is even
  CHECK(moe::bfloat16(float_of(0x3f818000u)).bits == 0x3f82);  // tie above the odd 0x3f81
  CHECK(moe::bfloat16(float_of(0x3f808001u)).bits == 0x3f81);
  CHECK(moe::bfloat16(float_of(0x7f7fffffu)).bits == 0x7f80);  // FLT_MAX rounds to inf
  CHECK(moe::bfloat16(float_of(0x7f7f7fffu)).bits == 0x7f7f);
  CHECK(moe::bfloat16(-0.0f).bits == 0x8000);
  CHECK(moe::bfloat16(std::numeric_limits<float>::infinity()).bits == 0x7f80);
  CHECK(moe::bfloat16(-std::numeric_limits<float>::infinity()).bits == 0xff80);
  CHECK(moe::bfloat16(std::numeric_limits<float>::denorm_min()).bits == 0x0000);
}

TEST_CASE("numeric: bfloat16 NaN stays a quiet NaN with its sign, whatever the payload") {
  // Signalling NaNs whose payload sits only in the dropped low bits would become inf if truncated.
  for (std::uint32_t u : {0x7fc00000u, 0x7f800001u, 0x7f80ffffu, 0x7fbfffffu, 0xff800001u, 0xffffffffu, 0x7f810000u}) {
    const moe::bfloat16 b(float_of(u));
    INFO("float bits 0x" << std::hex << u);
    CHECK(bf16_is_nan(b.bits));
    CHECK((b.bits & 0x0040u) != 0);
    CHECK((b.bits & 0x8000u) == ((u >> 16) & 0x8000u));
    CHECK(std::isnan(float(b)));
  }
  // A NaN is not equal to itself; +0 equals -0 (value comparison).
  const moe::bfloat16 nan(std::numeric_limits<float>::quiet_NaN());
  CHECK_FALSE(nan == nan);
  CHECK(moe::bfloat16(0.0f) == moe::bfloat16(-0.0f));
  CHECK(moe::float16(0.0f) == moe::float16(-0.0f));
  const moe::float16 half_nan(std::numeric_limits<float>::quiet_NaN());
  CHECK_FALSE(half_nan == half_nan);
}

TEST_CASE("numeric: bfloat16 decodes all patterns and round-trips every non-NaN one") {
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = moe::bfloat16::from_bits(std::uint16_t(i));
    const float f = float(b);
    REQUIRE(bits_of(f) == i << 16);
    if (bf16_is_nan(std::uint16_t(i))) REQUIRE(bf16_is_nan(moe::bfloat16(f).bits));
    else REQUIRE(moe::bfloat16(f).bits == i);
  }
}

TEST_CASE("numeric: construction from double rounds once, directly from the double") {
  // 1 + 2^-8 + 2^-30 is just above the bf16 midpoint 1 + 2^-8; in float it *is* the midpoint, so
  // double -> float -> bf16 would wrongly round down to 1.
  CHECK(moe::bfloat16(1.0 + 0x1p-8 + 0x1p-30).bits == 0x3f81);
  CHECK(moe::bfloat16(1.0 + 0x1p-8 - 0x1p-30).bits == 0x3f80);
  CHECK(moe::bfloat16(1.0 + 0x1p-8).bits == 0x3f80);  // the exact tie still goes to even
  // Same for binary16: midpoint of 1 and 1 + 2^-10.
  CHECK(moe::float16(1.0 + 0x1p-11 + 0x1p-40).bits == 0x3c01);
  CHECK(moe::float16(1.0 + 0x1p-11 - 0x1p-40).bits == 0x3c00);
  CHECK(moe::float16(1.0 + 0x1p-11).bits == 0x3c00);
  CHECK(moe::float16(-(1.0 + 0x1p-11 + 0x1p-40)).bits == 0xbc01);
  // Overflow, infinities and NaN from double.
  CHECK(moe::float16(65519.99).bits == 0x7bff);
  CHECK(moe::float16(65520.0).bits == 0x7c00);
  CHECK(moe::bfloat16(1e300).bits == 0x7f80);
  CHECK(moe::bfloat16(-1e300).bits == 0xff80);
  CHECK(moe::float16(1e300).bits == 0x7c00);
  CHECK(moe::float16(std::numeric_limits<double>::infinity()).bits == 0x7c00);
  CHECK(moe::bfloat16(-std::numeric_limits<double>::infinity()).bits == 0xff80);
  CHECK(bf16_is_nan(moe::bfloat16(std::numeric_limits<double>::quiet_NaN()).bits));
  CHECK(half_is_nan(moe::float16(std::numeric_limits<double>::quiet_NaN()).bits));
  CHECK(moe::float16(1e-300).bits == 0x0000);
  CHECK(moe::float16(-1e-300).bits == 0x8000);
  CHECK(moe::bfloat16(1e-300).bits == 0x0000);
  CHECK(moe::float16(0x1p-25 + 0x1p-60).bits == 0x0001);  // just above the tie with zero

  // Random doubles against the reference, with extra weight just around 16-bit midpoints.
  std::mt19937_64 gen(2024);
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  std::uniform_int_distribution<int> exp_half(-26, 17), exp_bf16(-136, 128);
  for (int i = 0; i < 100000; ++i) {
    const double s = (gen() & 1) ? -1.0 : 1.0;
    check_half_rounds(s * std::ldexp(mant(gen), exp_half(gen)));
    check_bf16_rounds(s * std::ldexp(mant(gen), exp_bf16(gen)));
    // Midpoint of two random neighbours nudged by far less than a float ulp.
    const double h = reference_half_value(std::uint16_t(gen() % 0x7bff));
    const double hn = reference_half_value(std::uint16_t(moe::float16(h).bits + 1));
    const double nudge = std::ldexp(h + hn, -40) * ((gen() & 1) ? 1 : -1);
    check_half_rounds(s * ((h + hn) / 2 + nudge));
    const float b = float_of(std::uint32_t(gen() % 0x7f7f0000u) & 0xffff0000u);
    const double bn = double(float_of(bits_of(b) + 0x10000u));
    check_bf16_rounds(s * ((double(b) + bn) / 2 + std::ldexp(double(b) + bn, -45) * ((gen() & 1) ? 1 : -1)));
  }
}

TEST_CASE("numeric: convert and widen round-trip between element types") {
  static_assert(std::is_same_v<decltype(moe::widen(moe::bfloat16())), float>);
  static_assert(std::is_same_v<decltype(moe::widen(moe::float16())), float>);
  static_assert(std::is_same_v<decltype(moe::widen(1.0f)), float>);
  static_assert(std::is_same_v<decltype(moe::widen(1.0)), double>);
  // Every half and bf16 value survives the trip through float and double.
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto h = moe::float16::from_bits(std::uint16_t(i));
    const auto b = moe::bfloat16::from_bits(std::uint16_t(i));
    if (!half_is_nan(h.bits)) {
      REQUIRE(moe::convert<moe::float16>(moe::widen(h)).bits == h.bits);
      REQUIRE(moe::convert<moe::float16>(moe::convert<double>(h)).bits == h.bits);
      REQUIRE(moe::convert<float>(h) == moe::float16::to_float(h.bits));
    }
    if (!bf16_is_nan(b.bits)) {
      REQUIRE(moe::convert<moe::bfloat16>(moe::widen(b)).bits == b.bits);
      REQUIRE(moe::convert<moe::bfloat16>(moe::convert<double>(b)).bits == b.bits);
    }
  }
  CHECK(moe::convert<float>(0.1) == 0.1f);
  CHECK(moe::convert<double>(0.1f) == double(0.1f));
  CHECK(moe::convert<float>(2.5f) == 2.5f);
  // Between the two 16-bit types, through float: 1 + 2^-10 is a half but rounds (tie) to 1 in bf16.
  CHECK(moe::convert<moe::bfloat16>(moe::float16(1.0f + 0x1p-10f)).bits == 0x3f80);
  CHECK(moe::convert<moe::float16>(moe::bfloat16(3.0f)).bits == 0x4200);
  CHECK(moe::convert<moe::bfloat16>(moe::float16(65504.0f)).bits == moe::bfloat16(65504.0f).bits);
  CHECK(moe::convert<moe::float16>(moe::bfloat16(1e10f)).bits == 0x7c00);  // out of half range
}

TEST_CASE("numeric: compute types and traits") {
  static_assert(std::is_same_v<moe::acc_t<float>, float>);
  static_assert(std::is_same_v<moe::acc_t<double>, double>);
  static_assert(std::is_same_v<moe::acc_t<moe::bfloat16>, float>);
  static_assert(std::is_same_v<moe::acc_t<moe::float16>, float>);
  // Selective precision: the router never computes below float32.
  static_assert(std::is_same_v<moe::router_t<moe::bfloat16>, float>);
  static_assert(std::is_same_v<moe::router_t<moe::float16>, float>);
  static_assert(std::is_same_v<moe::router_t<float>, float>);
  static_assert(std::is_same_v<moe::router_t<double>, double>);
  static_assert(moe::is_half_v<moe::bfloat16> && moe::is_half_v<moe::float16> && !moe::is_half_v<float>);
  static_assert(moe::is_element_v<float> && moe::is_element_v<double> && moe::is_element_v<moe::float16>);
  static_assert(!moe::is_element_v<int> && !moe::is_element_v<long double>);
  CHECK(std::string(moe::type_name<float>()) == "float");
  CHECK(std::string(moe::type_name<double>()) == "double");
  CHECK(std::string(moe::type_name<moe::bfloat16>()) == "bf16");
  CHECK(std::string(moe::type_name<moe::float16>()) == "fp16");
}

TEST_CASE("numeric: is_finite on float and double") {
  using fl = std::numeric_limits<float>;
  using dl = std::numeric_limits<double>;
  CHECK(moe::is_finite(0.0f));
  CHECK(moe::is_finite(-0.0f));
  CHECK(moe::is_finite(fl::max()));
  CHECK(moe::is_finite(-fl::max()));
  CHECK(moe::is_finite(fl::denorm_min()));
  CHECK_FALSE(moe::is_finite(fl::infinity()));
  CHECK_FALSE(moe::is_finite(-fl::infinity()));
  CHECK_FALSE(moe::is_finite(fl::quiet_NaN()));
  CHECK_FALSE(moe::is_finite(-fl::quiet_NaN()));
  CHECK_FALSE(moe::is_finite(fl::signaling_NaN()));
  CHECK(moe::is_finite(0.0));
  CHECK(moe::is_finite(dl::max()));
  CHECK(moe::is_finite(1e300));  // finite in double although beyond float range
  CHECK(moe::is_finite(dl::denorm_min()));
  CHECK_FALSE(moe::is_finite(dl::infinity()));
  CHECK_FALSE(moe::is_finite(-dl::infinity()));
  CHECK_FALSE(moe::is_finite(dl::quiet_NaN()));
  // Through widen, as check_finite does for 16-bit data.
  CHECK(moe::is_finite(moe::widen(moe::float16(65504.0f))));
  CHECK_FALSE(moe::is_finite(moe::widen(moe::float16(70000.0f))));
  CHECK_FALSE(moe::is_finite(moe::widen(moe::bfloat16(fl::quiet_NaN()))));
}

// ---- vectorisable exp and the activations built on it ------------------------------------------

namespace {

// |got − want| in units of the float spacing at want.
double ulps(float got, double want) {
  const float w = float(std::fabs(want));
  return std::fabs(double(got) - want) / double(std::nextafter(w, INFINITY) - w);
}

// Floats spread over every exponent and sign: bit patterns a fixed odd stride apart.
template <class F>
void for_sampled_floats(F&& f) {
  for (std::uint64_t b = 0; b <= 0xffffffffu; b += 4099) f(float_of(std::uint32_t(b)));
}

}  // namespace

TEST_CASE("math: exp_branch_free is within 1.3 ulp of e^z on [-87, 88], clamped finite beyond, NaN stays NaN") {
  double worst = 0;
  int sampled = 0;
  for_sampled_floats([&](float z) {
    if (!(z >= -87.0f && z <= 88.0f)) return;
    ++sampled;
    const double e = ulps(moe::exp_branch_free(z), std::exp(double(z)));
    if (e > worst) {
      worst = e;
      CAPTURE(z);
      REQUIRE(e <= 1.3);
    }
  });
  MESSAGE(("exp_branch_free: worst " + std::to_string(worst) + " ulp over " + std::to_string(sampled) + " floats"));
  CHECK(sampled > 400000);
  // Exact where the polynomial is: e^0 = 1; integers' powers of two come out right.
  CHECK(moe::exp_branch_free(0.0f) == 1.0f);
  CHECK(moe::exp_branch_free(-0.0f) == 1.0f);
  // Beyond the range: e^88 and e^-87, finite and normal, monotone at the edges.
  const float top = moe::exp_branch_free(88.0f), bottom = moe::exp_branch_free(-87.0f);
  CHECK(ulps(top, std::exp(88.0)) <= 1.3);
  CHECK(ulps(bottom, std::exp(-87.0)) <= 1.3);
  CHECK(bottom >= std::numeric_limits<float>::min());
  for (const float z : {88.5f, 1000.0f, std::numeric_limits<float>::max(), std::numeric_limits<float>::infinity()})
    CHECK(moe::exp_branch_free(z) == top);
  for (const float z : {-87.5f, -1000.0f, -std::numeric_limits<float>::max(), -std::numeric_limits<float>::infinity()})
    CHECK(moe::exp_branch_free(z) == bottom);
  CHECK(std::isnan(moe::exp_branch_free(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isnan(moe::exp_branch_free(-std::numeric_limits<float>::quiet_NaN())));
  // exp_of: float goes through exp_branch_free, double through std::exp.
  CHECK(moe::exp_of(0.75f) == moe::exp_branch_free(0.75f));
  CHECK(moe::exp_of(0.75) == std::exp(0.75));
}

TEST_CASE("math: GELU and SiLU in float against their float64 evaluation, and the tanh form of GELU") {
  // f: relative error within 4 float epsilons per unit of the exponent's argument |u| (+4): u itself
  // is rounded to float, and e^(-u) turns its absolute error into a relative one. f': absolute error
  // within 8·2^-24 (f' is O(1) and crosses zero). Where f underflows below 1e-30 (x < -9 for GELU)
  // the clamped exponential leaves a tiny value instead: compared absolutely.
  using moe::activation::gelu;
  using moe::activation::silu;
  const double eps = std::ldexp(1.0, -24);
  double worst_gelu = 0, worst_silu = 0;
  for_sampled_floats([&](float x) {
    if (!(std::fabs(x) <= 30.0f)) return;
    CAPTURE(x);
    const double u = std::fabs(2 * 0.7978845608028654 * (x + 0.044715 * double(x) * x * x));
    const double g = gelu::f<double>(x), s = silu::f<double>(x);
    if (std::fabs(g) > 1e-30 && std::fabs(x) > 1e-30) {
      const double e = std::fabs(gelu::f<float>(x) - g) / std::fabs(g) / eps / (4 + u);
      worst_gelu = std::max(worst_gelu, e);
      REQUIRE(e <= 4.0);
    } else {
      REQUIRE(std::fabs(gelu::f<float>(x)) <= 1e-30f * std::max(1.0f, std::fabs(x)));
    }
    if (std::fabs(s) > 1e-30 && std::fabs(x) > 1e-30) {
      const double e = std::fabs(silu::f<float>(x) - s) / std::fabs(s) / eps / (4 + std::fabs(x));
      worst_silu = std::max(worst_silu, e);
      REQUIRE(e <= 4.0);
    }
    REQUIRE(std::fabs(gelu::df<float>(x) - gelu::df<double>(x)) <= 8 * eps);
    REQUIRE(std::fabs(silu::df<float>(x) - silu::df<double>(x)) <= 8 * eps);
    // x·σ(u) is GELU's tanh form, 0.5·x·(1 + tanh(u/2)), evaluated here in float64.
    const double tanh_form = 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * double(x) * x * x)));
    REQUIRE(std::fabs(g - tanh_form) <= 1e-15 * std::max(1.0, std::fabs(g)));
  });
  MESSAGE(("gelu: worst " + std::to_string(worst_gelu) + ", silu: worst " + std::to_string(worst_silu) +
           " (relative error / (eps·(4 + |u|)))"));
  // Large arguments: no inf·0, the identity beyond saturation, zero's sign kept.
  CHECK(gelu::f<float>(100.0f) == 100.0f);
  CHECK(gelu::df<float>(100.0f) == 1.0f);
  CHECK(gelu::f<float>(-100.0f) <= 0.0f);
  CHECK(gelu::f<float>(-100.0f) > -1e-30f);
  CHECK(std::isfinite(gelu::df<float>(-100.0f)));
  CHECK(silu::f<float>(-1000.0f) <= 0.0f);
  CHECK(silu::f<float>(-1000.0f) > -1e-30f);
  CHECK(gelu::f<float>(0.0f) == 0.0f);
  CHECK(gelu::df<float>(0.0f) == 0.5f);
  CHECK(std::isnan(gelu::f<float>(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isnan(silu::df<float>(std::numeric_limits<float>::quiet_NaN())));
}
