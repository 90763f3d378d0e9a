// Finite-difference gradient checks in float64 of the whole layer, for every router, capacity,
// loss and expert variant, each dispatcher, and each preset. L = Σ y ⊙ w + aux_loss, so the
// auxiliary losses' gradients are checked along with the task gradient.
#include "test_util.hpp"

using moe_test::check_layer_gradients;
using moe_test::gradient_check_options;

namespace {

constexpr int d_model = 6, d_ff = 8, experts = 4, tokens = 12;

template <class Layer>
typename Layer::config base_config(std::uint64_t seed = 7) {
  typename Layer::config c{};
  c.d_model = d_model;
  c.d_ff = d_ff;
  c.num_experts = experts;
  c.seed = seed;
  if constexpr (requires { c.capacity.minimum; }) {
    // C = floor(0.75 · 12 / 4) = 2 slots per expert: drops happen.
    c.capacity.train = 0.75;
    c.capacity.eval = 1.0;
    c.capacity.minimum = 1;
  }
  return c;
}

gradient_check_options training(std::uint32_t step = 3) {
  gradient_check_options o;
  o.ctx = {.training = true, .step = step};
  return o;
}

}  // namespace

TEST_CASE("gradients: top-1 router, ReLU experts, load balancing, with drops") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing>>;
  auto c = base_config<L>();
  c.losses.load_balancing.weight = 0.3;  // large enough to matter next to the task gradient
  L l(c);
  check_layer_gradients(l, tokens, 11, training());
  CHECK(l.statistics().dropped_pairs > 0);
}

TEST_CASE("gradients: top-2 renormalised, any-choice load balancing, z-loss, importance") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing, moe::router_z_loss, moe::importance>,
                       moe::geglu_ffn>;
  auto c = base_config<L>();
  c.router.k = 2;
  c.router.renormalize = true;
  c.losses.load_balancing.weight = 0.2;
  c.losses.load_balancing.count = moe::load_balancing_count::any_choice;
  c.losses.router_z_loss.weight = 0.1;
  c.losses.importance.weight = 0.3;
  L l(c);
  check_layer_gradients(l, tokens, 12, training());
}

TEST_CASE("gradients: top-3 without renormalisation, SwiGLU, biases and multiplicative bias") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::router_z_loss>, moe::swiglu_ffn>;
  auto c = base_config<L>();
  c.router.k = 3;
  c.expert.bias = true;
  c.expert.multiplicative_bias = true;
  c.losses.router_z_loss.weight = 0.05;
  L l(c);
  // Move biases and scales away from their initial 0 and 1 so their gradients are generic.
  l.for_each_parameter([](const auto& p) {
    const std::string name = p.name;
    if (name.find(".b_") != std::string::npos || name.find(".scale") != std::string::npos) {
      const auto v = moe_test::random_vector<double>(std::size_t(p.size()), 99);
      for (moe::index_t i = 0; i < p.size(); ++i) p.value[i] += 0.3 * v[std::size_t(i)];
    }
  });
  check_layer_gradients(l, tokens, 13, training());
}

TEST_CASE("gradients: second-expert policies") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing>, moe::reglu_ffn>;
  for (auto policy : {moe::second_expert::none, moe::second_expert::threshold, moe::second_expert::random,
                      moe::second_expert::sampling}) {
    CAPTURE(moe::to_string(policy));
    auto c = base_config<L>();
    c.router.k = 2;
    c.router.renormalize = true;
    c.router.second_policy_train = policy;
    c.router.second_threshold = 0.3f;
    c.capacity.train = 2.0;  // no drops: isolate the policy
    L l(c);
    check_layer_gradients(l, tokens, 14, training(5));
    const auto r = l.routing();
    int inactive = 0;
    for (auto a : r.active) inactive += a == 0;
    if (policy == moe::second_expert::none) CHECK(inactive == tokens);
    if (policy == moe::second_expert::sampling) CHECK(inactive == 0);
  }
}

