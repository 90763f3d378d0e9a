// moe/routing/plan.hpp — the routing of one forward call: shapes and the arrays every stage
// reads and writes (all carved from the caller's workspace, in the execution space's memory).
//
// Vocabulary
//   token t ∈ [0, T); routing group g = t / S of S tokens; expert e ∈ [0, E).
//   pair p = t·K + j: the j-th (token, expert) proposal of token t. K = k for top-k routing; for
//     expert choice every token proposes itself to every expert (K = E, pair t·E + e).
//   segment s = e·G + g: the capacity bucket of expert e in group g (expert-major, so rows of one
//     expert are contiguous across groups).
//   slot: position of a pair in its segment in fill order; slot < C is kept, otherwise dropped.
#pragma once

#include <cstdint>

#include "moe/core/config.hpp"
#include "moe/core/workspace.hpp"

namespace moe {

struct routing_shape {
  int tokens = 0;           // T
  int experts = 0;          // E
  int groups = 0;           // G
  int group_tokens = 0;     // S = T / G
  int pairs_per_token = 0;  // K
  int capacity = 0;         // C: slots per segment
  index_t d_model = 0;
  // Expert parallelism: the tokens and groups of all ranks together (the normalisers of the
  // auxiliary losses) and the global index of this call's first token (the key of its random
  // draws). A single layer has total_tokens = tokens, total_groups = groups, token_base = 0.
  index_t total_tokens = 0;
  int total_groups = 0;
  index_t token_base = 0;

  index_t pairs() const { return index_t(tokens) * pairs_per_token; }
  int segments() const { return experts * groups; }
};

// What a layer's routing plan holds beyond what every plan holds.
struct routing_plan_needs {
  bool learned_noise = false;    // W_noise's GEMMs and gradients (Shazeer et al.'s learned noise)
  bool rounded_weights = false;  // bfloat16-rounded copies of W_r (and W_noise): router_precision::bfloat16
  bool bpr = false;              // batch-prioritised routing's per-group ranks
  int num_losses = 0;            // auxiliary losses whose values are kept
};

template <class R>
struct routing_plan {
  routing_shape shape;

  // Router forward.
  R* router_input = nullptr;  // [T, d] x̃ = x ⊙ jitter, in the router's precision
  // [d, E] W_r and W_noise as the router's GEMMs read them: rounded to bfloat16 by the forward for
  // router_precision::bfloat16 (and read again by the backward); null otherwise (the layer's own).
  R* router_weights = nullptr;
  R* noise_weights = nullptr;
  R* raw = nullptr;           // [T, E] x̃ · W_r
  R* noise_pre = nullptr;     // [T, E] x̃ · W_noise (learned noise only)
  R* logits = nullptr;        // [T, E] final logits h
  R* probs = nullptr;         // [T, E] softmax(h)
  R* lse = nullptr;           // [T]    log Σ exp(h)
  R* top1 = nullptr;          // [T]    max_e p (batch-prioritised routing score)
  R* entropy = nullptr;       // [T]    −Σ p log p (statistics)
  R* logit_absmax = nullptr;  // [T]    max_e |h| (statistics)
  R* logit_sumsq = nullptr;   // [T]    Σ_e h² (statistics)
  R* unrouted = nullptr;      // [T]    1 when every proposal of the token was dropped (statistics)
  R* stat_sums = nullptr;     // [8]    reductions of the per-token statistics

  // Proposals.
  int* pair_expert = nullptr;           // [P]
  R* pair_gate = nullptr;               // [P]
  std::uint8_t* pair_active = nullptr;  // [P] 0 when the second-expert policy did not send it
  int* pair_segment = nullptr;          // [P] e·G + g, or -1 when inactive
  int* pair_slot = nullptr;             // [P] slot if kept, -1 if inactive or dropped

  // Capacity.
  int* segment_count = nullptr;    // [E·G] active proposals per segment (before capacity)
  int* segment_offsets = nullptr;  // [E·G + 1] exclusive scan of segment_count
  int* bpr_rank = nullptr;         // [T] rank of the token within its group by top-1 probability
  std::uint64_t* keys_in = nullptr;
  std::uint64_t* keys_out = nullptr;
  int* values_in = nullptr;
  int* values_out = nullptr;
  void* sort_scratch = nullptr;
  std::size_t sort_scratch_bytes = 0;

