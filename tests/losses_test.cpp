// Auxiliary-loss values against numbers worked out by hand, per-group averaging, and the routing
// statistics of known logits. (Their gradients are checked by finite differences in
// layer_gradient_test.cpp.)
#include "test_util.hpp"

#include <cmath>

namespace {

template <class Layer>
Layer identity_layer(typename Layer::config c) {
  c.d_model = c.num_experts;
  c.d_ff = 4;
  Layer l(c);
  moe_test::set_identity_router(l);
  return l;
}

template <class Layer>
moe::routing_statistics run(Layer& l, const std::vector<std::vector<double>>& logits) {
  std::vector<double> x;
  for (const auto& row : logits) x.insert(x.end(), row.begin(), row.end());
  moe_test::run_forward(l, x, int(logits.size()), {.training = true, .step = 0});
  return l.statistics();
}

const double ln2 = std::log(2.0), ln3 = std::log(3.0), ln4 = std::log(4.0);

}  // namespace

TEST_CASE("load balancing and z-loss: two tokens, two experts, by hand") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing, moe::router_z_loss>>;
  L::config c{};
  c.num_experts = 2;
  c.losses.load_balancing.weight = 0.01;
  c.losses.router_z_loss.weight = 0.001;
  L l = identity_layer<L>(c);
  // p(t0) = (1/2, 1/2): the tie goes to expert 0; p(t1) = (3/4, 1/4).
  const auto s = run(l, {{0, 0}, {ln3, 0}});
  // f = (1, 0), P = (0.625, 0.375): L_B = 2 · (1 · 0.625) = 1.25
  CHECK(s.loss("load_balancing") == doctest::Approx(1.25).epsilon(1e-14));
  // lse = (ln 2, ln 4): L_z = (ln²2 + ln²4) / 2
  const double z = (ln2 * ln2 + ln4 * ln4) / 2;
  CHECK(s.loss("router_z_loss") == doctest::Approx(z).epsilon(1e-14));
  CHECK(s.aux_loss == doctest::Approx(0.01 * 1.25 + 0.001 * z).epsilon(1e-14));
}

TEST_CASE("load balancing counts: first choice vs any of the k choices") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing>>;
  L::config c{};
  c.num_experts = 3;
  c.router.k = 2;
  // p(t0) = (4, 2, 1)/7 -> choices (0, 1); p(t1) = (1, 2, 4)/7 -> choices (2, 1).
  // P = (5/14, 4/14, 5/14).
  const std::vector<std::vector<double>> logits = {{ln4, ln2, 0}, {0, ln2, ln4}};
  SUBCASE("first choice: f = (1/2, 0, 1/2)") {
    L l = identity_layer<L>(c);
    CHECK(run(l, logits).loss("load_balancing") == doctest::Approx(3 * (0.5 * 5 + 0.5 * 5) / 14.0).epsilon(1e-14));
  }
  SUBCASE("any choice: f = (1/2, 1, 1/2)") {
    c.losses.load_balancing.count = moe::load_balancing_count::any_choice;
    L l = identity_layer<L>(c);
    CHECK(run(l, logits).loss("load_balancing") ==
          doctest::Approx(3 * (0.5 * 5 + 1.0 * 4 + 0.5 * 5) / 14.0).epsilon(1e-14));
  }
}

TEST_CASE("load balancing is 1 at uniform router probabilities, whatever the choices") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing>>;
  L::config c{};
  c.num_experts = 4;
  L l = identity_layer<L>(c);
  const auto s = run(l, {{0, 0, 0, 0}, {1, 1, 1, 1}, {-2, -2, -2, -2}});
  CHECK(s.loss("load_balancing") == doctest::Approx(1.0).epsilon(1e-14));
  // Statistics of uniform probabilities: entropy ln 4, top-1 probability 1/4.
  CHECK(s.router_entropy == doctest::Approx(std::log(4.0)).epsilon(1e-14));
  CHECK(s.mean_top1_probability == doctest::Approx(0.25).epsilon(1e-14));
  CHECK(s.router_logit_max == doctest::Approx(2.0));
  CHECK(s.router_logit_rms == doctest::Approx(std::sqrt((0.0 + 4 * 1 + 4 * 4) / 12.0)).epsilon(1e-14));
}

TEST_CASE("importance loss: CV² of the per-expert gate sums") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::importance>>;
  L::config c{};
  c.num_experts = 3;
  c.router.k = 2;
  L l = identity_layer<L>(c);
  // p(t0) = (4, 2, 1)/7 -> gates 4/7 (e0), 2/7 (e1); p(t1) = (1, 3, 4)/8 -> gates 4/8 (e2), 3/8 (e1).
  const auto s = run(l, {{ln4, ln2, 0}, {0, ln3, ln4}});
  const double imp[3] = {4.0 / 7, 2.0 / 7 + 3.0 / 8, 4.0 / 8};
  const double mean = (imp[0] + imp[1] + imp[2]) / 3;
  double var = 0;
  for (double v : imp) var += (v - mean) * (v - mean) / 3;
  CHECK(s.loss("importance") == doctest::Approx(var / (mean * mean + 1e-10)).epsilon(1e-12));
  CHECK(s.loss("importance") > 0.01);
}

TEST_CASE("losses are computed per routing group and averaged over groups") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing, moe::router_z_loss>>;
  L::config c{};
  c.num_experts = 2;
  const std::vector<std::vector<double>> logits = {{0, 0}, {ln3, 0}, {0, ln3}, {0, ln3}};
  // Group 0 is the hand case above (L_B = 1.25). Group 1: p = (1/4, 3/4) twice, f = (0, 1),
  // P = (1/4, 3/4): L_B = 2 · 3/4 = 1.5. Mean over groups: 1.375.
  c.group_size = 2;
  L grouped = identity_layer<L>(c);
  const auto s = run(grouped, logits);
  CHECK(s.loss("load_balancing") == doctest::Approx(1.375).epsilon(1e-14));
  // Over the concatenation instead: f = (1/2, 1/2), P = (1/2, 1/2) -> 1: a different number.
  c.group_size = 0;
  L whole = identity_layer<L>(c);
  CHECK(run(whole, logits).loss("load_balancing") == doctest::Approx(1.0).epsilon(1e-14));
  // The z-loss is a mean over tokens either way.
  const double z = (ln2 * ln2 + 3 * ln4 * ln4) / 4;
  CHECK(s.loss("router_z_loss") == doctest::Approx(z).epsilon(1e-14));
}

TEST_CASE("z-loss on soft-capped logits") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::router_z_loss>>;
  L::config c{};
  c.num_experts = 2;
  c.router.logit_soft_cap = 2.0f;
  L l = identity_layer<L>(c);
  const auto s = run(l, {{10, 0}});
  const double h = 2.0 * std::tanh(10.0 / 2.0);
  const double lse = std::log(std::exp(h) + 1.0);
  CHECK(s.loss("router_z_loss") == doctest::Approx(lse * lse).epsilon(1e-14));
  CHECK(s.router_logit_max == doctest::Approx(h).epsilon(1e-14));
}
