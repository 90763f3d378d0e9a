// moe/core/numeric.hpp — the element types the library stores, and their compute types.
//
// `bfloat16` and `float16` are 16-bit storage types usable on the host and the device (same bits as
// CUDA's __nv_bfloat16 / __half, so device kernels may reinterpret them). Arithmetic never happens
// in 16 bits: values are widened to float, computed on with float accumulation, and rounded back
// (round to nearest, ties to even, as the hardware converters do).
//
// Selective precision (Switch Transformer, section 2.4): the router always computes in float32,
// whatever the activation type; `router_t<double>` is double so that float64 gradient checks stay
// exact end to end.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "moe/core/config.hpp"

namespace moe {

namespace detail {

MOE_HOST_DEVICE std::uint32_t float_bits(float f) {
#if MOE_ON_DEVICE
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

MOE_HOST_DEVICE float bits_float(std::uint32_t u) {
#if MOE_ON_DEVICE
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// double -> float rounded to odd (inexact results get their last bit set). Rounding that float again
// to a 16-bit type gives the correctly rounded result of the double, which a plain double -> float ->
// 16-bit chain does not (it rounds twice: a double just above a 16-bit midpoint can round to the
// midpoint in float and then to even, the wrong way). Float keeps more than two extra bits, enough.
MOE_HOST_DEVICE float narrow_round_to_odd(double d) {
  constexpr double float_max = 3.4028234663852886e38;
  const double mag = d < 0 ? -d : d;
  if (!(mag <= float_max)) {
    if (d != d || mag - mag != 0.0) return static_cast<float>(d);  // NaN, inf: nothing to round
    // Finite beyond FLT_MAX (a cast would be undefined): the odd FLT_MAX, which rounds on to inf.
    return d < 0 ? -3.4028234663852886e38f : 3.4028234663852886e38f;
  }
  const float f = static_cast<float>(d);
  if (static_cast<double>(f) == d) return f;
  std::uint32_t u = float_bits(f);
  const float fmag = f < 0 ? -f : f;
  if (static_cast<double>(fmag) > mag) --u;  // rounded away from zero: step back to the truncation
  return bits_float(u | 1u);
}

}  // namespace detail

// Brain floating point: the top 16 bits of an IEEE float (8-bit exponent, 7-bit mantissa).
struct bfloat16 {
  std::uint16_t bits = 0;

  bfloat16() = default;
  MOE_HOST_DEVICE explicit bfloat16(float f) : bits(from_float(f)) {}
  MOE_HOST_DEVICE explicit bfloat16(double f) : bits(from_float(detail::narrow_round_to_odd(f))) {}
  MOE_HOST_DEVICE explicit operator float() const { return detail::bits_float(std::uint32_t(bits) << 16); }
  MOE_HOST_DEVICE explicit operator double() const { return double(float(*this)); }

  MOE_HOST_DEVICE static bfloat16 from_bits(std::uint16_t b) {
    bfloat16 h;
    h.bits = b;
    return h;
  }
  // Round to nearest even; NaN stays NaN (quiet), infinities stay infinities.
  MOE_HOST_DEVICE static std::uint16_t from_float(float f) {
    std::uint32_t u = detail::float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return std::uint16_t(u >> 16);
  }
  friend MOE_HOST_DEVICE bool operator==(bfloat16 a, bfloat16 b) { return float(a) == float(b); }
};

// IEEE 754 binary16 (5-bit exponent, 10-bit mantissa), with subnormals.
struct float16 {
  std::uint16_t bits = 0;

  float16() = default;
  MOE_HOST_DEVICE explicit float16(float f) : bits(from_float(f)) {}
  MOE_HOST_DEVICE explicit float16(double f) : bits(from_float(detail::narrow_round_to_odd(f))) {}
  MOE_HOST_DEVICE explicit operator float() const { return to_float(bits); }
  MOE_HOST_DEVICE explicit operator double() const { return double(to_float(bits)); }

  MOE_HOST_DEVICE static float16 from_bits(std::uint16_t b) {
    float16 h;
    h.bits = b;
    return h;
  }

  MOE_HOST_DEVICE static std::uint16_t from_float(float f) {
    const std::uint32_t u = detail::float_bits(f);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return std::uint16_t(sign | 0x7e00u);   // NaN
    if (abs >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
      if (abs < 0x33000000u) return std::uint16_t(sign);  // below half the smallest subnormal
      const std::uint32_t exp = abs >> 23;
      const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
      // value = mant * 2^(exp-150); in units of the smallest subnormal 2^-24: mant >> (126 - exp)
      const std::uint32_t shift = 126u - exp;
      std::uint32_t half = mant >> shift;
      const std::uint32_t rem = mant & ((1u << shift) - 1u);
      const std::uint32_t mid = 1u << (shift - 1u);
      if (rem > mid || (rem == mid && (half & 1u))) ++half;
      return std::uint16_t(sign | half);
    }
    // Normal: rebias exponent 127 -> 15 and round the 13 dropped mantissa bits to nearest even.
    std::uint32_t h = ((abs - 0x38000000u) >> 13);
    const std::uint32_t rem = abs & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return std::uint16_t(sign | h);
  }

  MOE_HOST_DEVICE static float to_float(std::uint16_t h) {
    const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu) return detail::bits_float(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
      if (mant == 0) return detail::bits_float(sign);
      // Subnormal: normalise the mantissa.
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      return detail::bits_float(sign | std::uint32_t(127 - 15 - e) << 23 | ((mant & 0x3ffu) << 13));
    }
    return detail::bits_float(sign | (exp + 112u) << 23 | (mant << 13));
  }
  friend MOE_HOST_DEVICE bool operator==(float16 a, float16 b) { return float(a) == float(b); }
};

template <class T>
inline constexpr bool is_half_v = std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>;

template <class T>
inline constexpr bool is_element_v =
    std::is_same_v<T, float> || std::is_same_v<T, double> || is_half_v<T>;

// The type arithmetic on elements of T happens in: double for double, float otherwise.
template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// The router's compute type (selective precision: never below float32).
template <class T>
using router_t = acc_t<T>;

// Conversions between element types, through float for the 16-bit types.
template <class To, class From>
MOE_HOST_DEVICE To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (is_half_v<From>) {
    return To(float(v));
  } else {
    return To(v);
  }
}

template <class T>
MOE_HOST_DEVICE acc_t<T> widen(T v) {
  return convert<acc_t<T>>(v);
}

// Short name of an element type, for messages and benchmark labels.
template <class T>
constexpr const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  else if constexpr (std::is_same_v<T, double>) return "double";
  else if constexpr (std::is_same_v<T, bfloat16>) return "bf16";
  else if constexpr (std::is_same_v<T, float16>) return "fp16";
  else return "?";
}

MOE_HOST_DEVICE bool is_finite(float v) { return (detail::float_bits(v) & 0x7f800000u) != 0x7f800000u; }
MOE_HOST_DEVICE bool is_finite(double v) {
#if MOE_ON_DEVICE
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

}  // namespace moe