TEST_CASE("gradients: router jitter, fixed noise, learned noise and soft cap in training") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing, moe::router_z_loss>, moe::gelu_ffn>;
  SUBCASE("jitter") {
    auto c = base_config<L>();
    c.router.jitter = 0.1f;
    L l(c);
    check_layer_gradients(l, tokens, 15, training());
  }
  SUBCASE("fixed gaussian noise and soft cap") {
    auto c = base_config<L>();
    c.router.noise_stddev = 0.5f;
    c.router.logit_soft_cap = 1.5f;
    L l(c);
    check_layer_gradients(l, tokens, 16, training());
  }
  SUBCASE("learned noise (noisy top-k) with a non-zero noise matrix") {
    auto c = base_config<L>();
    c.router.k = 2;
    c.router.learned_noise = true;
    L l(c);
    l.for_each_parameter([](const auto& p) {
      if (std::string(p.name) == "router.w_noise") {
        const auto v = moe_test::random_vector<double>(std::size_t(p.size()), 5, 0.1, 0.5);
        for (moe::index_t i = 0; i < p.size(); ++i) p.value[i] = v[std::size_t(i)];
      }
    });
    check_layer_gradients(l, tokens, 17, training());
  }
}

TEST_CASE("gradients: expert choice router with z-loss") {
  using L = moe::layer<double, moe::expert_choice, moe::losses<moe::router_z_loss>, moe::geglu_ffn>;
  auto c = base_config<L>();
  c.losses.router_z_loss.weight = 0.2;
  L l(c);
  check_layer_gradients(l, tokens, 18, training());
  CHECK(l.statistics().kept_per_expert == std::vector<std::int64_t>(experts, 2));
}

TEST_CASE("gradients: batch-prioritised routing, routing groups, evaluation mode") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing, moe::importance>, moe::silu_ffn>;
  auto c = base_config<L>();
  c.router.k = 2;
  c.group_size = 6;  // two groups, capacity and losses per group
  c.capacity.order = moe::drop_order::bpr;
  c.capacity.train = 1.0;  // C = floor(1.0 · 6 / 4) = 1
  c.losses.importance.weight = 0.2;
  L l(c);
  check_layer_gradients(l, tokens, 19, training());
  CHECK(l.statistics().groups == 2);
  gradient_check_options eval;
  eval.ctx = {.training = false, .step = 0};
  check_layer_gradients(l, tokens, 20, eval);
}

TEST_CASE("gradients: dropless capacity") {
  using L = moe::layer<double, moe::top_k, moe::dropless, moe::losses<moe::load_balancing>, moe::gelu_ffn>;
  auto c = base_config<L>();
  c.router.k = 2;
  L l(c);
  check_layer_gradients(l, tokens, 21, training());
  CHECK(l.statistics().dropped_pairs == 0);
}

TEST_CASE("gradients: expert dropout") {
  using L = moe::layer<double, moe::top_k, moe::geglu_ffn>;
  auto c = base_config<L>();
  c.expert.dropout = 0.3f;
  c.expert.multiplicative_bias = true;
  L l(c);
  check_layer_gradients(l, tokens, 22, training());
}

TEST_CASE_TEMPLATE("gradients: each dispatcher", Dispatch, moe::sorted_dispatch, moe::padded_dispatch,
                   moe::one_hot_dispatch) {
  using L = moe::layer<double, moe::top_k, Dispatch, moe::losses<moe::load_balancing>, moe::geglu_ffn>;
  auto c = base_config<L>();
  c.router.k = 2;
  c.router.renormalize = true;
  c.expert.bias = true;
  L l(c);
  check_layer_gradients(l, tokens, 23, training());
}

TEST_CASE("gradients: expert choice through the one-hot dispatcher") {
  using L = moe::layer<double, moe::expert_choice, moe::one_hot_dispatch, moe::relu_ffn>;
  auto c = base_config<L>();
  L l(c);
  check_layer_gradients(l, tokens, 24, training());
}

