// benchmarks/layer_top1.cpp — full-layer benchmarks of top-1 routing: the Switch Transformer preset
// (ReLU experts, capacity factor 1.25 in training, jitter 1e-2, load-balancing loss) with each
// dispatcher, without its jitter, and with its fine-tuning expert dropout (0.4). Dense baseline: a
// ReLU FFN of width d_ff.
//
// layer_init/switch_transformer/E:<E>: constructing the layer (allocating its parameters, gradients
// and state, drawing the truncated-normal weights). Counters: params_per_s; vs_small_pages = the
// same construction with MOE_HUGE_PAGES=0 (4 KiB page faults) / this one, as configured (the
// context's huge_pages line says what moe::host_huge_pages() chose: on a guest that reports free
// pages to its host the default is no advice, and the ratio is about 1; MOE_HUGE_PAGES=1 measures
// the advice there).
#include <cstdlib>
#include <optional>

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

// Seconds to construct and destroy one layer. Buffers this large come from mmap and go back on
// destruction, so each construction faults its pages in afresh.
template <class Layer>
double construction_seconds(const typename Layer::config& cfg) {
  const auto start = std::chrono::steady_clock::now();
  {
    Layer layer(cfg, space());
    benchmark::DoNotOptimize(layer.router_weights().data);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void bm_switch_init(benchmark::State& st, int E) {
  using preset = moe::presets::switch_transformer<float, moe::host, moe::sorted_dispatch>;
  using Layer = preset::layer;
  const auto cfg = preset::make_config(sizes().d_model, sizes().d_ff, E, 1);
  // The baseline turns the huge-page advice off through its environment variable, then restores it.
  const char* env = std::getenv("MOE_HUGE_PAGES");
  const std::optional<std::string> saved = env ? std::optional<std::string>(env) : std::nullopt;
  ::setenv("MOE_HUGE_PAGES", "0", 1);
  construction_seconds<Layer>(cfg);  // warm-up (the pool, the allocator)
  const double small_pages = construction_seconds<Layer>(cfg);
  if (saved) ::setenv("MOE_HUGE_PAGES", saved->c_str(), 1);
  else ::unsetenv("MOE_HUGE_PAGES");
  double params = 0.0;
  for (auto _ : st) {
    Layer layer(cfg, space());
    params = double(layer.parameter_count());
    benchmark::DoNotOptimize(layer.router_weights().data);
  }
  st.counters["params_per_s"] = rate(params);
  st.counters["params_M"] = params * 1e-6;
  st.counters["vs_small_pages"] = ratio_to(small_pages);
}

}  // namespace

void register_layer_top1_benchmarks() {
  for (const int E : sizes().layer_experts) {
    const std::string name = "layer_init/switch_transformer/E:" + std::to_string(E);
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { bm_switch_init(st, E); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  const std::vector<int>& experts = sizes().layer_experts;
  const std::vector<int> first{experts.front()};
  register_switch<moe::sorted_dispatch>("sorted", experts);
  register_switch<moe::sorted_dispatch>("sorted", first, /*jitter=*/false);
  register_switch<moe::sorted_dispatch>("sorted", first, /*jitter=*/true, /*expert_dropout=*/0.4f);
  register_switch<moe::padded_dispatch>("padded", first);
  register_switch<moe::one_hot_dispatch>("one_hot", first);
}

}  // namespace moe_bench
