// moe_emu/half_types.hpp — __nv_bfloat16 and __half as the emulated kernels see them: 16 bits of
// storage that widen to float (the WMMA fragments' loads). The kernels never do 16-bit arithmetic.
#pragma once

#include <cstdint>
#include <cstring>

namespace moe_emu {
inline float float_from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace moe_emu

struct __nv_bfloat16 {
  unsigned short x;
  explicit operator float() const { return ::moe_emu::float_from_bits(std::uint32_t(x) << 16); }
};
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) { return __nv_bfloat16{v}; }

struct __half {
  unsigned short x;
  explicit operator float() const {
    const std::uint32_t sign = std::uint32_t(x & 0x8000u) << 16, exp = (x >> 10) & 0x1fu, mant = x & 0x3ffu;
    if (exp == 0x1fu) return ::moe_emu::float_from_bits(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {  // zero or subnormal: mant · 2^-24
      const float v = float(mant) * 5.9604644775390625e-8f;
      return sign ? -v : v;
    }
    return ::moe_emu::float_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
  }
};
inline __half __ushort_as_half(unsigned short v) { return __half{v}; }
