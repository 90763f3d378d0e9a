// The usage example of README.md, compiled and run as a test. The README's code block must stay
// identical to the lines between the markers (checked by readme_example_in_sync).
// [readme-example-begin]
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  // Top-2 routing, GEGLU experts, 2·T/E slots per expert, load-balancing + router z-loss.
  using moe_layer = moe::layer<float, moe::top_k, moe::capacity_factor,
                               moe::losses<moe::load_balancing, moe::router_z_loss>, moe::geglu_ffn>;
  moe_layer::config cfg{.d_model = 64, .d_ff = 256, .num_experts = 8, .router = {.k = 2, .renormalize = true},
                        .capacity = {.train = 2.0, .eval = 2.0}};
  cfg.losses.router_z_loss.weight = 1e-3;
  moe_layer layer(cfg);

  const int tokens = 512, d = 64;
  std::vector<float> x(tokens * d), y(x.size()), dy(x.size()), dx(x.size());
  std::mt19937 gen(42);
  std::normal_distribution<float> normal;
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = normal(gen), dy[i] = normal(gen);

  layer.forward({.training = true, .step = 0}, {x.data(), tokens, d}, {y.data(), tokens, d});
  layer.backward({dy.data(), tokens, d}, {dx.data(), tokens, d});  // gradients accumulate in the layer
  const moe::routing_statistics s = layer.statistics();
  std::printf("aux loss %.4f  dropped %.1f%%  router entropy %.3f\n", s.aux_loss, 100 * s.dropped_fraction,
              s.router_entropy);
  layer.for_each_parameter([](const auto& p) { std::printf("%-14s %lld values\n", p.name, (long long)p.size()); });
  return s.aux_loss > 0 && std::isfinite(dx[0]) ? 0 : 1;
}
// [readme-example-end]
