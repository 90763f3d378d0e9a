// moe/core/rng.hpp — counter-based random numbers, identical on the host and the device.
//
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the generator
// behind cuRAND's Philox and JAX's threefry-free paths). A draw is a pure function of
// (seed, purpose, layer, step, index): no state is carried, so any thread on any device draws the
// same number for the same token, and a run is reproducible bit for bit whatever the execution
// space or the number of threads.
//
// Counter layout: c0,c1 = 64-bit element index; c2 = training step; c3 = (layer << 8) | purpose.
// Key: the 64-bit seed.
#pragma once

#include <cmath>
#include <cstdint>

#include "moe/core/config.hpp"
#include "moe/core/philox_x86.hpp"

namespace moe {

// What a stream of random numbers is for; streams with different purposes never overlap.
enum class rng_purpose : std::uint32_t {
  router_jitter = 1,   // multiplicative input jitter of the router (Switch)
  router_noise = 2,    // Gaussian logit noise (noisy top-k, Shazeer et al. 2017)
  second_expert = 3,   // the 'random' / 'sampling' second-expert policies (GShard)
  expert_dropout = 4,  // dropout inside the expert FFN
  init = 5,            // parameter initialisation
  user = 128,          // first value free for callers (data order, model dropout, …)
};

struct philox4x32 {
  std::uint32_t v[4];
};

MOE_HOST_DEVICE philox4x32 philox4x32_10(philox4x32 ctr, std::uint32_t k0, std::uint32_t k1) {
  constexpr std::uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
  constexpr std::uint32_t w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = std::uint64_t(m0) * ctr.v[0];
    const std::uint64_t p1 = std::uint64_t(m1) * ctr.v[2];
    const std::uint32_t hi0 = std::uint32_t(p0 >> 32), lo0 = std::uint32_t(p0);
    const std::uint32_t hi1 = std::uint32_t(p1 >> 32), lo1 = std::uint32_t(p1);
    ctr = philox4x32{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += w0;
    k1 += w1;
  }
  return ctr;
}

// The coordinates of one stream: everything but the element index.
struct rng_stream {
  std::uint64_t seed = 0;
  rng_purpose purpose = rng_purpose::user;
  std::uint32_t layer = 0;  // 24 bits are used
  std::uint32_t step = 0;

  // The counter's last word: layer and purpose (see the layout above).
  MOE_HOST_DEVICE std::uint32_t layer_purpose_word() const { return (layer << 8) | (std::uint32_t(purpose) & 0xffu); }

  // Four independent 32-bit words for element `index`.
  MOE_HOST_DEVICE philox4x32 bits(std::uint64_t index) const {
    philox4x32 ctr{{std::uint32_t(index), std::uint32_t(index >> 32), step, layer_purpose_word()}};
    return philox4x32_10(ctr, std::uint32_t(seed), std::uint32_t(seed >> 32));
  }

  // out[i] = bits(first + i) for i < count: for loops that draw a run of consecutive blocks. On x86
  // hosts with AVX2, eight blocks at a time (moe/core/philox_x86.hpp); elsewhere one by one.
  MOE_HOST_DEVICE void bits_n(std::uint64_t first, std::uint64_t count, philox4x32* out) const {
    std::uint64_t i = 0;
#if defined(MOE_PHILOX_AVX2) && !defined(__CUDA_ARCH__)
    if (count >= 8 && detail::cpu_has_avx2()) {
      const std::uint32_t c3 = layer_purpose_word();
      for (; i + 8 <= count; i += 8) {
        const std::uint64_t c = first + i;
        if (std::uint32_t(c) > 0xfffffff8u) break;  // the low word wraps within these eight: one by one
        std::uint32_t w[4][8];
        detail::philox8_avx2(std::uint32_t(c), std::uint32_t(c >> 32), step, c3, std::uint32_t(seed),
                             std::uint32_t(seed >> 32), w);
        for (int b = 0; b < 8; ++b) out[i + std::uint64_t(b)] = philox4x32{{w[0][b], w[1][b], w[2][b], w[3][b]}};
      }
    }
#endif
    for (; i < count; ++i) out[i] = bits(first + i);
  }
};

// A word mapped to [0, 1) with 24 random bits (exactly representable in float).
MOE_HOST_DEVICE float uniform01(std::uint32_t word) { return float(word >> 8) * (1.0f / 16777216.0f); }
// A word mapped to (0, 1]: safe to take the logarithm of.
MOE_HOST_DEVICE float uniform01_open_low(std::uint32_t word) {
  return float((word >> 8) + 1u) * (1.0f / 16777216.0f);
}

// Uniform in [0, 1) for element `index` (lane 0 of its Philox block).
MOE_HOST_DEVICE float uniform(const rng_stream& s, std::uint64_t index) { return uniform01(s.bits(index).v[0]); }

// Dropout decisions, eight per Philox block: element i reads the 16-bit half i mod 2 of word
// (i / 2) mod 4 of block i / 8, and is dropped when that half is below round(rate · 2^16). The rate
// is thus quantised to 1/65536 (FlashAttention quantises its dropout rate to 1/256) and a kept
// element is scaled by 2^16 / (2^16 − threshold), which keeps the expectation exact. Eight draws
// per block instead of one matter on the host, where Philox dominates dropout's cost.
struct dropout_draws {
  std::uint32_t threshold = 0;  // dropped when the 16-bit draw is below it; 0: nothing dropped

