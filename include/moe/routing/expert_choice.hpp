// moe/routing/expert_choice.hpp — expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts
// with Expert Choice Routing"): every expert picks the C tokens of its routing group with the
// highest router probability; a token may be picked by several experts or by none.
//
// S = softmax(X·W_r) over experts (eq. 1); expert e takes the top-C entries of column e of S within
// the group, ties to the lower token index; the gate of a picked (token, expert) pair is S[t, e].
// C comes from the capacity policy: C = capacity_factor · tokens / experts (the paper's k = n·c/e).
//
// Here that is expressed as: each token proposes itself to every expert with priority S[t, e], and
// the capacity step keeps the C best proposals per expert. Load is balanced by construction, so the
// token-choice load-balancing and importance losses do not apply (a layer rejects them at compile
// time); the router z-loss does.
#pragma once

#include "moe/core/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/policy.hpp"
#include "moe/core/rng.hpp"
#include "moe/routing/router_logits.hpp"

namespace moe {

struct expert_choice {
  using policy_kind = router_kind;
  static constexpr const char* name = "expert_choice";
  static constexpr bool token_choice = false;

  struct config {
    // Logit options (see router_logits.hpp).
    float jitter = 0.0f;
    float noise_stddev = 0.0f;
    bool learned_noise = false;
    float logit_soft_cap = 0.0f;
    float init_scale = 1.0f;
    router_precision precision = router_precision::float32;
    bool operator==(const config&) const = default;
  };

  static void check(const config& c, int /*num_experts*/) { check_router_logit_options(c); }

  static int pairs_per_token(const config&, int num_experts) { return num_experts; }

  // Token t proposes itself to every expert: pair j is expert j with gate p_j. Returns the top-1
  // probability (reported in the statistics; the ordering uses each pair's own gate).
  template <class R>
  MOE_HOST_DEVICE static R select(const config&, bool, const rng_stream&, index_t, int num_experts, const R* probs,
                                  int* expert, R* gate, std::uint8_t* active) {
    R top = 0;
    for (int e = 0; e < num_experts; ++e) {
      expert[e] = e;
      gate[e] = probs[e];
      active[e] = 1;
      top = probs[e] > top ? probs[e] : top;
    }
    return top;
  }

  template <class R>
  MOE_HOST_DEVICE static void select_backward(const config&, int num_experts, const R*, const int*, const R*,
                                              const R* dgate, R* dprobs) {
    for (int e = 0; e < num_experts; ++e) dprobs[e] += dgate[e];
  }
};

}  // namespace moe