TEST_CASE("gradients: presets") {
  SUBCASE("switch_transformer") {
    using P = moe::presets::switch_transformer<double>;
    auto c = P::make_config(d_model, d_ff, experts, 3);
    c.capacity.minimum = 1;
    P::layer l(c);
    check_layer_gradients(l, tokens, 25, training());
  }
  SUBCASE("switch_transformer fine-tuning (expert dropout)") {
    using P = moe::presets::switch_transformer<double>;
    P::layer l(P::with_fine_tuning(P::make_config(d_model, d_ff, experts, 3)));
    check_layer_gradients(l, tokens, 26, training());
  }
  SUBCASE("glam") {
    using P = moe::presets::glam<double>;
    P::layer l(P::make_config(d_model, d_ff, experts, 4));
    check_layer_gradients(l, tokens, 27, training());
  }
  SUBCASE("st_moe") {
    using P = moe::presets::st_moe<double>;
    auto c = P::make_config(d_model, d_ff, experts, 5);
    c.capacity.minimum = 1;
    P::layer l(c);
    check_layer_gradients(l, tokens, 28, training());
  }
}

TEST_CASE_TEMPLATE("gradients: every expert activation, plain and gated", Expert, moe::relu_ffn, moe::gelu_ffn,
                   moe::ffn<moe::activation::gelu_exact>, moe::silu_ffn, moe::reglu_ffn, moe::geglu_ffn,
                   moe::ffn<moe::activation::gelu_exact, true>, moe::swiglu_ffn) {
  using L = moe::layer<double, moe::top_k, Expert>;
  auto c = base_config<L>();
  c.router.k = 2;
  L l(c);
  gradient_check_options o = training();
  o.check_input = false;  // the input path is covered above; this isolates the expert maths
  check_layer_gradients(l, tokens, 29, o);
}

