// moe/losses/loss_inputs.hpp — the routing summary every auxiliary loss is computed from.
//
// The layer reduces the router's output once per routing group; each loss then reads what it needs.
// Losses are per group and averaged over groups (not computed over the concatenation of groups or
// layers).
#pragma once

#include "moe/core/config.hpp"

namespace moe {

template <class R>
struct loss_inputs {
  int tokens = 0;        // T
  int experts = 0;       // E
  int groups = 0;        // G
  int group_tokens = 0;  // S = T / G
  // Normalisers: all tokens and groups the loss averages over (more than T and G when the groups
  // are spread over expert-parallel ranks; each rank then computes its part of the mean).
  index_t total_tokens = 0;
  int total_groups = 0;
  const R* probs = nullptr;         // [T, E] router probabilities
  const R* lse = nullptr;           // [T]    log Σ_e exp(logit)
  const R* prob_sum = nullptr;      // [G, E] Σ_{t ∈ g} p[t, e]
  const R* first_count = nullptr;   // [G, E] tokens of g whose first choice is e
  const R* choice_count = nullptr;  // [G, E] tokens of g that chose e among their active choices
  const R* gate_sum = nullptr;      // [G, E] Σ of gates of the active (token, e) pairs of g
  const R* lse_sq_sum = nullptr;    // [G]    Σ_{t ∈ g} lse[t]²
};

}  // namespace moe
