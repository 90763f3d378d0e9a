// moe/routing/router_logits.hpp — what every router does to one token's logits before it chooses:
// multiplicative input jitter, Gaussian logit noise, the tanh soft cap, and the softmax; and the
// backward of each. Single-source (MOE_HOST_DEVICE): the host and CUDA spaces run this code.
//
// Order of operations for token t (training; at evaluation jitter and noise are off):
//   x̃     = x ⊙ u,  u ~ U[1−ε, 1+ε] per element            (Switch Transformer §2.4; Mesh-TF)
//   raw   = x̃ · W_r                                        (float32: selective precision)
//   h₀    = raw + σ ⊙ n,  n ~ N(0, 1)                       (noisy top-k, Shazeer et al. 2017:
//           σ = softplus(x̃ · W_noise) when learned, else the fixed noise_stddev)
//   h     = c · tanh(h₀ / c)                                (logit soft cap; off when c = 0)
//   p     = softmax(h),  lse = log Σ exp(h)
// Auxiliary losses and statistics see the final logits h and probabilities p.
//
// Precision: the router computes in float32 whatever the layer's storage type (Switch §2.4,
// "selective precision"). router_precision::bfloat16 exists to ablate that, as a router in a
// bfloat16 model computes: its GEMM reads x̃ and W_r (and W_noise) rounded to bfloat16 and
// accumulates in float32, as a matrix unit does, and raw, h and p are rounded to bfloat16 as they
// are handed on (the exponentials and the softmax's sum are evaluated in float32 in between).
// Backward is the float32 one evaluated at the rounded values, as a straight-through estimate:
// rounding is piecewise constant, so its exact derivative is zero almost everywhere.
#pragma once

#include <cmath>

#include "moe/core/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/math.hpp"
#include "moe/core/numeric.hpp"
#include "moe/core/rng.hpp"

namespace moe {

// The logit options shared by every router; a router's config carries these fields.
//   jitter         ε of the multiplicative input jitter (Switch: 1e-2; ST-MoE: 0, it hurt quality)
//   noise_stddev   standard deviation of fixed Gaussian logit noise; 0 = off
//   learned_noise  Shazeer et al. 2017: noise standard deviation softplus(x̃·W_noise), W_noise learned
//                  (initialised to zero, as in the paper: softplus(0) = ln 2)
//   logit_soft_cap c of c·tanh(h/c); 0 = off
//   init_scale     W_r ~ truncated normal with std sqrt(init_scale / d_model) (Switch: 0.1)
//   precision      float32 (selective precision: always, in the papers' recipes) or bfloat16 (the
//                  ablation: the Switch paper's bfloat16 router diverged, Table 2); see above

enum class router_precision { float32, bfloat16 };

inline const char* to_string(router_precision p) {
  switch (p) {
    case router_precision::float32: return "float32";
    case router_precision::bfloat16: return "bfloat16";
  }
  return "?";
}

namespace detail {

template <class R>
MOE_HOST_DEVICE R softplus(R v) {
  // log(1 + e^v) without overflow.
  return v > R(0) ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v));
}

// v as the router hands it on: unchanged in float32, rounded to the nearest bfloat16 otherwise.
template <class R, class Config>
MOE_HOST_DEVICE R router_round(const Config& cfg, R v) {
  return cfg.precision == router_precision::bfloat16 ? R(float(bfloat16(v))) : v;
}

}  // namespace detail

// The random streams a router draws from, for one layer and one step.
struct router_streams {
  rng_stream jitter;
  rng_stream noise;
  rng_stream second_expert;

  static router_streams make(std::uint64_t seed, std::uint32_t layer, std::uint32_t step) {
    return {rng_stream{seed, rng_purpose::router_jitter, layer, step},
            rng_stream{seed, rng_purpose::router_noise, layer, step},
            rng_stream{seed, rng_purpose::second_expert, layer, step}};
  }
};

// Multiplier of router-input element (t, j): U[1−ε, 1+ε]. Element i = t·d + j takes lane i mod 4 of
// Philox block i / 4: one generator call serves four elements (jitter draws one number per input
// element, and the generator dominated its cost when each element had its own call).
MOE_HOST_DEVICE float jitter_from_word(std::uint32_t word, float epsilon) {
  return 1.0f - epsilon + 2.0f * epsilon * uniform01(word);
}
MOE_HOST_DEVICE float jitter_factor(const rng_stream& s, float epsilon, index_t t, index_t j, index_t d_model) {
  const auto i = std::uint64_t(t * d_model + j);
  return jitter_from_word(s.bits(i >> 2).v[i & 3u], epsilon);
}
// jitter_factor(s, ε, t, j, d) for j in [first, end), into factor[0 .. end − first); at most
// MaxColumns columns. The blocks are drawn as one run first (rng_stream::bits_n).
template <index_t MaxColumns>
MOE_HOST_DEVICE void jitter_factors(const rng_stream& s, float epsilon, index_t t, index_t first, index_t end,
                                    index_t d_model, float* factor) {
  const auto i0 = std::uint64_t(t * d_model + first), i1 = std::uint64_t(t * d_model + end);
  const std::uint64_t b0 = i0 >> 2, blocks = ((i1 + 3) >> 2) - b0;
  philox4x32 words[(MaxColumns + 6) / 4 + 1];
  s.bits_n(b0, blocks, words);
  const std::uint64_t skip = i0 - 4 * b0;
  for (index_t j = 0; j < end - first; ++j) {
    const std::uint64_t q = skip + std::uint64_t(j);
    factor[j] = jitter_from_word(words[q >> 2].v[q & 3u], epsilon);
  }
}