TEST_CASE("gradients: bfloat16 router: the experts by finite differences, the router straight through") {
  // Rounding makes the loss piecewise constant in the router's weights and inputs, so finite
  // differences check only what the rounded gates multiply (the experts), and the router's own
  // backward is checked against its definition: the float32 formulas at the rounded values.
  SUBCASE("expert parameters, top-2 renormalised, jitter, load balancing and z-loss") {
    using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing, moe::router_z_loss>, moe::geglu_ffn>;
    auto c = base_config<L>();
    c.router.k = 2;
    c.router.renormalize = true;
    c.router.jitter = 0.01f;
    c.router.precision = moe::router_precision::bfloat16;
    c.losses.load_balancing.weight = 0.2;
    c.losses.router_z_loss.weight = 0.1;
    L l(c);
    auto o = training();
    o.check_input = false;
    o.parameters = [](const std::string& name) { return name.rfind("experts.", 0) == 0; };
    check_layer_gradients(l, tokens, 21, o);
  }
  SUBCASE("W_r and W_noise are read rounded, forward and backward: the bits of pre-rounded weights") {
    // A layer holding W and one holding bf16(W) must agree bit for bit in y, ∂L/∂x and every
    // gradient: both GEMM directions (x̃·W and ∂raw·Wᵀ) read the rounded copies.
    using L = moe::layer<double, moe::top_k, moe::losses<moe::load_balancing, moe::router_z_loss>>;
    auto c = base_config<L>();
    c.router.k = 2;
    c.router.jitter = 0.01f;
    c.router.learned_noise = true;
    c.router.precision = moe::router_precision::bfloat16;
    c.losses.load_balancing.weight = 0.2;
    c.losses.router_z_loss.weight = 0.1;
    L a(c), b(c);
    auto bf16 = [](double v) { return double(float(moe::bfloat16(v))); };
    auto tensor = [](L& l, const std::string& name) {
      double* p = nullptr;
      std::size_t n = 0;
      l.for_each_parameter([&](const auto& t) {
        if (name == t.name) p = t.value, n = std::size_t(t.size());
      });
      REQUIRE(p != nullptr);
      return std::pair{p, n};
    };
    const auto [wa, n] = tensor(a, "router.w");
    const auto [wb, n_b] = tensor(b, "router.w");
    const auto [na, m] = tensor(a, "router.w_noise");  // initialised to zero: given values here
    const auto [nb, m_b] = tensor(b, "router.w_noise");
    REQUIRE((n_b == n && m_b == m));
    const auto noise = moe_test::random_vector<double>(m, 41);
    int inexact = 0;
    for (std::size_t i = 0; i < n; ++i) {
      wb[i] = bf16(wa[i]);
      inexact += wb[i] != wa[i];
    }
    for (std::size_t i = 0; i < m; ++i) {
      na[i] = 0.3 * noise[i];
      nb[i] = bf16(na[i]);
      inexact += nb[i] != na[i];
    }
    REQUIRE(inexact == int(n + m));  // every weight is moved by the rounding
    const std::size_t size = std::size_t(tokens) * std::size_t(d_model);
    const auto x = moe_test::random_vector<double>(size, 42), dy = moe_test::random_vector<double>(size, 43);
    struct result {
      std::vector<double> y, dx;
      std::vector<std::vector<double>> grads;
    };
    auto step = [&](L& l) {
      result r{std::vector<double>(size), std::vector<double>(size), {}};
      l.forward({.training = true, .step = 3}, {x.data(), tokens, d_model}, {r.y.data(), tokens, d_model});
      l.zero_grad();
      l.backward({dy.data(), tokens, d_model}, {r.dx.data(), tokens, d_model});
      l.for_each_parameter([&](const auto& t) { r.grads.emplace_back(t.grad, t.grad + t.size()); });
      return r;
    };
    const result ra = step(a), rb = step(b);
    CHECK(ra.y == rb.y);
    CHECK(ra.dx == rb.dx);
    CHECK(ra.grads == rb.grads);
  }
  SUBCASE("the router's backward: float32 formulas at the rounded probabilities") {
    // One token, two experts, identity router (raw logits = x), top-1: y = p₀·FFN₀(x) with
    // L = y·w, so ∂L/∂p = (G, 0) with G = FFN₀(x)·w, and ∂L/∂x = p₀·J₀ᵀw + ∂L/∂h.
    // The float32 layer with the same weights gives J₀ᵀw; the bfloat16 layer must use its rounded
    // p₀ and p₁ (whose sum need not be 1) in both terms.
    using L = moe::layer<double, moe::top_k>;
    L::config c{};
    c.d_model = 2;
    c.d_ff = 16;
    c.num_experts = 2;
    c.capacity.train = 2.0;
    c.capacity.minimum = 1;
    auto make = [&](moe::router_precision precision) {
      c.router.precision = precision;
      L l(c);
      moe_test::set_identity_router(l);
      return l;
    };
    L full = make(moe::router_precision::float32), half = make(moe::router_precision::bfloat16);
    const std::vector<double> x = {1.003, -0.4}, w = {0.7, -1.3};
    struct result {
      std::vector<double> y, dx, g_router;
      double gate;
    };
    auto step = [&](L& l) {
      result r{std::vector<double>(2), std::vector<double>(2), {}, 0};
      l.forward({.training = true, .step = 0}, {x.data(), 1, 2}, {r.y.data(), 1, 2});
      l.zero_grad();
      l.backward({w.data(), 1, 2}, {r.dx.data(), 1, 2});
      REQUIRE(l.routing().expert == std::vector<int>{0});
      r.gate = l.routing().gate[0];
      l.for_each_parameter([&](const auto& p) {
        if (std::string(p.name) == "router.w") r.g_router.assign(p.grad, p.grad + p.size());
      });
      return r;
    };
    const result f = step(full), b = step(half);
    auto bf16 = [](double v) { return double(float(moe::bfloat16(v))); };
    const double h0 = bf16(1.003), h1 = bf16(-0.4);  // 1 and −0.400390625
    const double p0 = bf16(1 / (1 + std::exp(h1 - h0))), p1 = bf16(1 / (1 + std::exp(h0 - h1)));
    CHECK(b.gate == p0);
    CHECK(p0 + p1 != 1.0);  // the rounded probabilities are used as they are
    const double G = (b.y[0] * w[0] + b.y[1] * w[1]) / p0;
    CHECK(G == doctest::Approx((f.y[0] * w[0] + f.y[1] * w[1]) / f.gate).epsilon(1e-12));
    const double fp0 = f.gate, fp1 = 1 - f.gate;
    // Softmax backward, ∂L/∂h_e = p_e·(∂L/∂p_e − Σ_j p_j ∂L/∂p_j), with ∂L/∂p = (G, 0).
    const double dh_f[2] = {G * fp0 * fp1, -G * fp0 * fp1}, dh_b[2] = {G * p0 * (1 - p0), -G * p0 * p1};
    for (int j = 0; j < 2; ++j) {
      const double jw = (f.dx[std::size_t(j)] - dh_f[j]) / fp0;  // J₀ᵀw
      CHECK(b.dx[std::size_t(j)] == doctest::Approx(p0 * jw + dh_b[j]).epsilon(1e-12));
    }
    // ∂L/∂W_r = x̃ ⊗ ∂L/∂h with x̃ the bfloat16-rounded input the GEMM read (1, −0.400390625): the
    // rounding of raw and of W_r passes the gradient straight through.
    REQUIRE(b.g_router.size() == 4);
    for (int i = 0; i < 2; ++i)
      for (int e = 0; e < 2; ++e)
        CHECK(b.g_router[std::size_t(i * 2 + e)] ==
              doctest::Approx(bf16(x[std::size_t(i)]) * dh_b[e]).epsilon(1e-12));
  }
}

