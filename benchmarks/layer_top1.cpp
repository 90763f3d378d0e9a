// benchmarks/layer_top1.cpp — full-layer benchmarks of top-1 routing: the Switch Transformer preset
// (ReLU experts, capacity factor 1.25 in training, jitter 1e-2, load-balancing loss) with each
// dispatcher, without its jitter, and with its fine-tuning expert dropout (0.4). Dense baseline: a
// ReLU FFN of width d_ff.
#include "layer_bench.hpp"

namespace moe_bench {

namespace {

// jitter = false: the preset with its input jitter off, which isolates what the jitter costs (two
// Philox draws per input element per step, one in forward and one in backward).
// expert_dropout: the rate on the experts' hidden units (Switch §2.4 fine-tunes with 0.4), which
// isolates what drawing the masks costs (one Philox block per eight hidden units, forward and backward).
template <class Dispatch>
void register_switch(const char* dispatch_name, const std::vector<int>& experts, bool jitter = true,
                     float expert_dropout = 0.0f) {
  using preset = moe::presets::switch_transformer<float, moe::host, Dispatch>;
  layer_case base;
  base.name = std::string(!jitter                 ? "switch_transformer_nojitter/"
                          : expert_dropout > 0.0f ? "switch_transformer_expert_dropout/"
                                                  : "switch_transformer/") +
              dispatch_name;
  base.k = 1;
  base.gated = false;
  base.gelu = false;
  base.tokens = sizes().layer_tokens;
  register_layer<typename preset::layer>(
      base,
      [jitter, expert_dropout](int E) {
        auto c = preset::make_config(sizes().d_model, sizes().d_ff, E, 1);
        if (!jitter) c.router.jitter = 0.0f;
        c.expert.dropout = expert_dropout;
        return c;
      },
      experts, expert_dropout > 0.0f ? std::vector<skew>{skew::uniform} : std::vector<skew>{skew::uniform, skew::zipf},
      expert_dropout > 0.0f ? std::vector<bool>{true} : std::vector<bool>{false, true});
}

}  // namespace

void register_layer_top1_benchmarks() {
  const std::vector<int>& experts = sizes().layer_experts;
  const std::vector<int> first{experts.front()};
  register_switch<moe::sorted_dispatch>("sorted", experts);
  register_switch<moe::sorted_dispatch>("sorted", first, /*jitter=*/false);
  register_switch<moe::sorted_dispatch>("sorted", first, /*jitter=*/true, /*expert_dropout=*/0.4f);
  register_switch<moe::padded_dispatch>("padded", first);
  register_switch<moe::one_hot_dispatch>("one_hot", first);
}

}  // namespace moe_bench
