// moe/presets/switch_transformer.hpp — the Switch Transformer layer (Fedus, Zoph, Shazeer 2021).
#pragma once

#include <cstdint>

#include "moe/layer/layer.hpp"
#include "moe/parallel/expert_parallel.hpp"

namespace moe::presets {

// Top-1 routing, ReLU experts, float32 router with input jitter, reduced initialisation scale,
// capacity factor 1.25 (train) / 2.0 (eval), load-balancing loss α = 1e-2.
template <class T = float, class Space = host, class Dispatch = sorted_dispatch>
struct switch_transformer {
  using layer = moe::layer<T, top_k, capacity_factor, losses<load_balancing>, relu_ffn, Dispatch, Space>;
  // The same layer with its experts spread over the ranks of a communicator (expert parallelism).
  template <class Comm>
  using parallel_layer =
      moe::expert_parallel<T, Comm, top_k, capacity_factor, losses<load_balancing>, relu_ffn, Dispatch, Space>;
  using config = typename layer::config;

  static config make_config(int d_model, int d_ff, int num_experts, std::uint64_t seed = 0) {
    config c{};
    c.d_model = d_model;
    c.d_ff = d_ff;
    c.num_experts = num_experts;
    c.seed = seed;
    c.router.k = 1;                   // §2.1 "Switch routing": one expert per token
    c.router.renormalize = false;     // eq. 2: the gate is p_i(x) itself
    c.router.jitter = 1e-2f;          // §2.4 / Mesh-TF: multiplicative jitter U[1−ε, 1+ε], ε = 1e-2
    c.router.init_scale = 0.1f;       // §2.4 "Smaller parameter initialization": s = 0.1 (from 1.0)
    c.expert.init_scale = 0.1f;       // the same scale applies to every weight matrix
    c.capacity.train = 1.25;          // Table 1: capacity factors 1.0 and 1.25 (1.25 the better)
    c.capacity.eval = 2.0;            // §2.2 / Mesh-TF eval capacity factor 2.0
    c.capacity.rounding = capacity_rounding::floor;  // Mesh-TF int(...)
    c.capacity.minimum = 4;                           // Mesh-TF
    c.losses.load_balancing.weight = 1e-2;            // §2.2: α = 10^-2
    c.losses.load_balancing.count = load_balancing_count::first_choice;  // eq. 5: f_i from argmax
    c.expert.dropout = 0.0f;  // pre-training; §2.4 fine-tuning uses expert dropout 0.4 (with_fine_tuning)
    return c;
  }

  // The fine-tuning regularisation of §2.4 (Table 4): expert dropout 0.4 while dropout elsewhere is 0.1.
  static config with_fine_tuning(config c) {
    c.expert.dropout = 0.4f;
    return c;
  }
};

}  // namespace moe::presets