  MOE_HOST_DEVICE static dropout_draws at_rate(float rate) {
    const float t = rate * 65536.0f + 0.5f;
    return {t <= 0.0f ? 0u : t >= 65535.0f ? 65535u : std::uint32_t(t)};
  }
  MOE_HOST_DEVICE static std::uint64_t block_of(std::uint64_t i) { return i >> 3; }
  // Whether element i is kept, from its block.
  MOE_HOST_DEVICE bool keep(const philox4x32& block, std::uint64_t i) const {
    return ((block.v[(i >> 1) & 3u] >> ((i & 1u) * 16u)) & 0xffffu) >= threshold;
  }
  // out[k] = the factor (0 or `kept`, which is kept_scale<R>()) of element first + k, for k < n:
  // one Philox block per eight elements, and no branch per element (a dropped element is a coin
  // flip the branch predictor cannot learn).
  // The host draws the blocks of a run 32 at a time (rng_stream::bits_n); a device thread, whose
  // run is an element or a few, one at a time (no block array in its local memory).
  template <class R>
  MOE_HOST_DEVICE void factors(const rng_stream& rng, std::uint64_t first, std::uint64_t n, R kept, R* out) const {
#if defined(__CUDA_ARCH__)
    for (std::uint64_t k = 0; k < n;) {
      const std::uint64_t g = first + k;
      const philox4x32 bits = rng.bits(block_of(g));
      const std::uint64_t stop = n - k < 8 - (g & 7u) ? n : k + 8 - (g & 7u);
      for (; k < stop; ++k) out[k] = kept * R(keep(bits, first + k));
    }
#else
    constexpr std::uint64_t batch = 32;
    philox4x32 blocks[batch];
    std::uint16_t draw[8 * batch];  // draw[8·b + e]: the 16-bit draw of element e of block b0 + b
    // Elements [k, k + len) of each step lie in the batch of blocks from block_of(first + k).
    for (std::uint64_t k = 0, len = 0; k < n; k += len) {
      const std::uint64_t at = (first + k) & 7u, room = 8 * batch - at;
      len = n - k < room ? n - k : room;
      const std::uint64_t b0 = block_of(first + k), count = (at + len + 7) / 8;
      rng.bits_n(b0, count, blocks);
      for (std::uint64_t b = 0; b < count; ++b)
        for (int e = 0; e < 8; ++e)
          draw[8 * b + std::uint64_t(e)] = std::uint16_t(blocks[b].v[e >> 1] >> ((e & 1) * 16));
      // Then one comparison per element, as arithmetic (the sign bit of draw − threshold: 1 when
      // dropped) that vectorises; written as a comparison, the compiler branched on the coin flip.
      for (std::uint64_t j = 0; j < len; ++j)
        out[k + j] = kept * R(std::int32_t(1u - ((std::uint32_t(draw[at + j]) - threshold) >> 31)));
    }
#endif
  }
  // The scale of a kept element (hoist it out of loops: it is a division).
  template <class R>
  MOE_HOST_DEVICE R kept_scale() const {
    return R(65536.0f) / R(float(65536u - threshold));
  }
  // The scale of element i: 0, or the kept scale.
  template <class R>
  MOE_HOST_DEVICE R scale(const philox4x32& block, std::uint64_t i) const {
    return keep(block, i) ? kept_scale<R>() : R(0);
  }
};

// Standard normal for element `index` (Box–Muller on lanes 0 and 1). Computed in double and rounded
// to float, so host and device agree unless the double results (each within an ulp or two of the
// exact value) straddle a float rounding boundary: about one draw in 10^8.
MOE_HOST_DEVICE float normal_from_block(const philox4x32& w) {
  const double u1 = uniform01_open_low(w.v[0]);
  const double u2 = uniform01(w.v[1]);
  const double r = std::sqrt(-2.0 * std::log(u1));
  return float(r * std::cos(6.283185307179586 * u2));
}
MOE_HOST_DEVICE float normal(const rng_stream& s, std::uint64_t index) { return normal_from_block(s.bits(index)); }

// Normal with mean 0 and standard deviation `stddev`, redrawn until it lies within two standard
// deviations (TensorFlow's truncated_normal_initializer, used by Mesh-TF and the Switch
// Transformer; the standard deviation of the result is about 0.88·stddev, as there).
// Redraws advance the step field of the stream, which initialisation does not otherwise use.
MOE_HOST_DEVICE float truncated_normal_from(rng_stream s, std::uint64_t index, float stddev, float first_z) {
  // `first_z` is attempt 0 (step 0), drawn by the caller: fill_truncated_normal draws the first
  // attempts of a run of elements together, so only a rejected draw costs more here.
  float z = first_z;
  for (std::uint32_t attempt = 1;; ++attempt) {
    if (z > -2.0f && z < 2.0f) return z * stddev;
    s.step = attempt;
    z = normal(s, index);
  }
}
MOE_HOST_DEVICE float truncated_normal(rng_stream s, std::uint64_t index, float stddev) {
  s.step = 0;
  return truncated_normal_from(s, index, stddev, normal(s, index));
}

}  // namespace moe
