// examples/preset_tour.cpp — one training step of each preset layer at a modest size, and what its
// router did: the auxiliary losses, the tokens each expert was sent and kept, how confident and how
// large the router's outputs are, and what a forward + backward costs on this machine.
//
//   moe-preset-tour [tokens]      (default 1024)
//
// Inputs and output gradients are Gaussian, drawn from a counter-based generator (the same on every
// platform); parameters come from each preset's seeded initialisation, so the numbers printed are
// reproducible bit for bit. Only the timings vary between runs.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <moe/moe.hpp>

namespace {

constexpr int d_model = 64;
constexpr int d_ff = 256;
constexpr int num_experts = 8;
constexpr std::uint64_t seed = 2024;
constexpr int timed_steps = 5;  // after one untimed warm-up step

// splitmix64 of (stream, index): a counter-based source of 64 random bits.
std::uint64_t mix(std::uint64_t stream, std::uint64_t i) {
  std::uint64_t z = stream * 0x9e3779b97f4a7c15ull + i;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Standard normal by Box–Muller; u1 is in (0, 1], so the logarithm is finite.
float gaussian(std::uint64_t stream, std::uint64_t i) {
  const std::uint64_t bits = mix(stream, i);
  const double u1 = (double(bits >> 40) + 1.0) / 16777216.0;
  const double u2 = double(bits & 0xffffffu) / 16777216.0;
  return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

double norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * double(x);
  return std::sqrt(s);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <class A, bool Gated>
std::string ffn_name(std::type_identity<moe::ffn<A, Gated>>) {
  return Gated ? std::string("GLU(") + A::name + ")" : std::string(A::name);
}

struct result {
  const char* preset;
  std::string router;
  std::string experts;
  std::string capacity;
  moe::routing_statistics stats;
  double x_norm = 0, y_norm = 0, dx_norm = 0;
  double forward_ms = 0, backward_ms = 0;
  long long parameters = 0;
};

template <class Preset>
result tour(const char* name, int tokens) {
  using layer_type = typename Preset::layer;
  const typename Preset::config cfg = Preset::make_config(d_model, d_ff, num_experts, seed);
  layer_type layer(cfg);

  const std::size_t n = std::size_t(tokens) * d_model;
  std::vector<float> x(n), y(n), dy(n), dx(n);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = gaussian(1, i);
    dy[i] = gaussian(2, i) / float(tokens);  // as from a mean-over-tokens loss
  }

  result r;
  r.preset = name;
  char buf[96];
  std::snprintf(buf, sizeof buf, "top-%d%s%s", cfg.router.k, cfg.router.renormalize ? ", renormalised" : "",
                cfg.router.jitter > 0 ? ", jitter" : "");
  r.router = buf;
  r.experts = ffn_name(std::type_identity<typename layer_type::expert_type>{});
  std::snprintf(buf, sizeof buf, "%.2f: %d slots", cfg.capacity.train, layer.capacity(tokens, true));
  r.capacity = buf;
  r.parameters = static_cast<long long>(layer.parameter_count());

  std::vector<double> forward_ms, backward_ms;
  using clock = std::chrono::steady_clock;
  for (int step = 0; step <= timed_steps; ++step) {
    const auto t0 = clock::now();
    layer.forward({.training = true, .step = std::uint32_t(step)}, {x.data(), tokens, d_model},
                  {y.data(), tokens, d_model});
    const auto t1 = clock::now();
    layer.backward({dy.data(), tokens, d_model}, {dx.data(), tokens, d_model});
    const auto t2 = clock::now();
    if (step == 0) {
      // Statistics of step 0: what the freshly initialised router does with these tokens.
      r.stats = layer.statistics();
      r.y_norm = norm(y);
      r.dx_norm = norm(dx);
      continue;  // warm-up: workspace first touch, thread pool start
    }
    forward_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    backward_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
  }
  r.x_norm = norm(x);
  r.forward_ms = median(forward_ms);
  r.backward_ms = median(backward_ms);
  return r;
}

// One row of the table: a label, then one cell per preset.
template <class F>
void row(const char* label, const std::vector<result>& rs, F&& cell) {
  std::printf("  %-30s", label);
  for (const result& r : rs) std::printf(" %22s", cell(r).c_str());
  std::printf("\n");
}

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  const int tokens = argc > 1 ? std::atoi(argv[1]) : 1024;
  if (tokens < 1) {
    std::fprintf(stderr, "usage: %s [tokens >= 1]\n", argv[0]);
    return 2;
  }
  const moe::host space;
  const moe::host_blas_report blas = moe::host_blas_info();
  std::printf("moe preset tour: d_model=%d d_ff=%d experts=%d tokens=%d (one routing group), training step, "
              "seed %llu\n",
              d_model, d_ff, num_experts, tokens, static_cast<unsigned long long>(seed));
  std::printf("host space: %d threads, GEMM: %s; x and dy Gaussian (dy scaled by 1/tokens)\n\n", space.threads(),
              blas.library.c_str());
  if (!blas.advice.empty()) std::printf("warning: %s\n\n", blas.advice.c_str());

  std::vector<result> rs;
  try {
    rs.push_back(tour<moe::presets::switch_transformer<float>>("switch_transformer", tokens));
    rs.push_back(tour<moe::presets::glam<float>>("glam", tokens));
    rs.push_back(tour<moe::presets::st_moe<float>>("st_moe", tokens));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-preset-tour: %s\n", e.what());
    return 1;
  }

  std::printf("  %-30s", "");
  for (const result& r : rs) std::printf(" %22s", r.preset);
  std::printf("\n");
  row("router", rs, [](const result& r) { return r.router; });
  row("expert FFN", rs, [](const result& r) { return r.experts; });
  row("capacity factor (train)", rs, [](const result& r) { return r.capacity; });
  row("parameters", rs, [](const result& r) { return fmt("%.0f", double(r.parameters)); });

  std::printf("\n  auxiliary losses\n");
  row("total (weighted)", rs, [](const result& r) { return fmt("%.4e", r.stats.aux_loss); });
  std::vector<std::string> loss_names;  // every loss any preset has, in order of appearance
  for (const result& r : rs)
    for (const auto& [loss_name, value] : r.stats.losses)
      if (std::find(loss_names.begin(), loss_names.end(), loss_name) == loss_names.end())
        loss_names.push_back(loss_name);
  for (const std::string& loss_name : loss_names) {
    const std::string label = "  " + loss_name + " (unweighted)";
    row(label.c_str(), rs, [&](const result& r) {
      for (const auto& [n, v] : r.stats.losses)
        if (n == loss_name) return fmt("%.4f", v);
      return std::string("-");
    });
  }

  std::printf("\n  routing\n");
  row("dropped fraction", rs, [](const result& r) { return fmt("%.4f", r.stats.dropped_fraction); });
  row("tokens with no expert", rs, [](const result& r) { return fmt("%.0f", double(r.stats.tokens_without_expert)); });
  row("router entropy (nats)", rs, [](const result& r) { return fmt("%.4f", r.stats.router_entropy); });
  row("  (uniform: ln E)", rs, [](const result&) { return fmt("%.4f", std::log(double(num_experts))); });
  row("mean top-1 probability", rs, [](const result& r) { return fmt("%.4f", r.stats.mean_top1_probability); });
  row("router logit max |z|", rs, [](const result& r) { return fmt("%.4f", r.stats.router_logit_max); });
  row("router logit rms", rs, [](const result& r) { return fmt("%.4f", r.stats.router_logit_rms); });

  std::printf("\n  tokens per expert (routed / kept)\n");
  for (int e = 0; e < num_experts; ++e) {
    const std::string label = "  expert " + std::to_string(e);
    row(label.c_str(), rs, [e](const result& r) {
      char buf[48];
      std::snprintf(buf, sizeof buf, "%lld / %lld", static_cast<long long>(r.stats.routed_per_expert[e]),
                    static_cast<long long>(r.stats.kept_per_expert[e]));
      return std::string(buf);
    });
  }

  std::printf("\n  sanity (norms over all tokens; |x| = %.2f)\n", rs.front().x_norm);
  row("output |y|", rs, [](const result& r) { return fmt("%.4f", r.y_norm); });
  row("input gradient |dx|", rs, [](const result& r) { return fmt("%.4e", r.dx_norm); });

  std::printf("\n  time (median of %d steps)\n", timed_steps);
  row("forward ms", rs, [](const result& r) { return fmt("%.2f", r.forward_ms); });
  row("backward ms", rs, [](const result& r) { return fmt("%.2f", r.backward_ms); });
  row("tokens/s (forward+backward)", rs,
      [tokens](const result& r) { return fmt("%.0f", tokens / ((r.forward_ms + r.backward_ms) * 1e-3)); });

  // A layer whose output or input gradient is not finite, or identically zero, is broken.
  bool ok = true;
  for (const result& r : rs)
    if (!(std::isfinite(r.y_norm) && r.y_norm > 0 && std::isfinite(r.dx_norm) && r.dx_norm > 0 &&
          std::isfinite(r.stats.aux_loss))) {
      std::fprintf(stderr, "moe-preset-tour: %s produced a non-finite or zero output or gradient\n", r.preset);
      ok = false;
    }
  return ok ? 0 : 1;
}