  // Loss summary (per group g, expert e: index g·E + e).
  R* prob_sum = nullptr;
  R* first_count = nullptr;
  R* choice_count = nullptr;
  R* gate_sum = nullptr;
  R* lse_sq_sum = nullptr;  // [G]
  R* loss_values = nullptr;  // [number of losses]

  // Backward scratch.
  R* dgate = nullptr;   // [P]
  R* dprobs = nullptr;  // [T, E]
  R* draw = nullptr;    // [T, E]
  R* dnoise = nullptr;  // [T, E] (learned noise only)
  R* dxr = nullptr;     // [T, d]
  R* dx_acc = nullptr;  // [T, d] ∂L/∂x from the experts, before the router's part is added
  R* router_partials = nullptr;  // [G, d, E] ∂L/∂W_r of each routing group
  R* noise_partials = nullptr;   // [G, d, E] ∂L/∂W_noise of each routing group (learned noise only)

  template <class Space>
  static void carve(workspace_carver& w, const routing_shape& s, const routing_plan_needs& needs, routing_plan& p) {
    const index_t T = s.tokens, E = s.experts, P = s.pairs(), SEG = s.segments(), d = s.d_model;
    const bool learned_noise = needs.learned_noise, bpr = needs.bpr;
    const int num_losses = needs.num_losses;
    p.shape = s;
    p.router_input = w.take<R>(T * d);
    p.router_weights = needs.rounded_weights ? w.take<R>(d * E) : nullptr;
    p.noise_weights = needs.rounded_weights && learned_noise ? w.take<R>(d * E) : nullptr;
    p.raw = w.take<R>(T * E);
    p.noise_pre = learned_noise ? w.take<R>(T * E) : nullptr;
    p.logits = w.take<R>(T * E);
    p.probs = w.take<R>(T * E);
    p.lse = w.take<R>(T);
    p.top1 = w.take<R>(T);
    p.entropy = w.take<R>(T);
    p.logit_absmax = w.take<R>(T);
    p.logit_sumsq = w.take<R>(T);
    p.unrouted = w.take<R>(T);
    p.stat_sums = w.take<R>(8);
    p.pair_expert = w.take<int>(P);
    p.pair_gate = w.take<R>(P);
    p.pair_active = w.take<std::uint8_t>(P);
    p.pair_segment = w.take<int>(P);
    p.pair_slot = w.take<int>(P);
    p.segment_count = w.take<int>(SEG);
    p.segment_offsets = w.take<int>(SEG + 1);
    p.bpr_rank = bpr ? w.take<int>(T) : nullptr;
    const index_t sort_n = P > T ? P : T;
    p.keys_in = w.take<std::uint64_t>(sort_n);
    p.keys_out = w.take<std::uint64_t>(sort_n);
    p.values_in = w.take<int>(sort_n);
    p.values_out = w.take<int>(sort_n);
    p.sort_scratch_bytes = Space::radix_sort_scratch_bytes(sort_n);
    p.sort_scratch = w.take<std::byte>(index_t(p.sort_scratch_bytes));
    p.prob_sum = w.take<R>(s.groups * E);
    p.first_count = w.take<R>(s.groups * E);
    p.choice_count = w.take<R>(s.groups * E);
    p.gate_sum = w.take<R>(s.groups * E);
    p.lse_sq_sum = w.take<R>(s.groups);
    p.loss_values = w.take<R>(num_losses > 0 ? num_losses : 1);
    p.dgate = w.take<R>(P);
    p.dprobs = w.take<R>(T * E);
    p.draw = w.take<R>(T * E);
    p.dnoise = learned_noise ? w.take<R>(T * E) : nullptr;
    p.dxr = w.take<R>(T * d);
    p.dx_acc = w.take<R>(T * d);
    p.router_partials = w.take<R>(index_t(s.groups) * d * E);
    p.noise_partials = learned_noise ? w.take<R>(index_t(s.groups) * d * E) : nullptr;
  }
};

}  // namespace moe
