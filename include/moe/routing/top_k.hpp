// moe/routing/top_k.hpp — token-choice routing: every token picks its k most probable experts.
//
// k = 1 is the Switch Transformer (Fedus et al. 2021, eq. 1–2: gate = p_i(x), not renormalised);
// k = 2 is GShard (Lepikhin et al. 2020, Algorithm 1) / GLaM / ST-MoE: the two gates are divided by
// their sum ("renormalize"), and the second expert may be sent only some of the time (the
// second-expert policy, Mesh-TF's `second_policy_train/eval` with `second_threshold`).
//
// Selection is by probability, largest first; equal probabilities go to the lower expert index.
// Renormalisation is over all k chosen experts (before the second-expert policy and before
// capacity), as in Mesh-TF; a pair dropped later keeps its gate and contributes zero.
#pragma once

#include <cmath>

#include "moe/core/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/math.hpp"
#include "moe/core/policy.hpp"
#include "moe/core/rng.hpp"
#include "moe/routing/router_logits.hpp"

namespace moe {

// When the second choice of top-2 routing is dispatched (GShard §2.2; Mesh-TF second_policy).
enum class second_expert {
  all,        // always (GLaM, ST-MoE)
  none,       // never: top-2 gates and losses, top-1 compute
  threshold,  // only when its gate exceeds `second_threshold`
  random,     // with probability min(1, gate₂ / second_threshold) (GShard: threshold 0.2)
  sampling,   // the second expert is drawn from p restricted to the other experts, not the argmax
};

inline const char* to_string(second_expert s) {
  switch (s) {
    case second_expert::all: return "all";
    case second_expert::none: return "none";
    case second_expert::threshold: return "threshold";
    case second_expert::random: return "random";
    case second_expert::sampling: return "sampling";
  }
  return "?";
}

struct top_k {
  using policy_kind = router_kind;
  static constexpr const char* name = "top_k";
  // Tokens choose experts (so per-token load-balancing losses apply).
  static constexpr bool token_choice = true;

  struct config {
    int k = 1;                 // experts per token
    bool renormalize = false;  // divide the k gates by their sum (GShard/GLaM top-2)
    second_expert second_policy_train = second_expert::all;
    second_expert second_policy_eval = second_expert::all;
    float second_threshold = 0.2f;  // GShard / Mesh-TF default
    // Logit options (see router_logits.hpp).
    float jitter = 0.0f;
    float noise_stddev = 0.0f;
    bool learned_noise = false;
    float logit_soft_cap = 0.0f;
    float init_scale = 1.0f;
    router_precision precision = router_precision::float32;
    bool operator==(const config&) const = default;
  };

  static void check(const config& c, int num_experts) {
    require(c.k >= 1, "top_k", "k=", c.k, " must be at least 1");
    require(c.k <= num_experts, "top_k", "k=", c.k, " exceeds num_experts=", num_experts);
    require(!(c.k == 1 && c.renormalize), "top_k",
            "renormalize=true with k=1 makes every gate 1 and cuts the router off from the task gradient; "
            "use renormalize=false for top-1 (Switch)");
    for (second_expert s : {c.second_policy_train, c.second_policy_eval})
      require(s == second_expert::all || c.k == 2, "top_k", "second_policy=", to_string(s),
              " needs k=2, got k=", c.k);
    require(c.second_threshold > 0.0f && c.second_threshold <= 1.0f, "top_k",
            "second_threshold=", c.second_threshold, " must be in (0, 1]");
    check_router_logit_options(c);
  }

  // Pairs (token, expert) proposed per token.
  static int pairs_per_token(const config& c, int /*num_experts*/) { return c.k; }

  // The lowest of the first j chosen experts that is at least `lo`, else E: the end of the run of
  // free experts that starts at lo.
  MOE_HOST_DEVICE static int next_taken(const int* expert, int j, int lo, int num_experts) {
    int hi = num_experts;
    for (int i = 0; i < j; ++i)
      if (expert[i] >= lo && expert[i] < hi) hi = expert[i];
    return hi;
  }