// Final logit h of expert e of token t from its raw logit (and learned-noise pre-activation): noise
// (only when `noisy`, training) then the soft cap. One element: the per-token loop below and the
// CUDA gating kernel (a warp per token, moe/cuda/gating.cuh) both call it.
template <class R, class Config>
MOE_HOST_DEVICE R token_logit(const Config& cfg, bool noisy, const rng_stream& noise_rng, index_t t, int num_experts,
                              int e, R raw, R noise_pre) {
  R h = detail::router_round(cfg, raw);
  if (noisy && (cfg.learned_noise || cfg.noise_stddev > 0.0f)) {
    const R n = R(normal(noise_rng, std::uint64_t(t) * std::uint64_t(num_experts) + std::uint64_t(e)));
    const R sigma = cfg.learned_noise ? detail::softplus(noise_pre) : R(cfg.noise_stddev);
    h += sigma * n;
  }
  if (cfg.logit_soft_cap > 0.0f) {
    const R c = R(cfg.logit_soft_cap);
    h = c * std::tanh(h / c);
  }
  return detail::router_round(cfg, h);
}

// Forward of one token: raw logits (and learned-noise pre-activations) to final logits h,
// probabilities p and log-sum-exp. Noise is drawn only when `noisy` (training).
template <class R, class Config>
MOE_HOST_DEVICE void token_logits_forward(const Config& cfg, bool noisy, const rng_stream& noise_rng, index_t t,
                                          int num_experts, const R* raw, const R* noise_pre, R* logits, R* probs,
                                          R* lse) {
  const int E = num_experts;
  for (int e = 0; e < E; ++e)
    logits[e] = token_logit(cfg, noisy, noise_rng, t, E, e, raw[e], noise_pre ? noise_pre[e] : R(0));
  const R m = max_above(logits, 0, E, R(-INFINITY));  // a second pass: token_logit may call out (noise, tanh)
  R sum = 0;
  for (int e = 0; e < E; ++e) {
    const R v = std::exp(logits[e] - m);
    probs[e] = v;
    sum += v;
  }
  const R inv = R(1) / sum;
  for (int e = 0; e < E; ++e) probs[e] = detail::router_round(cfg, probs[e] * inv);
  *lse = m + std::log(sum);
}

// Backward of one token. In: dprobs (∂L/∂p) and dlogits (∂L/∂h from losses on the logits, e.g. the
// z-loss), both length E. Out: draw = ∂L/∂raw and, with learned noise, dnoise_pre = ∂L/∂(x̃·W_noise).
template <class R, class Config>
MOE_HOST_DEVICE void token_logits_backward(const Config& cfg, bool noisy, const rng_stream& noise_rng, index_t t,
                                           int num_experts, const R* logits, const R* probs, const R* noise_pre,
                                           const R* dprobs, const R* dlogits, R* draw, R* dnoise_pre) {
  const int E = num_experts;
  R dot = 0;
  for (int e = 0; e < E; ++e) dot += probs[e] * dprobs[e];
  for (int e = 0; e < E; ++e) {
    R dh = probs[e] * (dprobs[e] - dot) + dlogits[e];  // softmax backward, plus direct logit terms
    if (cfg.logit_soft_cap > 0.0f) {
      const R tanh_v = logits[e] / R(cfg.logit_soft_cap);  // h = c·tanh(h₀/c)
      dh *= R(1) - tanh_v * tanh_v;
    }
    draw[e] = dh;
    if (dnoise_pre) {
      R dn = 0;
      if (noisy && cfg.learned_noise) {
        const R n = R(normal(noise_rng, std::uint64_t(t) * std::uint64_t(E) + std::uint64_t(e)));
        dn = dh * n * logistic(noise_pre[e]).s;  // softplus' = σ
      }
      dnoise_pre[e] = dn;
    }
  }
}

// The shared validation of the logit options.
template <class Config>
void check_router_logit_options(const Config& cfg) {
  require(cfg.jitter >= 0.0f && cfg.jitter < 1.0f, "router.jitter", "epsilon=", cfg.jitter, " must be in [0, 1)");
  require(cfg.noise_stddev >= 0.0f && std::isfinite(cfg.noise_stddev), "router.noise_stddev",
          "stddev=", cfg.noise_stddev, " must be finite and >= 0");
  require(!(cfg.learned_noise && cfg.noise_stddev > 0.0f), "router.noise_stddev", "stddev=", cfg.noise_stddev,
          " conflicts with learned_noise=true (the learned noise sets its own stddev); use one of them");
  require(cfg.logit_soft_cap >= 0.0f && std::isfinite(cfg.logit_soft_cap), "router.logit_soft_cap",
          "cap=", cfg.logit_soft_cap, " must be finite and >= 0 (0 = off)");
  require(cfg.init_scale > 0.0f && std::isfinite(cfg.init_scale), "router.init_scale", "scale=", cfg.init_scale,
          " must be finite and > 0");
  require(cfg.precision == router_precision::float32 || cfg.precision == router_precision::bfloat16,
          "router.precision", "value=", int(cfg.precision), " is not router_precision::float32 or ::bfloat16");
}

}  // namespace moe
