// The sorted, padded and one-hot dispatchers compute the same function: same outputs, input
// gradients and parameter gradients, for token-choice and expert-choice routing, with drops,
// routing groups and expert dropout (whose mask is keyed by token and expert, not by row).
#include "test_util.hpp"

#include <algorithm>
#include <cmath>

namespace {

struct result {
  std::vector<double> y, dx, grads;
  double aux = 0;
};

template <class Layer>
result run(const typename Layer::config& c, int tokens, moe::step_context ctx) {
  using T = typename Layer::element_type;
  Layer l(c);
  const int d = c.d_model;
  const auto x = moe_test::random_vector<T>(std::size_t(tokens) * d, 31);
  const auto dy = moe_test::random_vector<T>(std::size_t(tokens) * d, 32);
  std::vector<T> y(x.size()), dx(x.size());
  l.forward(ctx, {x.data(), tokens, d}, {y.data(), tokens, d});
  l.backward({dy.data(), tokens, d}, {dx.data(), tokens, d});
  result r;
  for (auto v : y) r.y.push_back(double(moe::widen(v)));
  for (auto v : dx) r.dx.push_back(double(moe::widen(v)));
  l.for_each_parameter([&](const auto& p) {
    for (moe::index_t i = 0; i < p.size(); ++i) r.grads.push_back(double(p.grad[i]));
  });
  r.aux = l.statistics().aux_loss;
  return r;
}

void check_close(const std::vector<double>& a, const std::vector<double>& b, double tol, const char* what) {
  REQUIRE(a.size() == b.size());
  double scale = 0;
  for (double v : a) scale = std::max(scale, std::abs(v));
  int bad = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::abs(a[i] - b[i]) > tol * std::max(1.0, scale)) ++bad;
  INFO(what, ": ", bad, " of ", a.size(), " differ by more than ", tol, " x ", std::max(1.0, scale));
  CHECK(bad == 0);
  CHECK(scale > 0);  // not a comparison of zeros
}

template <class T, class Router, class Expert, class Config>
void compare_dispatchers(Config tweak, int tokens, double tol) {
  using sorted = moe::layer<T, Router, moe::sorted_dispatch, Expert, moe::losses<moe::router_z_loss>>;
  using padded = moe::layer<T, Router, moe::padded_dispatch, Expert, moe::losses<moe::router_z_loss>>;
  using one_hot = moe::layer<T, Router, moe::one_hot_dispatch, Expert, moe::losses<moe::router_z_loss>>;
  typename sorted::config c{};
  c.d_model = 16;
  c.d_ff = 24;
  c.num_experts = 4;
  c.seed = 3;
  c.capacity.train = 0.8;
  c.capacity.minimum = 1;
  tweak(c);
  auto to = [](const auto& from, auto to_cfg) {
    to_cfg.d_model = from.d_model;
    to_cfg.d_ff = from.d_ff;
    to_cfg.num_experts = from.num_experts;
    to_cfg.group_size = from.group_size;
    to_cfg.seed = from.seed;
    to_cfg.router = from.router;
    to_cfg.capacity = from.capacity;
    to_cfg.losses = from.losses;
    to_cfg.expert = from.expert;
    return to_cfg;
  };
  const moe::step_context ctx{.training = true, .step = 2};
  const result a = run<sorted>(c, tokens, ctx);
  const result b = run<padded>(to(c, typename padded::config{}), tokens, ctx);
  const result o = run<one_hot>(to(c, typename one_hot::config{}), tokens, ctx);
  for (const result* r : {&b, &o}) {
    check_close(a.y, r->y, tol, "y");
    check_close(a.dx, r->dx, tol, "dx");
    check_close(a.grads, r->grads, tol, "parameter gradients");
    CHECK(a.aux == doctest::Approx(r->aux).epsilon(tol));
  }
}

}  // namespace

TEST_CASE_TEMPLATE("dispatchers agree: top-1, ReLU, with drops", T, double, float) {
  const double tol = std::is_same_v<T, double> ? 1e-12 : 2e-5;
  compare_dispatchers<T, moe::top_k, moe::relu_ffn>([](auto&) {}, 64, tol);
}

TEST_CASE_TEMPLATE("dispatchers agree: top-2 renormalised, GEGLU, groups, BPR, expert dropout", T, double, float) {
  const double tol = std::is_same_v<T, double> ? 1e-12 : 2e-5;
  compare_dispatchers<T, moe::top_k, moe::geglu_ffn>(
      [](auto& c) {
        c.router.k = 2;
        c.router.renormalize = true;
        c.group_size = 16;
        c.capacity.order = moe::drop_order::bpr;
        c.expert.dropout = 0.25f;
        c.expert.bias = true;
      },
      64, tol);
}

TEST_CASE_TEMPLATE("dispatchers agree: expert choice, SwiGLU", T, double, float) {
  const double tol = std::is_same_v<T, double> ? 1e-12 : 2e-5;
  compare_dispatchers<T, moe::expert_choice, moe::swiglu_ffn>([](auto& c) { c.capacity.train = 1.5; }, 48, tol);
}

TEST_CASE("dispatchers agree in bfloat16 within bfloat16 tolerance") {
  compare_dispatchers<moe::bfloat16, moe::top_k, moe::geglu_ffn>(
      [](auto& c) {
        c.router.k = 2;
        c.router.renormalize = true;
      },
      64, 3e-2);
}
