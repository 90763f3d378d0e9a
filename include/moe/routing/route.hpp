// moe/routing/route.hpp — the routing stages of a layer call, written once against the
// execution-space primitives:
//   router_forward     x → x̃ → logits → probabilities → proposals (router policy)
//   routing_summary    per-group sums the auxiliary losses read, and the loss values
//   assign_slots       fill order and capacity: which proposals are kept, in which slot
//   router_backward    ∂L/∂gates (+ auxiliary losses) → ∂L/∂logits → ∂L/∂W_r, ∂L/∂x
// Compile-time branches inside the lambdas are plain `if`s on constexpr values, because nvcc's
// extended lambdas may not first capture a variable inside `if constexpr`.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "moe/capacity/capacity_factor.hpp"
#include "moe/core/config.hpp"
#include "moe/core/numeric.hpp"
#include "moe/core/op.hpp"
#include "moe/experts/ffn.hpp"  // detail::elementwise_columns, column_run
#include "moe/losses/loss_inputs.hpp"
#include "moe/routing/plan.hpp"
#include "moe/routing/router_logits.hpp"

namespace moe::detail {

// Keys that sort larger values first: the complement of a non-negative float's bits.
MOE_HOST_DEVICE std::uint32_t descending_key(float v) { return ~float_bits(v < 0.0f ? 0.0f : v); }

inline int bits_for(std::uint64_t values) { return int(std::bit_width(values)); }

template <class R>
loss_inputs<R> make_loss_inputs(const routing_plan<R>& p) {
  loss_inputs<R> in;
  in.tokens = p.shape.tokens;
  in.experts = p.shape.experts;
  in.groups = p.shape.groups;
  in.group_tokens = p.shape.group_tokens;
  in.probs = p.probs;
  in.lse = p.lse;
  in.prob_sum = p.prob_sum;
  in.first_count = p.first_count;
  in.choice_count = p.choice_count;
  in.gate_sum = p.gate_sum;
  in.lse_sq_sum = p.lse_sq_sum;
  in.total_tokens = p.shape.total_tokens;
  in.total_groups = p.shape.total_groups;
  return in;
}

// A space may run the per-token gating step below (noise, soft cap, softmax, statistics, selection,
// segments) with its own kernel: moe::cuda does for E <= 256 (moe/cuda/gating.cuh, a warp per
// token). It must compute what the per-token loop computes, with the same single-source pieces
// (token_logit, Router::select).
template <class Space>
struct token_gating {
  static constexpr bool available = false;
};

// W_r and W_noise as the router's GEMMs read them: the caller's for the float32 router. The
// bfloat16 router reads copies rounded to bfloat16 (a bfloat16 model's matrix unit takes bfloat16
// operands and accumulates in float32), kept in the plan: round_router_weights fills them in the
// forward, and the backward's GEMMs read what the forward's read. The gradients pass the rounding
// straight through: ∂L/∂W_r is the float32 one at the rounded x̃.
template <class R>
struct router_weights_read {
  const R* router;
  const R* noise;
};
template <class Config, class R>
void require_rounded_weight_copies(const Config& cfg, const routing_plan<R>& plan) {
  require(plan.router_weights != nullptr && (!cfg.learned_noise || plan.noise_weights != nullptr), "router",
          "precision=bfloat16 needs the plan's rounded weight copies (routing_plan_needs::rounded_weights)");
}
template <class Config, class R>
router_weights_read<R> router_gemm_weights(const Config& cfg, const routing_plan<R>& plan, const R* w_router,
                                           const R* w_noise) {
  if (cfg.precision != router_precision::bfloat16) return {w_router, w_noise};
  require_rounded_weight_copies(cfg, plan);
  return {plan.router_weights, cfg.learned_noise ? plan.noise_weights : nullptr};
}
template <class Space, class Config, class R>
void round_router_weights(const Space& sp, const Config& cfg, const routing_plan<R>& plan, const R* w_router,
                          const R* w_noise) {
  if (cfg.precision != router_precision::bfloat16) return;
  require_rounded_weight_copies(cfg, plan);
  R *wr = plan.router_weights, *wn = cfg.learned_noise ? plan.noise_weights : nullptr;
  const auto c = cfg;
  sp.parallel_for(plan.shape.d_model * plan.shape.experts, [=] MOE_LAMBDA(index_t i) {
    wr[i] = detail::router_round(c, w_router[i]);
    if (wn) wn[i] = detail::router_round(c, w_noise[i]);
  });
}

template <class Router, class Space, class T, class R>
void router_forward(const Space& sp, const typename Router::config& cfg, const routing_plan<R>& plan, const T* x,
                    const R* w_router, const R* w_noise, bool training, const router_streams& rng) {
  const routing_shape s = plan.shape;
  const index_t T_ = s.tokens, d = s.d_model, base = s.token_base;
  const int E = s.experts, K = s.pairs_per_token, G = s.groups, S = s.group_tokens;

  // x̃ = x ⊙ jitter, widened to the router's precision (selective precision), or rounded to
  // bfloat16 for the bfloat16 router. Random draws are keyed by the global token index (base + t),
  // so expert-parallel ranks draw what one rank would.
  R* xr = plan.router_input;
  const bool jitter = training && cfg.jitter > 0.0f;
  const float eps = cfg.jitter;
  const rng_stream jitter_rng = rng.jitter;
  const auto c = cfg;
  constexpr index_t width = elementwise_columns<Space>();
  const index_t runs = (d + width - 1) / width;
  sp.parallel_for(T_ * runs, [=] MOE_LAMBDA(index_t run_index) {
    const column_run run(run_index, runs, width, d);
    const index_t t = run.row, i0 = t * d;
    if (jitter) {
      // Factors first, then the products: the generator's loop vectorises on its own.
      float factor[width];
      jitter_factors<width>(jitter_rng, eps, base + t, run.first, run.end, d, factor);
      for (index_t j = run.first; j < run.end; ++j)
        xr[i0 + j] = detail::router_round(c, convert<R>(x[i0 + j]) * R(factor[j - run.first]));
    } else {
      for (index_t j = run.first; j < run.end; ++j) xr[i0 + j] = detail::router_round(c, convert<R>(x[i0 + j]));
    }
  });
  round_router_weights(sp, cfg, plan, w_router, w_noise);
  const router_weights_read<R> w = router_gemm_weights(cfg, plan, w_router, w_noise);

  // One GEMM per routing group: a BLAS may round a row differently depending on how many rows its
  // call has, and per-group calls make every row's logits independent of the other groups (so a
  // rank holding some of the groups computes the same bits as one rank holding all of them).
  for (int g = 0; g < G; ++g) {
    const index_t t0 = index_t(g) * S;
    sp.gemm(op::none, op::none, index_t(S), E, d, R(1), xr + t0 * d, d, w.router, E, R(0), plan.raw + t0 * E, E);
    if (cfg.learned_noise)
      sp.gemm(op::none, op::none, index_t(S), E, d, R(1), xr + t0 * d, d, w.noise, E, R(0), plan.noise_pre + t0 * E,
              E);
  }
  sp.check_finite(plan.raw, T_, E, "router logits", "token", "expert");
  if (cfg.learned_noise) sp.check_finite(plan.noise_pre, T_, E, "router noise logits", "token", "expert");

  const rng_stream noise_rng = rng.noise, second_rng = rng.second_expert;
  if constexpr (token_gating<Space>::available) {
    if (token_gating<Space>::handles(E)) {
      token_gating<Space>::template run<Router>(sp, c, training, noise_rng, second_rng, plan);
      return;
    }
  }
  const R *raw = plan.raw, *noise_pre = plan.noise_pre;
  R *logits = plan.logits, *probs = plan.probs, *lse = plan.lse, *top1 = plan.top1;
  R *entropy = plan.entropy, *absmax = plan.logit_absmax, *sumsq = plan.logit_sumsq;
  int* pair_expert = plan.pair_expert;
  R* pair_gate = plan.pair_gate;
  std::uint8_t* pair_active = plan.pair_active;
  int* pair_segment = plan.pair_segment;
  sp.parallel_for(T_, [=] MOE_LAMBDA(index_t t) {
    const index_t row = t * E;
    token_logits_forward(c, training, noise_rng, base + t, E, raw + row, noise_pre ? noise_pre + row : nullptr,
                         logits + row, probs + row, lse + t);
    R ent = 0, amax = 0, sq = 0;
    for (int e = 0; e < E; ++e) {
      const R pe = probs[row + e], h = logits[row + e];
      if (pe > R(0)) ent -= pe * std::log(pe);
      const R a = h < R(0) ? -h : h;
      amax = a > amax ? a : amax;
      sq += h * h;
    }
    entropy[t] = ent;
    absmax[t] = amax;
    sumsq[t] = sq;
    const index_t p0 = t * K;
    top1[t] = Router::template select<R>(c, training, second_rng, base + t, E, probs + row, pair_expert + p0,
                                         pair_gate + p0, pair_active + p0);
    const int g = int(t / S);
    for (int j = 0; j < K; ++j)
      pair_segment[p0 + j] = pair_active[p0 + j] ? pair_expert[p0 + j] * G + g : -1;
  });
}

// Per-group sums for the auxiliary losses, then the loss values (loss_values[i], total at [n]).
template <class Router, class LossSet, class Space, class R>
void routing_summary(const Space& sp, const typename LossSet::config& loss_cfg, const routing_plan<R>& plan) {
  const routing_shape s = plan.shape;
  const int E = s.experts, K = s.pairs_per_token, S = s.group_tokens;
  const R* probs = plan.probs;
  const int* pair_expert = plan.pair_expert;
  const R* pair_gate = plan.pair_gate;
  const std::uint8_t* pair_active = plan.pair_active;
  const int G = s.groups;
  // Sums over each group's tokens t of per-token values, one column per expert e (group_row_sums:
  // many blocks per group on a GPU, row order on the host).
  sp.group_row_sums(G, S, E, [=] MOE_LAMBDA(index_t t, index_t e) -> R { return probs[t * E + e]; }, plan.prob_sum);
  if (Router::token_choice) {
    // A token hands 1 (or its gate) to each expert it chose: group_pair_sums walks the k pairs of a
    // token where group_row_sums would visit all E experts (the same sums, bit for bit).
    const auto one = [=] MOE_LAMBDA(index_t, int) -> R { return R(1); };
    sp.group_pair_sums(
        G, S, E, 1, [=] MOE_LAMBDA(index_t t, int) -> index_t { return pair_expert[t * K]; }, one,
        plan.first_count);
    const auto chosen = [=] MOE_LAMBDA(index_t t, int j) -> index_t {
      return pair_active[t * K + j] ? index_t(pair_expert[t * K + j]) : index_t(-1);
    };
    sp.group_pair_sums(G, S, E, K, chosen, one, plan.choice_count);
    sp.group_pair_sums(
        G, S, E, K, chosen, [=] MOE_LAMBDA(index_t t, int j) -> R { return pair_gate[t * K + j]; }, plan.gate_sum);
  } else {  // every token proposes to every expert: pair t·E + e
    sp.fill_zero(plan.first_count, sizeof(R) * std::size_t(G) * std::size_t(E));
    sp.group_row_sums(
        G, S, E, [=] MOE_LAMBDA(index_t t, index_t e) -> R { return pair_active[t * E + e] ? R(1) : R(0); },
        plan.choice_count);
    sp.group_row_sums(
        G, S, E,
        [=] MOE_LAMBDA(index_t t, index_t e) -> R { return pair_active[t * E + e] ? pair_gate[t * E + e] : R(0); },
        plan.gate_sum);
  }
  const R* lse = plan.lse;
  sp.group_row_sums(G, S, 1, [=] MOE_LAMBDA(index_t t, index_t) -> R { return lse[t] * lse[t]; }, plan.lse_sq_sum);
  const loss_inputs<R> in = make_loss_inputs(plan);
  const auto lc = loss_cfg;
  R* values = plan.loss_values;
  sp.parallel_for(1, [=] MOE_LAMBDA(index_t) { values[LossSet::count] = LossSet::template values<R>(lc, in, values); });
}

// Fill order and capacity. Proposals are sorted by (segment, priority); the slot of a proposal is
// its position within its segment, and it is kept when the slot is below the capacity C.
//   token choice, position order: priority = j·S + (position in group)   (all first choices first)
//   token choice, bpr:            priority = j·S + (rank by top-1 probability in the group)
//   expert choice:                priority = the proposal's probability, highest first
// Token choice sorts by segment alone: proposal (t, j) is laid out at j·T + g·S + (its position or
// rank in group g), which within any one segment is priority order already, so the stable sort
// keeps it. The key is then the segment's few bits rather than 32 more (at T 64K, K 2, E 64: one
// pass of the host radix sort instead of four). Expert choice sorts (segment, probability) keys;
// ties keep the lower pair index (the radix sort is stable), and only each segment's first C need
// their order (radix_sort_segment_heads: the host selects them rather than sorting all S).
template <class Router, class Space, class R>
void assign_slots(const Space& sp, const routing_plan<R>& plan, drop_order order) {
  const routing_shape s = plan.shape;
  const int K = s.pairs_per_token, G = s.groups, S = s.group_tokens, C = s.capacity, SEG = s.segments();
  const index_t P = s.pairs();
  const bool bpr = Router::token_choice && order == drop_order::bpr;
  std::uint64_t *keys_in = plan.keys_in, *keys_out = plan.keys_out;
  int *vals_in = plan.values_in, *vals_out = plan.values_out;

  int* bpr_rank = plan.bpr_rank;
  if (bpr) {
    const R* top1 = plan.top1;
    sp.parallel_for(s.tokens, [=] MOE_LAMBDA(index_t t) {
      keys_in[t] = (std::uint64_t(t / S) << 32) | descending_key(float(top1[t]));
      vals_in[t] = int(t);
    });
    sp.radix_sort_pairs(keys_in, keys_out, vals_in, vals_out, s.tokens, 32 + bits_for(std::uint64_t(G)),
                        plan.sort_scratch, plan.sort_scratch_bytes);
    sp.parallel_for(s.tokens, [=] MOE_LAMBDA(index_t i) { bpr_rank[vals_out[i]] = int(i % S); });
  }

  const int* pair_segment = plan.pair_segment;
  const R* pair_gate = plan.pair_gate;
  const int T = s.tokens;
  // Inactive proposals get a segment of their own, past the real ones.
  if (Router::token_choice) {
    sp.parallel_for(P, [=] MOE_LAMBDA(index_t p) {
      const int seg = pair_segment[p];
      const index_t t = p / K;
      const int j = int(p - t * K);
      const index_t g = t / S;
      const index_t within = bpr ? index_t(bpr_rank[t]) : t - g * S;
      const index_t at = index_t(j) * T + g * S + within;
      keys_in[at] = seg < 0 ? std::uint64_t(SEG) : std::uint64_t(seg);
      vals_in[at] = int(p);
    });
  } else {
    sp.parallel_for(P, [=] MOE_LAMBDA(index_t p) {
      const int seg = pair_segment[p];
      keys_in[p] = seg < 0 ? std::uint64_t(SEG) << 32
                           : (std::uint64_t(seg) << 32) | descending_key(float(pair_gate[p]));
      vals_in[p] = int(p);
    });
  }
  const int segment_shift = Router::token_choice ? 0 : 32;
  const int key_bits = segment_shift + bits_for(std::uint64_t(SEG));
  const index_t kept = std::min<index_t>(C, S);
  if constexpr (Router::token_choice)
    sp.radix_sort_pairs(keys_in, keys_out, vals_in, vals_out, P, key_bits, plan.sort_scratch, plan.sort_scratch_bytes);
  else  // only the first C of a segment are kept: the rest need no order
    sp.radix_sort_segment_heads(keys_in, keys_out, vals_in, vals_out, P, key_bits, segment_shift, kept,
                                plan.sort_scratch, plan.sort_scratch_bytes);
  sp.histogram(pair_segment, P, plan.segment_count, SEG);
  sp.offsets_from_counts(plan.segment_count, plan.segment_offsets, SEG);
  const int* seg_offsets = plan.segment_offsets;
  int* pair_slot = plan.pair_slot;
  if constexpr (!Router::token_choice) {
    // Expert choice keeps at most C of a segment's S proposals (C = cf·S/E): every pair starts
    // dropped, then the first C of each segment in sorted order get their slots. SEG·C writes
    // where a walk over the sorted order would write all T·E slots, each at a random pair.
    sp.parallel_for(P, [=] MOE_LAMBDA(index_t p) { pair_slot[p] = -1; });
    sp.parallel_for(index_t(SEG) * kept, [=] MOE_LAMBDA(index_t j) {
      const index_t seg = j / kept, slot = j - seg * kept, i = seg_offsets[seg] + slot;
      if (i < seg_offsets[seg + 1]) pair_slot[vals_out[i]] = int(slot);
    });
    return;
  }
  sp.parallel_for(P, [=] MOE_LAMBDA(index_t i) {
    const int p = vals_out[i];
    const std::uint64_t seg = keys_out[i] >> segment_shift;
    if (seg >= std::uint64_t(SEG)) {
      pair_slot[p] = -1;
      return;
    }
    const index_t slot = i - seg_offsets[seg];
    pair_slot[p] = slot < C ? int(slot) : -1;
  });
}

// From ∂L/∂gate (plan.dgate, the task part; overwritten with the total) to ∂L/∂x (written, adding
// plan.dx_acc, the experts' part), ∂L/∂raw logits (plan.draw) and the per-group weight gradients
// (plan.router_partials, plan.noise_partials: see accumulate_in_order) unless `weight_grads` is
// false (a frozen router).
template <class Router, class LossSet, class Space, class T, class R>
void router_backward(const Space& sp, const typename Router::config& cfg, const typename LossSet::config& loss_cfg,
                     const routing_plan<R>& plan, const R* w_router, const R* w_noise, T* dx, bool training,
                     const router_streams& rng, R aux_scale, bool weight_grads = true) {
  const routing_shape s = plan.shape;
  const index_t T_ = s.tokens, d = s.d_model, base = s.token_base;
  const int E = s.experts, K = s.pairs_per_token, S = s.group_tokens;
  const loss_inputs<R> in = make_loss_inputs(plan);
  const auto lc = loss_cfg;
  const auto c = cfg;
  R* dgate = plan.dgate;
  const std::uint8_t* pair_active = plan.pair_active;
  const int* pair_expert = plan.pair_expert;

  if constexpr (LossSet::has_gate_grad) {
    sp.parallel_for(s.pairs(), [=] MOE_LAMBDA(index_t p) {
      if (pair_active[p]) dgate[p] += aux_scale * LossSet::gate_grad(lc, in, int((p / K) / S), pair_expert[p]);
    });
  }

  const R *probs = plan.probs, *logits = plan.logits, *noise_pre = plan.noise_pre, *pair_gate = plan.pair_gate;
  R *dprobs = plan.dprobs, *draw = plan.draw, *dnoise = plan.dnoise;
  const rng_stream noise_rng = rng.noise;
  sp.parallel_for(T_, [=] MOE_LAMBDA(index_t t) {
    const index_t row = t * E, p0 = t * K;
    const int g = int(t / S);
    R* dp = dprobs + row;
    R* dh = draw + row;
    for (int e = 0; e < E; ++e) {
      dp[e] = 0;
      dh[e] = 0;
    }
    Router::template select_backward<R>(c, E, probs + row, pair_expert + p0, pair_gate + p0, dgate + p0, dp);
    if (LossSet::has_prob_grad)
      for (int e = 0; e < E; ++e) dp[e] += aux_scale * LossSet::prob_grad(lc, in, g, e);
    if (LossSet::has_logit_grad)
      for (int e = 0; e < E; ++e) dh[e] = aux_scale * LossSet::logit_grad(lc, in, t, e);
    // dh holds ∂L/∂h from the logit losses on entry and ∂L/∂raw on exit (element-wise in place).
    token_logits_backward(c, training, noise_rng, base + t, E, logits + row, probs + row,
                          noise_pre ? noise_pre + row : nullptr, dp, dh, dh, dnoise ? dnoise + row : nullptr);
  });

  // Per group g: ∂L/∂W_r(g) = x̃_gᵀ · ∂raw_g (one GEMM over the group's S tokens, never accumulated
  // in place, so a group's partial is the same bits wherever it is computed).
  for (int g = 0; weight_grads && g < s.groups; ++g) {
    const index_t t0 = index_t(g) * S;
    sp.gemm(op::transpose, op::none, d, E, index_t(S), R(1), plan.router_input + t0 * d, d, plan.draw + t0 * E, E,
            R(0), plan.router_partials + index_t(g) * d * E, E);
    if (cfg.learned_noise)
      sp.gemm(op::transpose, op::none, d, E, index_t(S), R(1), plan.router_input + t0 * d, d, plan.dnoise + t0 * E,
              E, R(0), plan.noise_partials + index_t(g) * d * E, E);
  }
  // ∂L/∂x̃ = ∂raw · W_rᵀ (+ ∂noise_pre · W_noiseᵀ), per group for the reason given in router_forward,
  // with the weights the forward's GEMMs read (bfloat16 router: the rounded copies it left in the plan).
  const router_weights_read<R> w = router_gemm_weights(cfg, plan, w_router, w_noise);
  for (int g = 0; g < s.groups; ++g) {
    const index_t t0 = index_t(g) * S;
    sp.gemm(op::none, op::transpose, index_t(S), d, E, R(1), plan.draw + t0 * E, E, w.router, E, R(0),
            plan.dxr + t0 * d, d);
    if (cfg.learned_noise)
      sp.gemm(op::none, op::transpose, index_t(S), d, E, R(1), plan.dnoise + t0 * E, E, w.noise, E, R(1),
              plan.dxr + t0 * d, d);
  }

  // ∂L/∂x = experts' part + jitter ⊙ ∂L/∂x̃
  const R *dxr = plan.dxr, *dx_acc = plan.dx_acc;
  const bool jitter = training && cfg.jitter > 0.0f;
  const float eps = cfg.jitter;
  const rng_stream jitter_rng = rng.jitter;
  constexpr index_t width = elementwise_columns<Space>();
  const index_t runs = (d + width - 1) / width;
  sp.parallel_for(T_ * runs, [=] MOE_LAMBDA(index_t run_index) {
    const column_run run(run_index, runs, width, d);
    const index_t t = run.row, i0 = t * d;
    if (jitter) {
      float factor[width];
      jitter_factors<width>(jitter_rng, eps, base + t, run.first, run.end, d, factor);
      for (index_t j = run.first; j < run.end; ++j)
        dx[i0 + j] = convert<T>(dx_acc[i0 + j] + dxr[i0 + j] * R(factor[j - run.first]));
    } else {
      for (index_t j = run.first; j < run.end; ++j) dx[i0 + j] = convert<T>(dx_acc[i0 + j] + dxr[i0 + j]);
    }
  });
}

// grad += partials[0] + partials[1] + … (each [n]), added in this order element by element: the
// gradient of a weight shared by all routing groups, the same bits whether the groups were on one
// rank or gathered from several.
template <class Space, class R>
void accumulate_in_order(const Space& sp, const R* partials, int count, index_t n, R* grad) {
  sp.parallel_for(n, [=] MOE_LAMBDA(index_t i) {
    R acc = grad[i];
    for (int g = 0; g < count; ++g) acc += partials[index_t(g) * n + i];
    grad[i] = acc;
  });
}

}  // namespace moe::detail
