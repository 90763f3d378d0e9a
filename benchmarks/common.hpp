// benchmarks/common.hpp — what every host benchmark shares: deterministic non-zero data, inputs
// whose routing follows a chosen distribution, the dense FFN baseline, paired reference timings
// and the counters.
//
// Counters (Google Benchmark rates over real time, so they read per second of wall clock):
//   tokens_per_s  tokens processed per second
//   GBps          bytes a copy-based implementation must move, per second (memory-bound kernels)
//   TFLOPps       useful GEMM FLOPs per second (padding rows are not useful)
//   vs_dense      time of the dense FFN of equal active FLOPs / time of this benchmark (1.0 = parity)
//   vs_copy       time of a parallel copy of the same bytes / time of this benchmark
// Reference timings (dense FFN, copy) are taken inside each benchmark run, just before its timed
// loop, so that the ratio compares two measurements made moments apart on this noisy machine.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <moe/moe.hpp>

namespace moe_bench {

using moe::index_t;

// The sizes the benchmarks are registered with. The defaults are the measured configuration (the
// issue's target shape: d_model 512, d_ff 2048); `--smoke` (main.cpp) swaps in tiny sizes so that
// CI can run every family in a few seconds, as a test that they run, not as a measurement.
struct bench_sizes {
  bool smoke = false;
  int d_model = 512;
  int d_ff = 2048;
  std::vector<int> router_tokens{4096, 65536}, router_experts{8, 64, 256};
  std::vector<int> dispatch_tokens{4096, 65536}, dispatch_experts{8, 64};
  int one_hot_max_tokens = 4096;  // one_hot's [T, E·C] tensors grow as T²
  std::vector<int> expert_tokens{4096, 65536}, expert_experts{8, 64, 256};
  int layer_tokens = 4096;  // 512 tokens per expert at E = 8, top-1
  std::vector<int> layer_experts{8, 64};
  int dense_tokens = 4096;