TEST_CASE("frozen parameter groups: their gradients are neither computed nor touched, the rest bit for bit") {
  using L = moe::layer<double, moe::top_k, moe::losses<moe::router_z_loss>, moe::swiglu_ffn>;
  auto c = base_config<L>();
  c.router.k = 2;
  c.router.learned_noise = true;
  c.expert.bias = true;
  c.expert.multiplicative_bias = true;
  c.expert.dropout = 0.2f;
  c.losses.router_z_loss.weight = 0.05;
  const std::size_t n = std::size_t(tokens) * std::size_t(d_model);
  const auto x = moe_test::random_vector<double>(n, 31), dy = moe_test::random_vector<double>(n, 32);
  const moe::step_context ctx{.training = true, .step = 4};
  auto run = [&](L& l) {
    std::vector<double> y(n), dx(n);
    l.forward(ctx, {x.data(), tokens, d_model}, {y.data(), tokens, d_model});
    l.backward({dy.data(), tokens, d_model}, {dx.data(), tokens, d_model});
    return dx;
  };
  auto grads = [](L& l) {
    std::vector<std::pair<std::string, std::vector<double>>> out;
    l.for_each_parameter([&](const auto& p) {
      out.emplace_back(p.name, std::vector<double>(p.grad, p.grad + p.size()));
    });
    return out;
  };
  L full(c);
  CHECK(full.trainable().router);
  CHECK(full.trainable().experts);
  const auto dx_full = run(full);
  const auto g_full = grads(full);
  REQUIRE(g_full.size() == 9);  // router.w, router.w_noise, experts.{w_in, w_up, w_out, b_in, b_up, b_out, scale}

  for (const moe::trainable_parameters t : {moe::trainable_parameters{.router = false, .experts = true},
                                            moe::trainable_parameters{.router = true, .experts = false},
                                            moe::trainable_parameters{.router = false, .experts = false}}) {
    CAPTURE(t.router);
    CAPTURE(t.experts);
    L l(c);
    l.set_trainable(t);
    auto frozen = [&](const std::string& name) { return name.rfind("router.", 0) == 0 ? !t.router : !t.experts; };
    // A frozen gradient keeps whatever it holds (here a marker, not zero).
    l.for_each_parameter([&](const auto& p) {
      if (frozen(p.name)) std::fill(p.grad, p.grad + p.size(), 0.625);
    });
    const auto dx = run(l);
    CHECK(dx == dx_full);  // ∂L/∂x does not depend on what is frozen
    const auto g = grads(l);
    REQUIRE(g.size() == g_full.size());
    for (std::size_t i = 0; i < g.size(); ++i) {
      CAPTURE(g[i].first);
      if (frozen(g[i].first)) CHECK(g[i].second == std::vector<double>(g[i].second.size(), 0.625));
      else CHECK(g[i].second == g_full[i].second);
    }
  }
}
