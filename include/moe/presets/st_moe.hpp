// moe/presets/st_moe.hpp — the ST-MoE layer (Zoph et al. 2022).
#pragma once

#include <cstdint>

#include "moe/layer/layer.hpp"
#include "moe/parallel/expert_parallel.hpp"

namespace moe::presets {

// Top-2 routing, gated-GELU experts, capacity factor 1.25 (train) / 2.0 (eval), load-balancing
// loss c_B = 1e-2 plus router z-loss c_z = 1e-3, float32 router without jitter.
//
// ST-MoE was trained with Mesh-TF's top-2 gating, which these defaults follow: gates renormalised
// over the two choices, f of the load-balancing loss from first choices, capacity CF·S/E (not
// multiplied by k: at CF 1.25 some second choices are dropped by design). flaxformer's later port
// differs in two places: it combines with the raw probabilities (router.renormalize = false) and
// counts every choice in f (losses.load_balancing.count = any_choice).
template <class T = float, class Space = host, class Dispatch = sorted_dispatch>
struct st_moe {
  using layer =
      moe::layer<T, top_k, capacity_factor, losses<load_balancing, router_z_loss>, geglu_ffn, Dispatch, Space>;
  // The same layer with its experts spread over the ranks of a communicator (expert parallelism).
  template <class Comm>
  using parallel_layer =
      moe::expert_parallel<T, Comm, top_k, capacity_factor, losses<load_balancing, router_z_loss>, geglu_ffn, Dispatch,
                           Space>;
  using config = typename layer::config;

  static config make_config(int d_model, int d_ff, int num_experts, std::uint64_t seed = 0) {
    config c{};
    c.d_model = d_model;
    c.d_ff = d_ff;
    c.num_experts = num_experts;
    c.seed = seed;
    c.router.k = 2;               // §4 "top-2 routing"
    c.router.renormalize = true;  // top-2 gates normalised (GShard-style combine weights)
    c.router.jitter = 0.0f;       // §3.2 Table 4: input jitter hurt quality; not used
    c.capacity.train = 1.25;      // §4: train capacity factor 1.25
    c.capacity.eval = 2.0;        // §4: eval capacity factor 2.0
    c.capacity.rounding = capacity_rounding::floor;
    c.capacity.minimum = 4;
    c.capacity.order = drop_order::position;  // BPR is an option (set drop_order::bpr)
    c.losses.load_balancing.weight = 1e-2;    // §3.1 eq. 6: c_B = 1e-2
    c.losses.router_z_loss.weight = 1e-3;     // §3.1 eq. 6: c_z = 1e-3
    return c;
  }

  // Fine-tuning regularisation studied in §4.3: expert dropout (0.3 is a good value there).
  static config with_fine_tuning(config c, float expert_dropout = 0.3f) {
    c.expert.dropout = expert_dropout;
    return c;
  }
};

}  // namespace moe::presets