  static bench_sizes tiny() {
    bench_sizes s;
    s.smoke = true;
    s.d_model = 64;
    s.d_ff = 128;
    s.router_tokens = s.dispatch_tokens = s.expert_tokens = {512};
    s.router_experts = s.dispatch_experts = s.expert_experts = {8};
    s.one_hot_max_tokens = 512;
    s.layer_tokens = s.dense_tokens = 512;
    s.layer_experts = {8};
    return s;
  }
};
// Set once by main() before the benchmarks are registered.
bench_sizes& sizes();

// The host space every benchmark uses: the shared pool ($MOE_NUM_THREADS or one per hardware thread).
inline const moe::host& space() {
  static const moe::host sp;
  return sp;
}

// ---- data -----------------------------------------------------------------------------------------
// Uniform values in ±[lo, hi] with random sign: never zero.
std::vector<float> random_values(std::size_t n, std::uint64_t seed, float lo = 0.1f, float hi = 1.0f);

// How the tokens' expert choices are distributed.
enum class skew {
  uniform,  // every expert receives exactly T/E first choices (and T/E second choices)
  zipf,     // P(expert e) ∝ 1/(e+1) for each choice (second choice ≠ first): a heavy head
};
inline const char* to_string(skew s) { return s == skew::uniform ? "uniform" : "zipf"; }

// One dispatcher step on its own (the dispatch/ families of both binaries; assign is host-only).
enum class dispatch_stage { assign, permute, combine, permute_bwd, combine_bwd };
inline const char* to_string(dispatch_stage s) {
  switch (s) {
    case dispatch_stage::assign: return "assign";
    case dispatch_stage::permute: return "permute";
    case dispatch_stage::combine: return "combine";
    case dispatch_stage::permute_bwd: return "permute_bwd";
    case dispatch_stage::combine_bwd: return "combine_bwd";
  }
  return "?";
}

// Inputs x [T, d] and router weights W_r [d, E] such that token t's most probable expert is
// first[t] and (k = 2) its second is second[t]: W_r ≈ [I_E; 0] plus tiny noise, and
// x[t, first] = 4, x[t, second] = 3, the other x[t, j < E] in ±[0.1, 0.5], the rest in ±[0.1, 1].
// Logit margins (≥ 1) are far beyond the router noise (≈ 0.01) and the Switch jitter (1 %), so the
// routing is exactly the one imposed. Requires d ≥ E.
struct routed_inputs {
  int tokens = 0, d = 0, experts = 0, k = 0;
  std::vector<int> first, second;  // [T] (second empty for k = 1)
  std::vector<float> w_router;     // [d, E]
  std::vector<float> x;            // [T, d]
};
routed_inputs make_routed_inputs(int tokens, int d, int experts, int k, skew s, std::uint64_t seed);
// Another x with the same routing (rotating inputs) and different filler values.
std::vector<float> rerandomized_x(const routed_inputs& in, std::uint64_t seed);

// Rows each expert would receive (first and second choices), before any capacity limit.
std::vector<int> expert_loads(const routed_inputs& in);

// The routing shape of one group of `tokens` tokens as a single layer has it (total_tokens = tokens,
// total_groups = 1: the auxiliary losses' normalisers), `pairs_per_token` (token, expert) pairs per
// token, `capacity` slots per expert. The router and dispatch families' plans.
moe::routing_shape one_group_shape(int tokens, int experts, int pairs_per_token, int capacity, index_t d_model);
// Slots per expert of that group at training capacity factor cf.
int capacity_for(double cf, int tokens, int experts);
// No dispatcher: the plans of the router families (a dispatcher's carve and state, empty).
struct no_dispatch {
  struct state {};
  template <class T, class R>
  static void carve(moe::workspace_carver&, const moe::routing_shape&, state&) {}
};

// ---- timing ---------------------------------------------------------------------------------------
// Median wall-clock seconds of `reps` calls of f, after `warmup` untimed calls.
template <class F>
double median_seconds(F&& f, int reps = 3, int warmup = 1) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// dst = src for `bytes` bytes, split over the host space's threads (the reference for vs_copy).
void parallel_copy(void* dst, const void* src, std::size_t bytes);
// Median seconds of parallel_copy of `bytes` bytes between two fresh buffers.
double copy_seconds(std::size_t bytes);

// ---- counters -------------------------------------------------------------------------------------
// A counter that reads `per_iteration` × iterations / elapsed seconds.
inline benchmark::Counter rate(double per_iteration) {
  return benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}
// reference_seconds / (seconds per iteration): the ratio counters vs_dense and vs_copy.
inline benchmark::Counter ratio_to(double reference_seconds) { return rate(reference_seconds); }

// load_max: largest expert load / mean load (routed rows, before capacity); dropped: the layer's
// dropped fraction (pairs for token choice, tokens without expert for expert choice).
void set_load_counters(benchmark::State& st, const std::vector<std::int64_t>& routed_per_expert, double dropped);

// A std::vector over moe::host memory: large buffers get the layers' placement (2 MiB-aligned, huge
// pages where Linux gives them), so the dense baseline's weights and activations are placed as the
// layer's are.
template <class T>
struct host_allocator {
  using value_type = T;
  host_allocator() = default;
  template <class U>
  host_allocator(const host_allocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(space().allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) { space().deallocate(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const host_allocator<U>&) const {
    return true;
  }
};
using host_vector = std::vector<float, host_allocator<float>>;

// ---- the dense baseline ---------------------------------------------------------------------------
// y = act(x·W_in) [⊙ (x·W_up)] · W_out and its backward, written directly with moe::host::gemm (one
// GEMM per projection, over all T tokens) and one parallel element-wise pass, in float32. This is
// the dense FFN a top-k MoE layer with k experts of width d_ff matches in active FLOPs when its
// width is k·d_ff.
struct dense_shape {
  int tokens = 0, d = 0, f = 0;
  bool gated = false;
  bool gelu = false;  // activation: GELU (tanh form, as moe::activation::gelu) or ReLU
};
class dense_ffn {
 public:
  explicit dense_ffn(const dense_shape& s);
  void forward(const float* x, float* y);
  // Needs the preceding forward's activations. Writes dx and accumulates the weight gradients.
  void backward(const float* x, const float* dy, float* dx);
  // GEMM FLOPs of one forward (backward: twice as many).
  double forward_flops() const;

 private:
  dense_shape s_;
  host_vector w_in_, w_up_, w_out_, g_in_, g_up_, g_out_;
  host_vector pre_, lin_, hidden_, dh_, dlin_;
};

// Median seconds of a dense forward (or forward + backward) of this shape, measured now.
double dense_seconds(const dense_shape& s, bool backward, int reps = 3);

// ---- registration (one function per source file; main.cpp calls them in this order) -----------------
void register_host_space_benchmarks();
void register_dense_benchmarks();
void register_routing_benchmarks();
void register_dispatch_benchmarks();
void register_expert_benchmarks();
void register_layer_top1_benchmarks();
void register_layer_top2_benchmarks();
void register_expert_parallel_benchmarks();

// Common settings: real time (the work runs on a thread pool and in OpenBLAS threads), milliseconds.
inline benchmark::internal::Benchmark* configure(benchmark::internal::Benchmark* b) {
  return b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace moe_bench
