// moe_emu/half_types.hpp — __nv_bfloat16 and __half as the emulated kernels see them: 16 bits of
// storage that widen to float (the WMMA fragments' loads). The kernels never do 16-bit arithmetic.
// Conversions are the library's own (moe::bfloat16, moe::float16: same bits as CUDA's types).
#pragma once

#include "moe/core/numeric.hpp"

struct __nv_bfloat16 {
  unsigned short x;
  explicit operator float() const { return float(moe::bfloat16::from_bits(x)); }
};
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) { return __nv_bfloat16{v}; }

struct __half {
  unsigned short x;
  explicit operator float() const { return float(moe::float16::from_bits(x)); }
};
inline __half __ushort_as_half(unsigned short v) { return __half{v}; }
