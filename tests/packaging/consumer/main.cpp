// A downstream program: one training step of the ST-MoE preset layer. Exits non-zero unless the
// output, the input gradient and the auxiliary loss are finite and non-trivial.
#if defined(__CUDACC__)
#error "the consumer must be compiled by a plain C++ compiler"
#endif

#include <moe/moe.hpp>

// <moe/moe.hpp> promises to need no CUDA toolkit: it must not have pulled in a CUDA header.
#if defined(CUDART_VERSION) || defined(__CUDA_RUNTIME_H__) || defined(__CUDA_RUNTIME_API_H__)
#error "<moe/moe.hpp> included a CUDA runtime header"
#endif

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

namespace {

// Deterministic inputs in ±[0.1, 1.1): never zero.
float input_value(std::uint32_t i) {
  const std::uint32_t h = (i * 2654435761u) ^ (i >> 7);
  const float mag = 0.1f + float(h % 1000u) / 1000.0f;
  return (h & 1u) ? mag : -mag;
}

double norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * double(x);
  return std::sqrt(s);
}

}  // namespace

int main() {
  using preset = moe::presets::st_moe<float>;
  constexpr int d_model = 16, d_ff = 32, experts = 4, tokens = 64;
  preset::layer layer(preset::make_config(d_model, d_ff, experts, /*seed=*/1));

  std::vector<float> x(tokens * d_model), y(x.size()), dy(x.size()), dx(x.size());
  for (std::uint32_t i = 0; i < x.size(); ++i) {
    x[i] = input_value(i);
    dy[i] = input_value(i + 100000u);
  }
  layer.forward({.training = true, .step = 0}, {x.data(), tokens, d_model}, {y.data(), tokens, d_model});
  layer.backward({dy.data(), tokens, d_model}, {dx.data(), tokens, d_model});
  const moe::routing_statistics s = layer.statistics();

  std::int64_t routed = 0;
  for (std::int64_t r : s.routed_per_expert) routed += r;
  const double ny = norm(y), ndx = norm(dx);
  std::printf("|y|=%g |dx|=%g aux_loss=%g load_balancing=%g router_z_loss=%g dropped=%g routed=%lld\n", ny, ndx,
              s.aux_loss, s.loss("load_balancing"), s.loss("router_z_loss"), s.dropped_fraction,
              static_cast<long long>(routed));

  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    if (!ok) {
      std::printf("FAIL: %s\n", what);
      ++failures;
    }
  };
  check(std::isfinite(ny) && ny > 0, "output y is not finite or all zero");
  check(std::isfinite(ndx) && ndx > 0, "input gradient dx is not finite or all zero");
  check(std::isfinite(s.aux_loss) && s.aux_loss > 0, "aux loss is not finite and positive");
  check(s.loss("load_balancing") > 0 && s.loss("router_z_loss") > 0, "a preset loss is missing");
  check(routed == 2 * tokens, "top-2 routing did not propose two experts per token");
  return failures == 0 ? 0 : 1;
}
