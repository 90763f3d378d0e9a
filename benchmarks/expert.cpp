// benchmarks/expert.cpp — expert compute and the dense FFN baseline on their own.
//
//   expert_gemm/<grouped|loop|padded>[/d:64/f:256]/E:<E>/T:<T>/skew:<s>
//       One expert projection, rows[e] · W_in[e] ([rows, d_model] · [d_model, d_ff]) for every expert, top-1
//       routing, capacity factor 1.25 (kept rows: min(load, C) per expert):
//         grouped  moe::host::grouped_gemm over the packed rows (what sorted dispatch runs)
//         loop     the caller's loop of moe::host::gemm, one per expert, on the same rows
//         padded   grouped_gemm over E·C rows, C per expert whatever its load (padded dispatch's
//                  batched GEMM; empty slots are zero rows and still cost FLOPs)
//       TFLOPps counts useful FLOPs (2·kept·d_model·d_ff); rows = computed rows / kept rows. The
//       layer benchmarks' d_model and d_ff unless named (d:64/f:256: a small model, T 1024).
//   dense/<relu|geglu>/f:<width>/<fwd|fwd_bwd>/T:<T>
//       The dense baseline of the layer benchmarks (common.hpp: dense_ffn).
//   expert_activation/<gelu|silu>/n:<n>
//       f and f' of the activation over n hidden units on one thread, as the FFN's backward runs them
//       (one loop). vs_libm = the same loop with the previous formulas, calls of std::tanh (GELU) and
//       std::exp (SiLU) per element, / this one; ns_per_unit.
#include <chrono>
#include <cmath>
#include <string>

#include "common.hpp"