  // Chooses the k experts of token t. Writes expert[j], gate[j], active[j] for j < k (j = choice
  // rank) and returns the top-1 probability (the batch-prioritised routing score).
  template <class R>
  MOE_HOST_DEVICE static R select(const config& c, bool training, const rng_stream& second_rng, index_t t,
                                  int num_experts, const R* probs, int* expert, R* gate,
                                  std::uint8_t* active) {
    const int E = num_experts;
    const second_expert policy = training ? c.second_policy_train : c.second_policy_eval;
    for (int j = 0; j < c.k; ++j) {
      int best = -1;
      R best_p = R(-1);
      if (j == 1 && policy == second_expert::sampling) {
        // Sample among the experts other than the first, proportionally to p.
        R rest = 0;
        for (int e = 0; e < E; ++e)
          if (e != expert[0]) rest += probs[e];
        const R u = R(uniform(second_rng, std::uint64_t(t))) * rest;
        R cum = 0;
        for (int e = 0; e < E; ++e) {
          if (e == expert[0]) continue;
          best = e;  // the last eligible expert catches rounding at the top end
          cum += probs[e];
          if (u < cum) break;
        }
        best_p = probs[best];
      } else {
        // The first free expert of highest probability: the maximum over the runs of experts between
        // the j taken ones (max_above: vectorised), then the first free expert that equals it.
        for (int lo = 0; lo < E;) {
          const int hi = next_taken(expert, j, lo, E);
          best_p = max_above(probs, lo, hi, best_p);
          lo = hi + 1;
        }
        for (int lo = 0; best < 0 && best_p > R(-1) && lo < E;) {
          const int hi = next_taken(expert, j, lo, E);
          for (int e = lo; e < hi; ++e)
            if (probs[e] == best_p) {
              best = e;
              best_p = probs[e];  // of +0 and -0, the expert's own
              break;
            }
          lo = hi + 1;
        }
      }
      // NaN probabilities (non-finite logits) match no comparison and leave best at -1. The host
      // space has thrown before this point; the CUDA space reports them after the step (device
      // code cannot throw), so the token takes the lowest free expert to keep every index in range.
      if (best < 0) {
        for (int e = E - 1; e >= 0; --e) {
          bool taken = false;
          for (int i = 0; i < j; ++i) taken |= expert[i] == e;
          if (!taken) best = e;
        }
        best_p = probs[best];
      }
      expert[j] = best;
      gate[j] = best_p;
      active[j] = 1;
    }
    if (c.renormalize) {
      R sum = 0;
      for (int j = 0; j < c.k; ++j) sum += gate[j];
      for (int j = 0; j < c.k; ++j) gate[j] /= sum;
    }
    if (c.k == 2) {
      if (policy == second_expert::none) {
        active[1] = 0;
      } else if (policy == second_expert::threshold) {
        active[1] = gate[1] > R(c.second_threshold);
      } else if (policy == second_expert::random) {
        const R u = R(uniform(second_rng, std::uint64_t(t)));
        active[1] = u < gate[1] / R(c.second_threshold);
      }
    }
    return probs[expert[0]];
  }

  // Backward of select for token t: adds ∂L/∂p to dprobs from ∂L/∂gate (dgate, per choice rank).
  template <class R>
  MOE_HOST_DEVICE static void select_backward(const config& c, int /*num_experts*/, const R* probs, const int* expert,
                                              const R* gate, const R* dgate, R* dprobs) {
    if (!c.renormalize) {
      for (int j = 0; j < c.k; ++j) dprobs[expert[j]] += dgate[j];
      return;
    }
    // gate_j = p_j / S, S = Σ_i p_i over the chosen experts: ∂gate_j/∂p_i = (δ_ij − gate_j) / S.
    R sum = 0, dot = 0;
    for (int j = 0; j < c.k; ++j) {
      sum += probs[expert[j]];
      dot += dgate[j] * gate[j];
    }
    for (int j = 0; j < c.k; ++j) dprobs[expert[j]] += (dgate[j] - dot) / sum;
  }
};

}  // namespace moe
