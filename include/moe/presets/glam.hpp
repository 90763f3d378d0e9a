// moe/presets/glam.hpp — the GLaM MoE layer (Du et al. 2022), GShard-style top-2 gating.
#pragma once

#include <cstdint>

#include "moe/layer/layer.hpp"
#include "moe/parallel/expert_parallel.hpp"

namespace moe::presets {

// Top-2 routing with renormalised gates and the second expert always sent, gated-GELU experts,
// capacity factor 2 (GShard's 2·T/E), load-balancing loss 1e-2.
template <class T = float, class Space = host, class Dispatch = sorted_dispatch>
struct glam {
  using layer = moe::layer<T, top_k, capacity_factor, losses<load_balancing>, geglu_ffn, Dispatch, Space>;
  // The same layer with its experts spread over the ranks of a communicator (expert parallelism).
  template <class Comm>
  using parallel_layer =
      moe::expert_parallel<T, Comm, top_k, capacity_factor, losses<load_balancing>, geglu_ffn, Dispatch, Space>;
  using config = typename layer::config;

  static config make_config(int d_model, int d_ff, int num_experts, std::uint64_t seed = 0) {
    config c{};
    c.d_model = d_model;
    c.d_ff = d_ff;
    c.num_experts = num_experts;
    c.seed = seed;
    c.router.k = 2;                // GLaM §3: "each token is dynamically routed to two experts"
    c.router.renormalize = true;   // GShard Algorithm 1: g1, g2 divided by (g1 + g2)
    c.router.second_policy_train = second_expert::all;  // DESIGN.md §3: second expert 'all'
    c.router.second_policy_eval = second_expert::all;
    c.router.jitter = 0.0f;        // no jitter in GShard/GLaM gating
    c.capacity.train = 2.0;        // GShard: expert capacity 2·T/E
    c.capacity.eval = 2.0;
    c.capacity.rounding = capacity_rounding::floor;
    c.capacity.minimum = 4;
    c.losses.load_balancing.weight = 1e-2;  // GLaM §3 / GShard: auxiliary loss weight 1e-2
    c.losses.load_balancing.count = load_balancing_count::first_choice;  // GShard: top-1 mask
    return c;
  }
};

}  // namespace moe::presets
