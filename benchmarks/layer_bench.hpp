// benchmarks/layer_bench.hpp — the full-layer benchmark body, shared by the files that instantiate
// layers (each moe::layer instantiation is a few seconds of compile time, so they are spread over
// more than one translation unit).
//
// One benchmark = one layer type, one pass (forward, or forward + backward), E experts, T tokens and a
// routing skew. Before its timed loop it measures the dense FFN of equal active FLOPs on the same
// tokens (width k·d_ff, same activation, gated when the experts are) and reports
//   vs_dense = dense time / layer time   (1.0 = parity; > 1 the MoE layer is faster)
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common.hpp"

namespace moe_bench {

struct layer_case {
  std::string name;  // e.g. "switch_transformer/sorted"
  int k = 1;         // experts per token (active FLOPs: k experts of d_ff)
  bool gated = false, gelu = false;
  int experts = 8;
  int tokens = 4096;
  skew routing = skew::uniform;
  bool backward = true;
  // Frozen groups (fine-tuning): backward skips their weight-gradient GEMMs. vs_dense still compares
  // with a dense FFN whose weights train.
  moe::trainable_parameters trainable{};
};

inline std::string layer_benchmark_name(const layer_case& c) {
  return "layer/" + c.name + "/" + (c.backward ? "fwd_bwd" : "fwd") + "/E:" + std::to_string(c.experts) +
         "/T:" + std::to_string(c.tokens) + "/skew:" + to_string(c.routing);
}

template <class Layer>
void run_layer(benchmark::State& st, const layer_case& c, const typename Layer::config& cfg) {
  static_assert(std::is_same_v<typename Layer::element_type, float> &&
                std::is_same_v<typename Layer::compute_type, float>);
  const int T = c.tokens, d = cfg.d_model, E = cfg.num_experts;
  Layer layer(cfg, space());
  layer.set_trainable(c.trainable);
  const routed_inputs in = make_routed_inputs(T, d, E, c.k, c.routing, 1234);
  auto w = layer.router_weights();
  std::copy(in.w_router.begin(), in.w_router.end(), w.data);
  // Two inputs with the same routing and different values, used in turn.
  const std::vector<float> x_other = rerandomized_x(in, 99);
  const float* xs[2] = {in.x.data(), x_other.data()};
  const std::size_t n = std::size_t(T) * std::size_t(d);
  std::vector<float> y(n), dx(n);
  const std::vector<float> dy = random_values(n, 5, 0.01f, 0.1f);
  moe::buffer<moe::host> ws(space(), layer.workspace_bytes(T));
  const moe::workspace_span span{ws.data(), ws.bytes()};

  std::uint32_t step = 0;
  auto pass = [&] {
    const float* x = xs[step & 1u];
    layer.forward({.training = true, .step = step}, {x, T, d}, {y.data(), T, d}, span);
    if (c.backward) layer.backward({dy.data(), T, d}, {dx.data(), T, d}, span);
    ++step;
  };
  pass();  // warm-up: first touch of the workspace, OpenBLAS buffers
  pass();
  const moe::routing_statistics stats = layer.statistics();
  const double t_dense = dense_seconds({T, d, c.k * cfg.d_ff, c.gated, c.gelu}, c.backward);

  for (auto _ : st) pass();

  // Useful GEMM FLOPs: kept (token, expert) pairs × one expert FFN (2 or 3 projections of d×d_ff).
  const double kept = double(stats.routed_pairs - stats.dropped_pairs);
  const double fwd_flops = kept * 2.0 * d * cfg.d_ff * (c.gated ? 3 : 2);
  st.counters["tokens_per_s"] = rate(T);
  // Backward: ∂x costs one forward, the weight gradients another (skipped for frozen experts).
  st.counters["TFLOPps"] = rate(fwd_flops * (c.backward ? (c.trainable.experts ? 3 : 2) : 1) * 1e-12);
  st.counters["vs_dense"] = ratio_to(t_dense);
  st.counters["dense_ms"] = t_dense * 1e3;
  set_load_counters(st, stats.routed_per_expert, stats.dropped_fraction);
}

// Registers run_layer<Layer> for the pass/E/skew grid; make_config(E) gives the layer's config.
template <class Layer, class MakeConfig>
void register_layer(layer_case base, MakeConfig make_config, const std::vector<int>& experts,
                    const std::vector<skew>& skews, const std::vector<bool>& passes) {
  for (bool backward : passes)
    for (int E : experts)
      for (skew s : skews) {
        layer_case c = base;
        c.experts = E;
        c.routing = s;
        c.backward = backward;
        const typename Layer::config cfg = make_config(E);
        configure(benchmark::RegisterBenchmark(layer_benchmark_name(c).c_str(),
                                               [c, cfg](benchmark::State& st) { run_layer<Layer>(st, c, cfg); }));
      }
}

}  // namespace moe_bench
