// benchmarks/layer_top2.cpp — full-layer benchmarks of top-2 routing with GEGLU experts: the GLaM
// preset (capacity factor 2: no drops under balanced routing), the ST-MoE preset (capacity factor
// 1.25 not scaled by k: up to 37.5 % of second choices dropped by design) and a dropless top-2
// layer with GLaM's settings, and GLaM with its experts frozen. Dense baseline: a GEGLU FFN of width 2·d_ff.
#include "layer_bench.hpp"

namespace moe_bench {

namespace {

// GLaM's routing and experts without a capacity limit (MegaBlocks-style dropless).
using top2_dropless = moe::layer<float, moe::top_k, moe::dropless, moe::losses<moe::load_balancing>, moe::geglu_ffn,
                                 moe::sorted_dispatch>;

top2_dropless::config dropless_config(int E) {
  const auto g = moe::presets::glam<float>::make_config(sizes().d_model, sizes().d_ff, E, 1);
  top2_dropless::config c{};
  c.d_model = g.d_model;
  c.d_ff = g.d_ff;
  c.num_experts = g.num_experts;
  c.seed = g.seed;
  c.router = g.router;
  c.losses.load_balancing = g.losses.load_balancing;
  return c;
}

layer_case top2_case(const char* name) {
  layer_case base;
  base.name = name;
  base.k = 2;
  base.gated = true;
  base.gelu = true;
  base.tokens = sizes().layer_tokens;
  return base;
}

}  // namespace

void register_layer_top2_benchmarks() {
  using glam = moe::presets::glam<float>;
  using st_moe = moe::presets::st_moe<float>;
  const auto skews = {skew::uniform, skew::zipf};
  const std::vector<int>& experts = sizes().layer_experts;
  const int d = sizes().d_model, f = sizes().d_ff;
  register_layer<glam::layer>(
      top2_case("glam/sorted"), [=](int E) { return glam::make_config(d, f, E, 1); }, experts, skews, {false, true});
  register_layer<st_moe::layer>(
      top2_case("st_moe/sorted"), [=](int E) { return st_moe::make_config(d, f, E, 1); }, experts, skews,
      {false, true});
  register_layer<top2_dropless>(top2_case("top2_dropless/sorted"), dropless_config, {experts.front()}, skews,
                                {false, true});
  // Fine-tuning with the experts frozen (set_trainable): the backward without their weight gradients.
  layer_case frozen = top2_case("glam_frozen_experts/sorted");
  frozen.trainable.experts = false;
  register_layer<glam::layer>(
      frozen, [=](int E) { return glam::make_config(d, f, E, 1); }, {experts.front()}, {skew::uniform}, {true});
}

}  // namespace moe_bench
