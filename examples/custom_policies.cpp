// moe-custom-policies: a layer composed of the library's router and load-balancing loss and two
// policies of the user's own (custom_policies.hpp: the squared-ReLU expert activation and the
// mean-probability KL loss), trained with plain SGD to imitate a fixed random teacher. Prints the
// regression loss and each auxiliary loss by name; exits 1 unless the loss halves and the
// auxiliary losses stay finite (a CTest test runs it).
//   moe-custom-policies [steps]   (default 300)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "custom_policies.hpp"

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 300;
  if (steps < 1) {
    std::fprintf(stderr, "steps: '%s' must be a positive integer\n", argv[1]);
    return 2;
  }
  using layer_t = moe::layer<float, moe::top_k, moe::losses<moe::load_balancing, example::mean_probability_kl>,
                             example::squared_relu_ffn>;
  layer_t::config cfg{.d_model = 32, .d_ff = 64, .num_experts = 4, .router = {.k = 2, .renormalize = true}};
  cfg.capacity.train = cfg.capacity.eval = 2.0;
  cfg.losses.mean_probability_kl.weight = 0.1;
  layer_t layer(cfg);

  // The teacher: target = tanh(x · A), A random; fresh inputs every step.
  const int tokens = 256, d = cfg.d_model;
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  std::vector<float> a(std::size_t(d) * std::size_t(d));
  for (float& v : a) v = normal(gen) / std::sqrt(float(d));
  std::vector<float> x(std::size_t(tokens) * std::size_t(d)), target(x.size()), y(x.size()), dy(x.size()),
      dx(x.size());

  const float lr = 0.05f;
  double first = 0, last = 0;
  for (int step = 0; step < steps; ++step) {
    for (float& v : x) v = normal(gen);
    for (int t = 0; t < tokens; ++t)
      for (int j = 0; j < d; ++j) {
        float s = 0;
        for (int i = 0; i < d; ++i) s += x[std::size_t(t * d + i)] * a[std::size_t(i * d + j)];
        target[std::size_t(t * d + j)] = std::tanh(s);
      }
    layer.forward({.training = true, .step = std::uint32_t(step)}, {x.data(), tokens, d}, {y.data(), tokens, d});
    double mse = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      const float r = y[i] - target[i];
      mse += 0.5 * double(r) * double(r) / tokens;
      dy[i] = r / float(tokens);
    }
    layer.zero_grad();
    layer.backward({dy.data(), tokens, d}, {dx.data(), tokens, d});  // the auxiliary losses' gradients too
    layer.for_each_parameter([&](const auto& p) {
      for (moe::index_t i = 0; i < p.size(); ++i) p.value[i] -= lr * p.grad[i];
    });

    const moe::routing_statistics s = layer.statistics();
    if (step == 0) first = mse;
    last = mse;
    if (step % 50 == 0 || step == steps - 1) {
      std::printf("step %4d  mse %.4f", step, mse);
      for (const auto& [name, value] : s.losses) std::printf("  %s %.4f", name.c_str(), value);
      double busiest = 0;
      for (int e = 0; e < s.experts; ++e) busiest = std::max(busiest, s.load(e));
      std::printf("  busiest expert %.1f%%\n", 100 * busiest);
    }
    if (!std::isfinite(mse) || !std::isfinite(s.aux_loss) || s.loss("mean_probability_kl") < 0) {
      std::fprintf(stderr, "step %d: mse %g, aux loss %g: not finite or negative\n", step, mse, s.aux_loss);
      return 1;
    }
  }
  if (steps >= 100 && !(last < 0.5 * first)) {
    std::fprintf(stderr, "the loss did not halve: %.4f -> %.4f\n", first, last);
    return 1;
  }
  return 0;
}
