// tests/packaging/host_checksum.hpp — forward + backward of several layer compositions on the host
// space, each summarised by exact bit hashes of y, ∂L/∂x and every parameter gradient.
//
// The same code is compiled twice: by the C++ compiler (cxx_host_test.cpp) and by nvcc
// (nvcc_host_test.cu, where MOE_HOST_DEVICE / MOE_LAMBDA expand to __host__ __device__). The ctest
// driver requires the two outputs to be identical, so the single-source code must not only compile
// under nvcc but also mean the same thing there. Results are also checked for being finite and
// non-trivial, so an all-zero layer cannot pass by agreeing with itself.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <moe/moe.hpp>

namespace moe_packaging {

// FNV-1a over the object representation: any differing bit changes the hash.
struct bit_hash {
  std::uint64_t h = 14695981039346656037ull;
  template <class V>
  void add(const V* p, std::size_t n) {
    const auto* b = reinterpret_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n * sizeof(V); ++i) {
      h ^= b[i];
      h *= 1099511628211ull;
    }
  }
};

// Deterministic inputs in ±[0.05, 1): never zero, independent of the standard library's
// distributions (which differ between implementations).
inline float input_value(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed * 0x9e3779b97f4a7c15ull + i + 1;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  const float u = float(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
  const float mag = 0.05f + 0.95f * u;
  return (z & 1) ? mag : -mag;
}

// One training step of `Layer` on `tokens` tokens; prints one line, returns the number of failures.
template <class Layer>
int run_case(const char* name, const typename Layer::config& cfg, int tokens) {
  using T = typename Layer::element_type;
  Layer layer(cfg);
  const int d = cfg.d_model;
  const std::size_t n = std::size_t(tokens) * std::size_t(d);
  std::vector<T> x(n), y(n), dy(n), dx(n);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = moe::convert<T>(input_value(1, i));
    dy[i] = moe::convert<T>(input_value(2, i));
  }
  layer.forward({.training = true, .step = 3}, {x.data(), tokens, d}, {y.data(), tokens, d});
  layer.backward({dy.data(), tokens, d}, {dx.data(), tokens, d});
  const moe::routing_statistics s = layer.statistics();

  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    if (!ok) {
      std::printf("FAIL %s: %s\n", name, what);
      ++failures;
    }
  };
  auto sum_squares = [](const auto* p, std::size_t count) {
    double acc = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const double v = double(moe::widen(p[i]));
      acc += v * v;
    }
    return acc;
  };
  const double y2 = sum_squares(y.data(), n), dx2 = sum_squares(dx.data(), n);
  bit_hash hy, hdx, hgrad;
  hy.add(y.data(), n);
  hdx.add(dx.data(), n);
  double grad2 = 0;
  layer.for_each_parameter([&](const auto& p) {
    hgrad.add(p.grad, std::size_t(p.size()));
    grad2 += sum_squares(p.grad, std::size_t(p.size()));
  });
  check(std::isfinite(y2) && y2 > 0, "y is not finite or all zero");
  check(std::isfinite(dx2) && dx2 > 0, "dx is not finite or all zero");
  check(std::isfinite(grad2) && grad2 > 0, "parameter gradients are not finite or all zero");
  check(std::isfinite(s.aux_loss), "aux loss is not finite");
  check(s.routed_pairs > 0, "no (token, expert) pair was routed");

  std::printf("%-28s y=%016llx dx=%016llx grads=%016llx aux=%a dropped=%lld/%lld entropy=%a |y|=%.6g |dx|=%.6g\n",
              name, static_cast<unsigned long long>(hy.h), static_cast<unsigned long long>(hdx.h),
              static_cast<unsigned long long>(hgrad.h), s.aux_loss, static_cast<long long>(s.dropped_pairs),
              static_cast<long long>(s.routed_pairs), s.router_entropy, std::sqrt(y2), std::sqrt(dx2));
  return failures;
}

// Every dispatcher, both routers, both capacity policies, every loss, and float / double / bf16.
inline int run_all() {
  constexpr int d_model = 32, d_ff = 64, experts = 8, tokens = 256;
  int failures = 0;
  {
    using P = moe::presets::switch_transformer<float>;
    failures += run_case<P::layer>("switch_transformer<float>", P::make_config(d_model, d_ff, experts, 11), tokens);
  }
  {
    using P = moe::presets::glam<float>;
    failures += run_case<P::layer>("glam<float>", P::make_config(d_model, d_ff, experts, 12), tokens);
  }
  {
    using P = moe::presets::st_moe<float>;
    failures += run_case<P::layer>("st_moe<float>", P::make_config(d_model, d_ff, experts, 13), tokens);
  }
  {
    using P = moe::presets::st_moe<float, moe::host, moe::padded_dispatch>;
    auto cfg = P::make_config(d_model, d_ff, experts, 14);
    cfg.expert.multiplicative_bias = true;
    failures += run_case<P::layer>("st_moe<float,padded>", cfg, tokens);
  }
  {
    using P = moe::presets::switch_transformer<float, moe::host, moe::one_hot_dispatch>;
    failures += run_case<P::layer>("switch<float,one_hot>", P::make_config(d_model, d_ff, experts, 15), tokens);
  }
  {
    using L = moe::layer<float, moe::expert_choice, moe::capacity_factor, moe::losses<moe::router_z_loss>,
                         moe::swiglu_ffn>;
    L::config cfg{};
    cfg.d_model = d_model;
    cfg.d_ff = d_ff;
    cfg.num_experts = experts;
    cfg.seed = 16;
    cfg.losses.router_z_loss.weight = 1e-3;
    failures += run_case<L>("expert_choice<float>", cfg, tokens);
  }
  {
    using L = moe::layer<float, moe::top_k, moe::dropless, moe::losses<moe::load_balancing, moe::importance>,
                         moe::silu_ffn>;
    L::config cfg{};
    cfg.d_model = d_model;
    cfg.d_ff = d_ff;
    cfg.num_experts = experts;
    cfg.seed = 17;
    cfg.router.k = 2;
    cfg.expert.bias = true;
    cfg.expert.dropout = 0.1f;
    cfg.losses.load_balancing.weight = 1e-2;
    cfg.losses.importance.weight = 1e-2;
    failures += run_case<L>("top2_dropless<float>", cfg, tokens);
  }
  {
    using P = moe::presets::switch_transformer<double>;
    failures += run_case<P::layer>("switch_transformer<double>", P::make_config(d_model, d_ff, experts, 18), tokens);
  }
  {
    using P = moe::presets::glam<moe::bfloat16>;
    failures += run_case<P::layer>("glam<bf16>", P::make_config(d_model, d_ff, experts, 19), tokens);
  }
  return failures;
}

}  // namespace moe_packaging