namespace moe_bench {

namespace {

enum class grouping { grouped, loop, padded };
const char* to_string(grouping g) {
  return g == grouping::grouped ? "grouped" : g == grouping::loop ? "loop" : "padded";
}

void bm_expert_gemm(benchmark::State& st, grouping how, int E, int T, skew s, index_t d, index_t f) {
  using moe::op;
  moe::capacity_factor::config cap;
  cap.train = 1.25;
  const int C = moe::capacity_factor::capacity(cap, true, T, E, 1);
  const routed_inputs in = make_routed_inputs(T, int(d), E, 1, s, 555);
  const std::vector<int> load = expert_loads(in);
  std::vector<int> offsets(std::size_t(E) + 1, 0);
  double kept = 0;
  std::vector<std::int64_t> routed(static_cast<std::size_t>(E));
  for (int e = 0; e < E; ++e) {
    const int rows = how == grouping::padded ? C : std::min(load[std::size_t(e)], C);
    offsets[std::size_t(e) + 1] = offsets[std::size_t(e)] + rows;
    kept += std::min(load[std::size_t(e)], C);
    routed[std::size_t(e)] = load[std::size_t(e)];
  }
  const index_t rows = offsets.back();
  const std::vector<float> x = random_values(std::size_t(rows * d), 1);
  const std::vector<float> w = random_values(std::size_t(E) * std::size_t(d * f), 2, 0.01f, 0.05f);
  std::vector<float> out(std::size_t(rows * f));
  const moe::host& sp = space();
  auto run = [&] {
    if (how == grouping::loop) {
      for (int e = 0; e < E; ++e) {
        const index_t r0 = offsets[std::size_t(e)], n = offsets[std::size_t(e) + 1] - r0;
        if (n > 0)
          sp.gemm(op::none, op::none, n, f, d, 1.0f, x.data() + r0 * d, d, w.data() + e * d * f, f, 0.0f,
                  out.data() + r0 * f, f);
      }
    } else {
      sp.grouped_gemm(op::none, E, offsets.data(), f, d, 1.0f, x.data(), d, w.data(), d * f, f, 0.0f, out.data(), f);
    }
  };
  run();
  for (auto _ : st) run();
  st.counters["tokens_per_s"] = rate(T);
  st.counters["TFLOPps"] = rate(2.0 * kept * double(d) * double(f) * 1e-12);
  st.counters["rows"] = kept > 0 ? double(rows) / kept : 0.0;
  set_load_counters(st, routed, (double(T) - kept) / double(T));
}

void bm_dense(benchmark::State& st, dense_shape s, bool backward) {
  dense_ffn ffn(s);
  const std::size_t n = std::size_t(s.tokens) * std::size_t(s.d);
  const std::vector<float> x = random_values(n, 31), dy = random_values(n, 32, 0.01f, 0.1f);
  std::vector<float> y(n), dx(n);
  auto run = [&] {
    ffn.forward(x.data(), y.data());
    if (backward) ffn.backward(x.data(), dy.data(), dx.data());
  };
  run();
  for (auto _ : st) run();
  st.counters["tokens_per_s"] = rate(s.tokens);
  st.counters["TFLOPps"] = rate(ffn.forward_flops() * (backward ? 3 : 1) * 1e-12);
}

// The activations as they were written before moe::logistic: a libm call per element.
struct gelu_libm {
  static float f(float x) {
    return 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
  }
  static float df(float x) {
    const float t = std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * 0.7978845608028654f * (1.0f + 3 * 0.044715f * x * x);
  }
};
struct silu_libm {
  static float f(float x) { return x / (1.0f + std::exp(-x)); }
  static float df(float x) {
    const float s = 1.0f / (1.0f + std::exp(-x));
    return s * (1.0f + x * (1.0f - s));
  }
};

template <class Act>
void activation_and_derivative(const float* __restrict x, float* __restrict a, float* __restrict da, index_t n) {
  for (index_t j = 0; j < n; ++j) {
    a[j] = Act::template f<float>(x[j]);
    da[j] = Act::template df<float>(x[j]);
  }
}
template <class Act>
void activation_and_derivative_libm(const float* __restrict x, float* __restrict a, float* __restrict da, index_t n) {
  for (index_t j = 0; j < n; ++j) {
    a[j] = Act::f(x[j]);
    da[j] = Act::df(x[j]);
  }
}

template <class Act, class Libm>
void bm_activation(benchmark::State& st, index_t n) {
  const std::size_t count = std::size_t(n);
  const std::vector<float> x = random_values(count, 41, 0.01f, 4.0f);  // ± 4: the bulk of pre-activations
  std::vector<float> a(count), da(count);
  const int calls = sizes().smoke ? 2 : int(std::max<index_t>(50, (index_t(1) << 24) / n));
  using clock_type = std::chrono::steady_clock;
  activation_and_derivative_libm<Libm>(x.data(), a.data(), da.data(), n);  // warm-up
  auto start = clock_type::now();
  for (int c = 0; c < calls; ++c) {
    activation_and_derivative_libm<Libm>(x.data(), a.data(), da.data(), n);
    benchmark::ClobberMemory();
  }
  const double libm = std::chrono::duration<double>(clock_type::now() - start).count() / calls;
  start = clock_type::now();
  for (auto _ : st) {
    activation_and_derivative<Act>(x.data(), a.data(), da.data(), n);
    benchmark::ClobberMemory();
  }
  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  st.counters["ns_per_unit"] = seconds * 1e9 / (double(st.iterations()) * double(n));
  st.counters["vs_libm"] = ratio_to(libm);
}

}  // namespace

void register_expert_benchmarks() {
  const index_t units = 4096;
  const std::string suffix = "/n:" + std::to_string(units);
  benchmark::RegisterBenchmark(("expert_activation/gelu" + suffix).c_str(), [=](benchmark::State& st) {
    bm_activation<moe::activation::gelu, gelu_libm>(st, units);
  })->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark(("expert_activation/silu" + suffix).c_str(), [=](benchmark::State& st) {
    bm_activation<moe::activation::silu, silu_libm>(st, units);
  })->Unit(benchmark::kMicrosecond);
  for (int T : sizes().expert_tokens)
    for (int E : sizes().expert_experts)
      for (skew s : {skew::uniform, skew::zipf})
        for (grouping g : {grouping::grouped, grouping::loop, grouping::padded}) {
          const std::string name = std::string("expert_gemm/") + to_string(g) + "/E:" + std::to_string(E) +
                                   "/T:" + std::to_string(T) + "/skew:" + to_string(s);
          const index_t d = sizes().d_model, f = sizes().d_ff;
          configure(benchmark::RegisterBenchmark(
              name.c_str(), [=](benchmark::State& st) { bm_expert_gemm(st, g, E, T, s, d, f); }));
        }
  // A small model's experts (moe-preset-tour's shape): each product is one call, below the size at
  // which a GEMM is cut into tiles, so the host runs the experts side by side, not one by one.
  constexpr index_t small_d = 64, small_f = 256;
  constexpr int small_T = 1024;
  for (int E : {8, 64})
    for (skew s : {skew::uniform, skew::zipf})
      for (grouping g : {grouping::grouped, grouping::loop, grouping::padded}) {
        const std::string name = std::string("expert_gemm/") + to_string(g) + "/d:" + std::to_string(small_d) +
                                 "/f:" + std::to_string(small_f) + "/E:" + std::to_string(E) +
                                 "/T:" + std::to_string(small_T) + "/skew:" + to_string(s);
        configure(benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
          bm_expert_gemm(st, g, E, small_T, s, small_d, small_f);
        }));
      }
}

void register_dense_benchmarks() {
  // Widths k·d_ff: ReLU 2048 (top-1 Switch), GEGLU 4096 (top-2 GLaM / ST-MoE).
  struct variant {
    const char* name;
    int f;
    bool gated, gelu;
  };
  const int f = sizes().d_ff;
  for (const variant v : {variant{"relu", f, false, false}, variant{"geglu", 2 * f, true, true}})
    for (bool backward : {false, true}) {
      const int T = sizes().dense_tokens;
      const std::string name = std::string("dense/") + v.name + "/f:" + std::to_string(v.f) + "/" +
                               (backward ? "fwd_bwd" : "fwd") + "/T:" + std::to_string(T);
      const dense_shape s{T, sizes().d_model, v.f, v.gated, v.gelu};
      configure(benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { bm_dense(st, s, backward); }));
    }
}

}  // namespace moe_bench
