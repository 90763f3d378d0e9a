// moe/routing/concepts.hpp — what a router policy provides.
#pragma once

#include <concepts>
#include <cstdint>

#include "moe/core/policy.hpp"
#include "moe/core/rng.hpp"
#include "moe/routing/router_logits.hpp"

namespace moe {

// A router turns one token's probabilities into (expert, gate) proposals: `pairs_per_token` of
// them, each active or not. `token_choice` says whether tokens choose (top-k) or experts choose.
template <class P>
concept router_policy =
    policy_of_kind<P, router_kind> && std::default_initializable<typename P::config> &&
    requires(const typename P::config& c, const rng_stream& rng, const float* probs, int* expert, float* gate,
             std::uint8_t* active, const float* dgate, float* dprobs) {
      { P::name } -> std::convertible_to<const char*>;
      { P::token_choice } -> std::convertible_to<bool>;
      P::check(c, 1);
      { P::pairs_per_token(c, 1) } -> std::same_as<int>;
      { P::template select<float>(c, true, rng, index_t(0), 1, probs, expert, gate, active) } -> std::same_as<float>;
      P::template select_backward<float>(c, 1, probs, expert, gate, dgate, dprobs);
      // The logit options every router carries (router_logits.hpp).
      c.jitter;
      c.noise_stddev;
      c.learned_noise;
      c.logit_soft_cap;
      c.init_scale;
      { c.precision } -> std::convertible_to<router_precision>;
    };

}  // namespace moe
