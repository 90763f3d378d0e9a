// Shared helpers of the layer tests: deterministic random data, finite-difference gradient checks,
// and direct control of router logits for hand-worked routing cases.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <moe/moe.hpp>

namespace moe_test {

// Uniform values in ±[lo, hi] with random sign: never zero, so no test passes on zeros.
template <class T>
std::vector<T> random_vector(std::size_t n, std::uint64_t seed, double lo = 0.1, double hi = 1.0) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> mag(lo, hi);
  std::bernoulli_distribution sign(0.5);
  std::vector<T> v(n);
  for (auto& x : v) x = moe::convert<T>(sign(gen) ? mag(gen) : -mag(gen));
  return v;
}

template <class T>
double dot(const std::vector<T>& a, const std::vector<T>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += double(moe::widen(a[i])) * double(moe::widen(b[i]));
  return s;
}

// Sets the router weights to the identity (d_model must equal num_experts), so that the router
// logits of a call are exactly its input rows: hand-worked routing cases choose logits directly.
template <class Layer>
void set_identity_router(Layer& l) {
  auto w = l.router_weights();
  REQUIRE(w.extent[0] == w.extent[1]);
  for (moe::index_t i = 0; i < w.extent[0]; ++i)
    for (moe::index_t j = 0; j < w.extent[1]; ++j) w(i, j) = i == j ? 1 : 0;
}

// Runs forward on x (training or not) and returns y.
template <class Layer, class T>
std::vector<T> run_forward(Layer& l, const std::vector<T>& x, int tokens, moe::step_context ctx = {}) {
  const int d = l.get_config().d_model;
  std::vector<T> y(x.size());
  l.forward(ctx, {x.data(), tokens, d}, {y.data(), tokens, d});
  return y;
}

struct gradient_check_options {
  moe::step_context ctx{};
  double step = 1e-6;       // central-difference step (float64)
  double tolerance = 1e-6;  // |fd − analytic| ≤ tolerance · max(1, |analytic|)
  bool check_input = true;
  int max_elements_per_tensor = 1 << 30;  // check every element by default
  // Which parameters to check, by name (empty: all). For layers whose loss is piecewise constant
  // in some parameters, where finite differences say nothing.
  std::function<bool(const std::string&)> parameters;
};

// Checks every parameter gradient and the input gradient of L = Σ y ⊙ w + aux_loss against central
// finite differences, for a layer instantiated with T = double. Also checks that no perturbation
// changed a routing decision (a discontinuity would invalidate the difference quotient).
template <class Layer>
void check_layer_gradients(Layer& l, int tokens, std::uint64_t seed, gradient_check_options opt = {}) {
  using T = typename Layer::element_type;
  static_assert(std::is_same_v<T, double>, "finite-difference checks run in float64");
  const int d = l.get_config().d_model;
  const std::size_t n = std::size_t(tokens) * std::size_t(d);
  std::vector<double> x = random_vector<double>(n, seed);
  const std::vector<double> w = random_vector<double>(n, seed + 1);
  std::vector<double> y(n), dx(n);

  auto loss = [&]() {
    l.forward(opt.ctx, {x.data(), tokens, d}, {y.data(), tokens, d});
    return dot(y, w) + l.statistics().aux_loss;
  };
  loss();
  const moe::routing_decisions base = l.routing();
  l.zero_grad();
  l.backward({w.data(), tokens, d}, {dx.data(), tokens, d});

  auto same_routing = [&]() {
    const moe::routing_decisions r = l.routing();
    return r.expert == base.expert && r.slot == base.slot && r.active == base.active;
  };

  const double h = opt.step;
  int checked = 0;
  l.for_each_parameter([&](const auto& p) {
    if (opt.parameters && !opt.parameters(p.name)) return;
    const moe::index_t size = p.size();
    const moe::index_t stride = size > opt.max_elements_per_tensor ? size / opt.max_elements_per_tensor + 1 : 1;
    for (moe::index_t i = 0; i < size; i += stride) {
      const auto saved = p.value[i];
      p.value[i] = saved + h;
      const double lp = loss();
      const bool routing_p = same_routing();
      p.value[i] = saved - h;
      const double lm = loss();
      const bool routing_m = same_routing();
      p.value[i] = saved;
      const double fd = (lp - lm) / (2 * h);
      const double an = double(p.grad[i]);
      INFO(p.name, "[", i, "] analytic=", an, " finite-difference=", fd);
      REQUIRE(routing_p);
      REQUIRE(routing_m);
      CHECK(std::abs(fd - an) <= opt.tolerance * std::max(1.0, std::abs(an)));
      ++checked;
    }
  });
  if (opt.check_input) {
    for (std::size_t i = 0; i < n; ++i) {
      const double saved = x[i];
      x[i] = saved + h;
      const double lp = loss();
      const bool routing_p = same_routing();
      x[i] = saved - h;
      const double lm = loss();
      const bool routing_m = same_routing();
      x[i] = saved;
      const double fd = (lp - lm) / (2 * h);
      INFO("x[", i, "] analytic=", dx[i], " finite-difference=", fd);
      REQUIRE(routing_p);
      REQUIRE(routing_m);
      CHECK(std::abs(fd - dx[i]) <= opt.tolerance * std::max(1.0, std::abs(dx[i])));
      ++checked;
    }
  }
  CHECK(checked > 0);
}

}  // namespace moe_test
