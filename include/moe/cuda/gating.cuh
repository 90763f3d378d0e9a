// moe/cuda/gating.cuh — the fused gating kernel: from raw router logits to each token's choices in
// one launch, a warp per token.
//
// For token t the warp's lanes take experts e = lane, lane + 32, … (coalesced reads of the [T, E]
// rows) and compute the final logits h (noise, soft cap: token_logit, the single-source element
// function), then the softmax with warp-shuffle reductions (max, Σ exp), log-sum-exp, and the
// statistics the layer reports (entropy, max |h|, Σ h²). The probabilities are kept in the warp's
// row of shared memory, where lane 0 runs the router's own selection (Router::select: top-k,
// renormalisation, the second-expert policy, or expert choice's proposals) and writes the pairs'
// segments e·G + g. Same functions and formulas as the per-token loop of route.hpp (the host's
// path, and the CUDA path beyond 256 experts); only the order of the sums differs (fixed butterfly
// trees, so the same bits run to run).
//
// Why: with one thread per token a warp reads 32 rows of E values in a strided pattern and each
// thread loops over E serially; at E = 64–256 the reads of a warp touch 32 different cache lines
// per instruction and the per-token loops run E iterations on one lane.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "moe/core/config.hpp"
#include "moe/core/rng.hpp"
#include "moe/cuda/error.cuh"
#include "moe/cuda/launch.cuh"
#include "moe/cuda/space.cuh"
#include "moe/routing/plan.hpp"
#include "moe/routing/route.hpp"
#include "moe/routing/router_logits.hpp"

namespace moe::cuda_detail {

inline constexpr int gating_max_experts = 256;
inline constexpr int gating_warps = 8;  // tokens per block

template <class R>
__device__ R warp_max(R v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const R o = __shfl_xor_sync(0xffffffffu, v, offset);
    v = o > v ? o : v;
  }
  return v;
}
template <class R>
__device__ R warp_sum(R v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <class Router, class R, class Config>
__global__ void __launch_bounds__(gating_warps * 32)
    gating_kernel(Config c, bool training, rng_stream noise_rng, rng_stream second_rng, routing_plan<R> plan) {
  __shared__ R prob_rows[gating_warps][gating_max_experts];
  const routing_shape s = plan.shape;
  const int E = s.experts, K = s.pairs_per_token, G = s.groups, S = s.group_tokens;
  const index_t T = s.tokens, base = s.token_base;
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  R* row = prob_rows[warp];
  const index_t warps = index_t(gridDim.x) * gating_warps;
  for (index_t t = blockIdx.x * index_t(gating_warps) + warp; t < T; t += warps) {
    const index_t r0 = t * E;
    // Final logits (kept in the shared row until the softmax), their max, max |h| and Σ h².
    R m = -INFINITY, amax = 0, sq = 0;
    for (int e = lane; e < E; e += 32) {
      const R h = token_logit(c, training, noise_rng, base + t, E, e, plan.raw[r0 + e],
                              plan.noise_pre ? plan.noise_pre[r0 + e] : R(0));
      plan.logits[r0 + e] = h;
      row[e] = h;
      m = h > m ? h : m;
      const R a = h < R(0) ? -h : h;
      amax = a > amax ? a : amax;
      sq += h * h;
    }
    m = warp_max(m);
    amax = warp_max(amax);
    sq = warp_sum(sq);
    R sum = 0;
    for (int e = lane; e < E; e += 32) {
      const R v = std::exp(row[e] - m);
      row[e] = v;
      sum += v;
    }
    sum = warp_sum(sum);
    const R inv = R(1) / sum;
    R ent = 0;
    for (int e = lane; e < E; e += 32) {
      const R p = moe::detail::router_round(c, row[e] * inv);
      row[e] = p;
      plan.probs[r0 + e] = p;
      if (p > R(0)) ent -= p * std::log(p);
    }
    ent = warp_sum(ent);
    __syncwarp();  // the row is complete before lane 0 reads all of it
    if (lane == 0) {
      plan.lse[t] = m + std::log(sum);
      plan.entropy[t] = ent;
      plan.logit_absmax[t] = amax;
      plan.logit_sumsq[t] = sq;
      const index_t p0 = t * K;
      plan.top1[t] = Router::template select<R>(c, training, second_rng, base + t, E, row, plan.pair_expert + p0,
                                                 plan.pair_gate + p0, plan.pair_active + p0);
      const int g = int(t / S);
      for (int j = 0; j < K; ++j)
        plan.pair_segment[p0 + j] = plan.pair_active[p0 + j] ? plan.pair_expert[p0 + j] * G + g : -1;
    }
    __syncwarp();  // lane 0 is done with the row before the next token overwrites it
  }
}

}  // namespace moe::cuda_detail

namespace moe::detail {

template <>
struct token_gating<cuda> {
  static constexpr bool available = true;
  static bool handles(int experts) { return experts >= 1 && experts <= cuda_detail::gating_max_experts; }

  template <class Router, class Config, class R>
  static void run(const cuda& sp, const Config& c, bool training, const rng_stream& noise_rng,
                  const rng_stream& second_rng, const routing_plan<R>& plan) {
    const index_t T = plan.shape.tokens;
    if (T <= 0) return;
    const index_t blocks = (T + cuda_detail::gating_warps - 1) / cuda_detail::gating_warps;
    const index_t limit = index_t(sp.multiprocessors()) * 16;
    MOE_CUDA_LAUNCH(unsigned(blocks < limit ? blocks : limit), cuda_detail::gating_warps * 32, sp.stream(),
                    cuda_detail::gating_kernel<Router, R, Config>)(c, training, noise_rng, second_rng, plan);
    cuda_detail::check_launch("gating_kernel", "(tokens=", T, " experts=", plan.shape.experts, ")");
  }
};

}  // namespace moe::detail
