// Policies written outside the library (examples/custom_policies.hpp) compose into a layer like the
// library's own: the concepts accept them, their gradients pass finite differences in float64 with
// token-choice and expert-choice routers, and the loss's value and its name in the statistics are
// what its formula gives by hand.
#include "test_util.hpp"

#include <cmath>

#include "custom_policies.hpp"

static_assert(moe::aux_loss<example::mean_probability_kl>);
static_assert(moe::expert_activation<example::squared_relu>);
static_assert(moe::expert_ffn<example::squared_relu_ffn>);

namespace {

using moe_test::check_layer_gradients;
using moe_test::gradient_check_options;

constexpr int d_model = 6, d_ff = 8, experts = 4, tokens = 12;

gradient_check_options training() {
  gradient_check_options o;
  o.ctx = {.training = true, .step = 2};
  return o;
}

}  // namespace

TEST_CASE("custom policies: gradients with top-2 routing, load balancing and the mean-probability KL") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing, example::mean_probability_kl>,
                       example::squared_relu_ffn>;
  L::config c{.d_model = d_model, .d_ff = d_ff, .num_experts = experts, .group_size = 6, .seed = 5};
  c.router.k = 2;
  c.router.renormalize = true;
  c.capacity.train = 1.0;  // two groups of 6 tokens, C = floor(1.0 · 6 / 4) = 1 per expert: drops happen
  c.capacity.minimum = 1;
  c.losses.load_balancing.weight = 0.2;
  c.losses.mean_probability_kl.weight = 0.5;  // large enough to matter next to the task gradient
  L l(c);
  check_layer_gradients(l, tokens, 61, training());
  CHECK(l.statistics().dropped_pairs > 0);
  CHECK(l.statistics().loss("mean_probability_kl") > 0);
}

TEST_CASE("custom policies: gradients with expert choice (the KL loss reads probabilities only)") {
  using L = moe::layer<double, moe::expert_choice, moe::losses<example::mean_probability_kl>,
                       moe::ffn<example::squared_relu, true>>;
  L::config c{.d_model = d_model, .d_ff = d_ff, .num_experts = experts, .seed = 6};
  c.capacity.train = 1.0;
  c.losses.mean_probability_kl.weight = 0.5;
  L l(c);
  check_layer_gradients(l, tokens, 62, training());
}

TEST_CASE("custom policies: the KL loss's value by hand, per routing group, and its name in the statistics") {
  // Identity router (logits = x), E = 2, two groups of two tokens:
  //   group 0: logits {1, 0}, {0, 0}   → P̄ = ((σ(1) + ½)/2, (σ(−1) + ½)/2)
  //   group 1: logits {0, 2}, {−1, 1}  → P̄ = ((σ(−2) + σ(−2))/2, (σ(2) + σ(2))/2)
  // L = ½ Σ_g Σ_e ½ · log(½ / P̄_ge).
  using L = moe::layer<double, moe::top_k, moe::losses<example::mean_probability_kl>, example::squared_relu_ffn>;
  L::config c{.d_model = 2, .d_ff = 4, .num_experts = 2, .group_size = 2};
  c.router.jitter = 0.0f;
  c.capacity.train = 2.0;
  c.capacity.minimum = 1;
  L l(c);
  moe_test::set_identity_router(l);
  const std::vector<double> x = {1, 0, 0, 0, 0, 2, -1, 1};
  moe_test::run_forward(l, x, 4, {.training = true, .step = 0});
  auto sigmoid = [](double v) { return 1 / (1 + std::exp(-v)); };
  const double p[2][2] = {{(sigmoid(1) + 0.5) / 2, (sigmoid(-1) + 0.5) / 2}, {sigmoid(-2), sigmoid(2)}};
  double expected = 0;
  for (const auto& group : p)
    for (const double mean : group) expected += 0.5 * 0.5 * std::log(0.5 / mean);
  const moe::routing_statistics s = l.statistics();
  REQUIRE(s.losses.size() == 1);
  CHECK(s.losses[0].first == "mean_probability_kl");
  CHECK(s.losses[0].second == doctest::Approx(expected).epsilon(1e-13));
  CHECK(s.aux_loss == doctest::Approx(1e-2 * expected).epsilon(1e-13));  // the default weight

  // Uniform mean probability in every group: the loss is zero.
  moe_test::run_forward(l, std::vector<double>{1, -1, -1, 1, 3, 0, 0, 3}, 4, {.training = true, .step = 0});
  CHECK(std::abs(l.statistics().loss("mean_probability_kl")) < 1e-15);
}
