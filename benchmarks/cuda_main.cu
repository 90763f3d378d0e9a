// benchmarks/cuda_main.cu — moe_bench_cuda: Google Benchmark binary of the CUDA execution space.
//
//   moe_bench_cuda [--smoke] [--benchmark_filter=REGEX] ...
//
// Times come from CUDA events around each iteration (UseManualTime), after warm-up, with two input
// buffers used in turn (rotating inputs: the second read of an input does not come from L2), random
// non-zero data. Families:
//   copy/d2d/MB:<n>                   cudaMemcpyAsync device to device: the bandwidth ceiling
//   dense/<relu|geglu>/<dtype>/f:<w>/<fwd|fwd_bwd>/T:<T>
//                                     the dense FFN baseline (cuBLAS GEMMs + one element-wise pass)
//   layer/<preset>/<dtype>/<fwd|fwd_bwd>/E:<E>/T:<T>/skew:<s>[/grouped_gemm:cublas]
//                                     the full layer on moe::cuda, with vs_dense = time of the dense FFN
//                                     of equal active FLOPs (measured in the same benchmark, just
//                                     before) / layer time; grouped_gemm:cublas: the space's expert
//                                     GEMMs through cuBLAS per expert (cuda_grouped_gemm::cublas_per_group)
//   router/<top1|top2|expert_choice>/<dtype>/E:<E>/T:<T>
//                                     the routing stages on their own (E ∈ {8, 64, 256}, T ∈ {4k,
//                                     64k}): GBps and vs_copy for the one read of x
//   dispatch/<permute|combine|permute_bwd|combine_bwd>/<sorted|padded|dropless>/cf:<CF>/E:<E>/T:<T>/skew:<s>
//                                     one dispatcher stage on a device routing plan (top-2, routed
//                                     once in setup), CF 1.0 / 1.25 / 2.0 (dropless: sorted, no
//                                     capacity), GBps and vs_copy (bm_device_dispatch says what is
//                                     counted)
//   expert_gemm/<grouped|loop|padded>/<dtype>/E:<E>/T:<T>/skew:<s>
//                                     the first expert projection over top-2 rows: grouped GEMM,
//                                     one cuBLAS GEMM per expert (offsets read on the host every
//                                     call), or one strided-batched GEMM over
//                                     E·C padded rows; TFLOPps and useful_TFLOPps
//   ep/<preset>/<dtype>/R:<R>/T:<T>/skew:<s>
//                                     expert parallelism over NCCL on R of the visible GPUs
//                                     (cuda_expert_parallel.cu; built where NCCL is found)
// Default sizes are the issue's CUDA target: d_model 2048, d_ff 8192, E = 8, ≥ 4096 tokens per
// expert (T = 32768), bf16 storage. --smoke: tiny sizes, for CI to build and (on a GPU) run it.
// Without a device the binary prints why and exits 77.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <moe/cuda.cuh>

#include "common.hpp"
#include "cuda_common.cuh"

namespace moe_bench {

namespace {

// ---- copy: the ceiling of memory-bound kernels ---------------------------------------------------
void bm_copy(benchmark::State& st, std::size_t bytes) {
  stream_holder stream;
  device_buffer<unsigned char> src(bytes), dst(bytes);
  check(cudaMemsetAsync(src.p, 0x5a, bytes, stream.s), "cudaMemset");
  event_timer timer;
  for (int i = 0; i < 3; ++i) check(cudaMemcpyAsync(dst.p, src.p, bytes, cudaMemcpyDeviceToDevice, stream.s), "copy");
  for (auto _ : st)
    st.SetIterationTime(timer.seconds(stream.s, [&] {
      check(cudaMemcpyAsync(dst.p, src.p, bytes, cudaMemcpyDeviceToDevice, stream.s), "cudaMemcpyAsync");
    }));
  st.counters["GBps"] = benchmark::Counter(2.0 * double(bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- the dense FFN baseline on the device ----------------------------------------------------------
// y = act(x·W_in) [⊙ x·W_up] · W_out and its backward (weight gradients accumulated), T-storage GEMMs
// through moe::cuda::gemm (cuBLAS, float32 accumulation), one element-wise pass each way.
template <class T, class Act>
struct device_dense_ffn {
  const moe::cuda& sp;
  index_t t, d, f;
  bool gated;
  device_buffer<T> w_in, w_up, w_out, g_in, g_up, g_out, pre, lin, hidden, dh, dpre, dlin;

  device_dense_ffn(const moe::cuda& space, index_t tokens, index_t dm, index_t width, bool glu)
      : sp(space), t(tokens), d(dm), f(width), gated(glu), w_in(std::size_t(d * f)), w_up(glu ? std::size_t(d * f) : 0),
        w_out(std::size_t(f * d)), g_in(std::size_t(d * f)), g_up(glu ? std::size_t(d * f) : 0),
        g_out(std::size_t(f * d)), pre(std::size_t(t * f)), lin(glu ? std::size_t(t * f) : 0),
        hidden(std::size_t(t * f)), dh(std::size_t(t * f)), dpre(std::size_t(t * f)),
        dlin(glu ? std::size_t(t * f) : 0) {
    const float scale = 1.0f / float(std::sqrt(double(d)));
    w_in.upload(random_values(w_in.n, 1, 0.1f * scale, scale));
    if (gated) w_up.upload(random_values(w_up.n, 2, 0.1f * scale, scale));
    w_out.upload(random_values(w_out.n, 3, 0.1f * scale, scale));
  }

  void forward(const T* x, T* y) {
    using moe::op;
    sp.gemm(op::none, op::none, t, f, d, 1.0f, x, d, w_in.p, f, 0.0f, pre.p, f);
    if (gated) sp.gemm(op::none, op::none, t, f, d, 1.0f, x, d, w_up.p, f, 0.0f, lin.p, f);
    T *h = hidden.p, *p = pre.p, *l = lin.p;
    const bool glu = gated;
    sp.parallel_for(t * f, [=] MOE_LAMBDA(index_t i) {
      const float a = Act::template f<float>(float(p[i]));
      h[i] = T(glu ? a * float(l[i]) : a);
    });
    sp.gemm(op::none, op::none, t, d, f, 1.0f, h, f, w_out.p, d, 0.0f, y, d);
  }

  void backward(const T* x, const T* dy, T* dx) {
    using moe::op;
    sp.gemm(op::none, op::transpose, t, f, d, 1.0f, dy, d, w_out.p, d, 0.0f, dh.p, f);        // dH = dY·W_outᵀ
    sp.gemm(op::transpose, op::none, f, d, t, 1.0f, hidden.p, f, dy, d, 1.0f, g_out.p, d);     // dW_out += Hᵀ·dY
    T *p = pre.p, *l = lin.p, *g = dh.p, *dp = dpre.p, *dl = dlin.p;
    const bool glu = gated;
    sp.parallel_for(t * f, [=] MOE_LAMBDA(index_t i) {
      const float z = float(p[i]), gi = float(g[i]);
      if (glu) {
        dp[i] = T(gi * float(l[i]) * Act::template df<float>(z));
        dl[i] = T(gi * Act::template f<float>(z));
      } else {
        dp[i] = T(gi * Act::template df<float>(z));
      }
    });
    sp.gemm(op::transpose, op::none, d, f, t, 1.0f, x, d, dpre.p, f, 1.0f, g_in.p, f);         // dW_in += Xᵀ·dPre
    sp.gemm(op::none, op::transpose, t, d, f, 1.0f, dpre.p, f, w_in.p, f, 0.0f, dx, d);        // dX = dPre·W_inᵀ
    if (gated) {
      sp.gemm(op::transpose, op::none, d, f, t, 1.0f, x, d, dlin.p, f, 1.0f, g_up.p, f);
      sp.gemm(op::none, op::transpose, t, d, f, 1.0f, dlin.p, f, w_up.p, f, 1.0f, dx, d);
    }
  }
  double forward_flops() const { return 2.0 * double(t) * double(d) * double(f) * (gated ? 3 : 2); }
};

template <class T, class Act>
double dense_device_seconds(const moe::cuda& sp, cudaStream_t s, index_t tokens, index_t d, index_t f, bool gated,
                            bool backward, const T* x, const T* dy, T* y, T* dx) {
  device_dense_ffn<T, Act> ffn(sp, tokens, d, f, gated);
  return median_event_seconds(s, [&] {
    ffn.forward(x, y);
    if (backward) ffn.backward(x, dy, dx);
  });
}

template <class T, class Act>
void bm_dense(benchmark::State& st, index_t f, bool gated, bool backward) {
  const cuda_sizes& z = cuda_size();
  stream_holder stream;
  const moe::cuda sp(stream.s);
  const index_t T_ = z.tokens, d = z.d_model;
  const std::size_t n = std::size_t(T_ * d);
  device_buffer<T> x(random_values(n, 7)), dy(random_values(n, 8, 0.01f, 0.1f)), y(n), dx(n);
  device_dense_ffn<T, Act> ffn(sp, T_, d, f, gated);
  event_timer timer;
  auto pass = [&] {
    ffn.forward(x.p, y.p);
    if (backward) ffn.backward(x.p, dy.p, dx.p);
  };
  pass();
  for (auto _ : st) st.SetIterationTime(timer.seconds(stream.s, pass));
  st.counters["tokens_per_s"] = rate(double(T_));
  st.counters["TFLOPps"] = rate(ffn.forward_flops() * (backward ? 3 : 1) * 1e-12);
}

// ---- full layers ---------------------------------------------------------------------------------
template <class Preset, class Act>
void bm_layer(benchmark::State& st, int k, bool gated, bool backward, skew s,
              moe::cuda_grouped_gemm grouped = moe::cuda_grouped_gemm::device_offsets) {
  using Layer = typename Preset::layer;
  using T = typename Layer::element_type;
  const cuda_sizes& z = cuda_size();
  stream_holder stream;
  const moe::cuda sp(stream.s, {.grouped_gemm = grouped});
  const int T_ = z.tokens, d = z.d_model, E = z.experts;
  const auto cfg = Preset::make_config(d, z.d_ff, E, 1);
  Layer layer(cfg, sp);
  // Routing imposed by the router weights and the inputs (common.hpp: make_routed_inputs).
  const routed_inputs in = make_routed_inputs(T_, d, E, k, s, 1234);
  set_router_weights(layer, in.w_router);
  const std::size_t n = std::size_t(T_) * std::size_t(d);
  device_buffer<T> x0(in.x), x1(rerandomized_x(in, 99)), dy(random_values(n, 5, 0.01f, 0.1f)), y(n), dx(n);
  device_buffer<unsigned char> ws(layer.workspace_bytes(T_));
  const moe::workspace_span span{ws.p, ws.n};
  const T* xs[2] = {x0.p, x1.p};
  std::uint32_t step = 0;
  auto pass = [&] {
    const T* x = xs[step & 1u];
    layer.forward({.training = true, .step = step}, {x, T_, d}, {y.p, T_, d}, span);
    if (backward) layer.backward({dy.p, T_, d}, {dx.p, T_, d}, span);
    ++step;
  };
  pass();
  pass();
  const moe::routing_statistics stats = layer.statistics();
  const double t_dense = dense_device_seconds<T, Act>(sp, stream.s, T_, d, index_t(k) * z.d_ff, gated, backward,
                                                      x0.p, dy.p, y.p, dx.p);
  event_timer timer;
  for (auto _ : st) st.SetIterationTime(timer.seconds(stream.s, pass));
  const double kept = double(stats.routed_pairs - stats.dropped_pairs);
  st.counters["tokens_per_s"] = rate(T_);
  st.counters["TFLOPps"] = rate(kept * 2.0 * d * z.d_ff * (gated ? 3 : 2) * (backward ? 3 : 1) * 1e-12);
  st.counters["vs_dense"] = rate(t_dense);
  st.counters["dense_ms"] = t_dense * 1e3;
  st.counters["dropped"] = stats.dropped_fraction;
}

// ---- shared setup of the dispatch and expert-GEMM families -----------------------------------------
// Random non-zero values in ±[lo, hi] written on the device (a hash of the index: no host transfer
// of the large row buffers).
template <class T>
void device_random(const moe::cuda& sp, T* p, std::size_t n, std::uint64_t seed, float lo = 0.1f, float hi = 1.0f) {
  const std::uint64_t key = seed * 0x9E3779B97F4A7C15ull;
  sp.parallel_for(index_t(n), [=] MOE_LAMBDA(index_t i) {
    std::uint64_t z = key + std::uint64_t(i) * 0xBF58476D1CE4E5B9ull + 0x94D049BB133111EBull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float m = lo + (hi - lo) * float(z >> 40) * (1.0f / 16777216.0f);
    p[i] = T((z & 1u) ? m : -m);
  });
}

// Top-2 routed inputs (common.hpp) and a second x with the same routing (rotating inputs). The
// benchmarks are registered with the skew outermost, so one cached entry serves a run of them.
struct routed_pair {
  routed_inputs in;
  std::vector<float> x1;
};
const routed_pair& cached_routed_inputs(int tokens, int d, int experts, skew s) {
  static std::unique_ptr<routed_pair> cache;
  static int key[4] = {-1, -1, -1, -1};
  const int want[4] = {tokens, d, experts, int(s)};
  if (!cache || !std::equal(key, key + 4, want)) {
    cache.reset();  // free the previous entry first (a few hundred MB at full size)
    auto r = std::make_unique<routed_pair>();
    r->in = make_routed_inputs(tokens, d, experts, 2, s, 4321);
    r->x1 = rerandomized_x(r->in, 4322);
    cache = std::move(r);
    std::copy(want, want + 4, key);
  }
  return *cache;
}

// Seconds of one cudaMemcpyAsync device to device of `bytes` bytes (median_event_seconds),
// measured once per size in this process: the reference of vs_copy.
double device_copy_seconds(std::size_t bytes) {
  static std::map<std::size_t, double> measured;
  if (auto it = measured.find(bytes); it != measured.end()) return it->second;
  stream_holder stream;
  device_buffer<unsigned char> src(bytes), dst(bytes);
  check(cudaMemsetAsync(src.p, 0x5a, bytes, stream.s), "cudaMemset");
  return measured[bytes] = median_event_seconds(stream.s, [&] {
    check(cudaMemcpyAsync(dst.p, src.p, bytes, cudaMemcpyDeviceToDevice, stream.s), "cudaMemcpyAsync");
  });
}

// The memory-bound families' timing: two warm-up calls of pass, the copy reference (a
// cudaMemcpyAsync of bytes/2: it reads and writes them, so it moves `bytes`), then the timed loop.
// Sets tokens_per_s, GBps (bytes per call), vs_copy = copy time / call time, and copy_GBps.
template <class F>
void time_memory_bound(benchmark::State& st, const moe::cuda& sp, cudaStream_t stream, F&& pass, double bytes,
                       int tokens) {
  pass();
  pass();
  sp.synchronize();
  const double t_copy = device_copy_seconds(std::size_t(bytes / 2));
  event_timer timer;
  for (auto _ : st) st.SetIterationTime(timer.seconds(stream, pass));
  sp.synchronize();
  st.counters["tokens_per_s"] = rate(tokens);
  st.counters["GBps"] = rate(bytes * 1e-9);
  st.counters["vs_copy"] = ratio_to(t_copy);
  st.counters["copy_GBps"] = t_copy > 0 ? bytes / t_copy * 1e-9 : 0.0;
}

// ---- dispatch: the dispatcher stages on their own --------------------------------------------------
struct device_dispatch_case {
  dispatch_stage what = dispatch_stage::permute;
  double cf = 1.25;  // 0: dropless
  int experts = 8, tokens = 32768;
  skew routing = skew::uniform;
};

// A routing plan (with room for num_losses auxiliary-loss sums) and a dispatcher's state carved from
// one device buffer, as moe::layer carves them.
template <class T, class Dispatch>
struct device_plan {
  moe::routing_plan<float> plan;
  typename Dispatch::state dispatch;
  moe::buffer<moe::cuda> ws;

  device_plan(const moe::cuda& sp, const moe::routing_shape& s, int num_losses = 0) {
    moe::workspace_carver measure;
    carve(measure, s, num_losses);
    ws = moe::buffer<moe::cuda>(sp, measure.bytes());
    moe::workspace_carver w(ws.data(), ws.bytes());
    carve(w, s, num_losses);
  }
  void carve(moe::workspace_carver& w, const moe::routing_shape& s, int num_losses) {
    moe::routing_plan<float>::carve<moe::cuda>(w, s, {.num_losses = num_losses}, plan);
    Dispatch::template carve<T, float>(w, s, dispatch);
  }
};

// Top-2 routing (renormalised gates, router in float) on the device, once, outside the timing:
// router_forward, assign_slots (position order) and the dispatcher's assign, as a layer's forward
// runs them. Then one dispatcher stage per iteration, bf16 rows:
//   permute      x → expert rows                      combine      expert rows → y (gate-weighted)
//   permute_bwd  ∂rows → ∂x (float accumulator)       combine_bwd  ∂y → ∂rows and ∂gates
// GBps counts the row bytes the stage's kernels read and write (kept = kept (token, expert) pairs,
// written = rows the layout writes: kept for sorted, E·C for padded, whose empty slots are written
// as zeros), with sT = sizeof(T) = 2 and sR = sizeof(float):
//   permute      kept rows of x read + written rows            (kept + written)·d·sT
//   combine      kept rows read + T rows of y written          (kept + T)·d·sT
//   permute_bwd  kept rows read + T float rows written         kept·d·sT + T·d·sR
//   combine_bwd  ∂gates: dy row + out row per kept pair; ∂rows: dy row per kept row, written rows
//                                                              (3·kept + written)·d·sT
// Index and gate reads (a few bytes per pair) are not counted. A repeated read of one token's row
// (its two pairs) is counted twice: at this size it does not stay in L2. (The host family counts
// the minimum a copy-based implementation moves instead; the two differ for combine_bwd.)
// vs_copy = copy time / stage time, the copy being one cudaMemcpyAsync of bytes/2 (it reads and
// writes bytes/2: the same bytes moved), i.e. achieved GBps / the copy's GBps.
template <class T, class Dispatch, bool Padded>
void bm_device_dispatch(benchmark::State& st, device_dispatch_case c) {
  using R = float;
  using router = moe::top_k;
  const cuda_sizes& z = cuda_size();
  stream_holder stream;
  const moe::cuda sp(stream.s);
  const int T_ = c.tokens, E = c.experts;
  const index_t d = z.d_model;
  const routed_pair& inputs = cached_routed_inputs(T_, int(d), E, c.routing);
  router::config rcfg;
  rcfg.k = 2;
  rcfg.renormalize = true;
  // Dropless: every expert may take all S tokens (moe::dropless::capacity).
  const int C = c.cf > 0 ? capacity_for(c.cf, T_, E) : T_;
  device_plan<T, Dispatch> p(sp, one_group_shape(T_, E, 2, C, d));

  const std::size_t token_values = std::size_t(T_) * std::size_t(d);
  const bool permute = c.what == dispatch_stage::permute;
  device_buffer<T> x0(inputs.in.x), x1(permute ? inputs.x1.size() : 0);  // x1: the permute's second input
  if (permute) x1.upload(inputs.x1);
  device_buffer<R> w_router(inputs.in.w_router);
  const moe::router_streams rng = moe::router_streams::make(1, 0, 0);
  moe::detail::router_forward<router>(sp, rcfg, p.plan, x0.p, w_router.p, static_cast<const R*>(nullptr), true, rng);
  moe::detail::assign_slots<router>(sp, p.plan, moe::drop_order::position);
  Dispatch::template assign<T>(sp, p.plan, p.dispatch);
  sp.synchronize();

  std::vector<int> seg(static_cast<std::size_t>(E));
  sp.copy_to_host(seg.data(), p.plan.segment_count, seg.size() * sizeof(int));
  double kept = 0, routed = 0;
  std::vector<std::int64_t> per_expert(static_cast<std::size_t>(E));
  for (int e = 0; e < E; ++e) {
    kept += std::min(seg[std::size_t(e)], C);
    routed += seg[std::size_t(e)];
    per_expert[std::size_t(e)] = seg[std::size_t(e)];
  }
  const double written = Padded ? double(E) * C : kept;
  const std::size_t row_values = std::size_t(p.dispatch.rows.rows.rows_bound) * std::size_t(d);

  // Only the buffers of the timed stage; inputs in pairs (rotating).
  const bool need_rows_in = c.what != dispatch_stage::permute;
  const bool need_rows_out = c.what == dispatch_stage::permute || c.what == dispatch_stage::combine_bwd;
  const bool need_dy = c.what == dispatch_stage::combine_bwd;
  device_buffer<T> rows0(need_rows_in ? row_values : 0), rows1(need_rows_in ? row_values : 0);
  device_buffer<T> rows_out(need_rows_out ? row_values : 0);
  device_buffer<T> y(c.what == dispatch_stage::combine ? token_values : 0);
  device_buffer<T> dy0(need_dy ? token_values : 0), dy1(need_dy ? token_values : 0);
  if (need_rows_in) {
    device_random(sp, rows0.p, row_values, 11);
    device_random(sp, rows1.p, row_values, 12);
  }
  if (need_dy) {
    device_random(sp, dy0.p, token_values, 13, 0.01f, 0.1f);
    device_random(sp, dy1.p, token_values, 14, 0.01f, 0.1f);
  }
  sp.synchronize();

  const double sT = sizeof(T), sR = sizeof(R), row = double(d);
  double bytes = 0;
  switch (c.what) {
    case dispatch_stage::permute: bytes = (kept + written) * row * sT; break;
    case dispatch_stage::combine: bytes = (kept + T_) * row * sT; break;
    case dispatch_stage::permute_bwd: bytes = kept * row * sT + double(T_) * row * sR; break;
    case dispatch_stage::combine_bwd: bytes = (3 * kept + written) * row * sT; break;
    case dispatch_stage::assign: break;  // not registered here (the host family times it)
  }
  const T* xs[2] = {x0.p, x1.p};
  const T* rs[2] = {rows0.p, rows1.p};
  const T* dys[2] = {dy0.p, dy1.p};
  unsigned step = 0;
  auto pass = [&] {
    const unsigned i = step++ & 1u;
    switch (c.what) {
      case dispatch_stage::permute: Dispatch::dispatch(sp, p.plan, p.dispatch, xs[i], rows_out.p); break;
      case dispatch_stage::combine: Dispatch::combine(sp, p.plan, p.dispatch, rs[i], y.p); break;
      case dispatch_stage::permute_bwd:
        Dispatch::dispatch_backward(sp, p.plan, p.dispatch, rs[i], p.plan.dx_acc);
        break;
      case dispatch_stage::combine_bwd:
        Dispatch::combine_backward(sp, p.plan, p.dispatch, rs[i], dys[i], p.plan.dgate, rows_out.p);
        break;
      case dispatch_stage::assign: break;
    }
  };
  time_memory_bound(st, sp, stream.s, pass, bytes, T_);
  set_load_counters(st, per_expert, routed > 0 ? (routed - kept) / routed : 0.0);
}

std::string device_dispatch_name(const char* dispatcher, const device_dispatch_case& c) {
  const std::string cf = c.cf > 0 ? std::to_string(c.cf).substr(0, 4) : "none";
  return std::string("dispatch/") + to_string(c.what) + "/" + dispatcher + "/cf:" + cf + "/E:" +
         std::to_string(c.experts) + "/T:" + std::to_string(c.tokens) + "/skew:" + to_string(c.routing);
}

// ---- router: the routing stages on their own --------------------------------------------------------
// router_forward (the logits GEMM over bf16 x with float router weights, softmax, selection),
// routing_summary (the auxiliary losses' sums) and assign_slots (capacity, position order), as a
// layer's forward runs them; no jitter; two x buffers in turn. GBps counts one read of x
// (T·d·sizeof(T)), the least traffic any router has; vs_copy = time of a copy moving those bytes
// (a cudaMemcpyAsync of half of them: it reads and writes) / router time. Top-1 and top-2 with
// ST-MoE's loss set (load balancing + z-loss), capacity factor 1.25; expert choice (Zhou et al.
// 2022) with the z-loss, capacity factor 2.
template <class T, class Router, class LossSet>
void bm_device_router(benchmark::State& st, typename Router::config rcfg, double cf, int E, int T_) {
  const cuda_sizes& z = cuda_size();
  stream_holder stream;
  const moe::cuda sp(stream.s);
  const index_t d = z.d_model;
  const routed_pair& inputs = cached_routed_inputs(T_, int(d), E, skew::uniform);
  device_plan<T, no_dispatch> p(
      sp, one_group_shape(T_, E, Router::pairs_per_token(rcfg, E), capacity_for(cf, T_, E), d), LossSet::count);
  device_buffer<T> x0(inputs.in.x), x1(inputs.x1);
  device_buffer<float> w_router(inputs.in.w_router);
  const typename LossSet::config lcfg{};
  const moe::router_streams rng = moe::router_streams::make(1, 0, 0);
  const T* xs[2] = {x0.p, x1.p};
  unsigned step = 0;
  auto pass = [&] {
    moe::detail::router_forward<Router>(sp, rcfg, p.plan, xs[step++ & 1u], w_router.p,
                                        static_cast<const float*>(nullptr), true, rng);
    moe::detail::routing_summary<Router, LossSet>(sp, lcfg, p.plan);
    moe::detail::assign_slots<Router>(sp, p.plan, moe::drop_order::position);
  };
  time_memory_bound(st, sp, stream.s, pass, double(T_) * double(d) * sizeof(T), T_);
}

// ---- expert_gemm: the first expert projection on its own -------------------------------------------
// rows[e] · W_in[e] ([rows_e, d_model] · [d_model, d_ff], bf16 storage, float accumulation) for every
// expert, top-2 routing (the loads of the dispatch family's inputs: T·K rows, K = 2):
//   grouped  moe::cuda::grouped_gemm over the T·K packed rows, offsets in device memory (sorted
//            dropless dispatch)
//   loop     moe::cuda::grouped_gemm under cuda_grouped_gemm::cublas_per_group: the offsets copied
//            to the host (a stream synchronisation, as in a layer, every call), then one cuBLAS GEMM
//            per expert over the same rows
//   padded   one moe::cuda::batched_gemm (cuBLAS strided-batched) over E·C rows, C per expert
//            whatever its load, C = ⌊1.25·T·K/E⌋ (capacity factor 1.25 of the pairs); an expert
//            keeps min(load, C) real rows, the rest are zero rows
// TFLOPps counts the rows computed (padded: E·C); useful_TFLOPps the real rows (grouped, loop: all
// T·K; padded: Σ min(load, C)); rows = computed rows / real rows.
enum class grouping { grouped, loop, padded };
const char* to_string(grouping g) {
  return g == grouping::grouped ? "grouped" : g == grouping::loop ? "loop" : "padded";
}

template <class T>
void bm_device_expert_gemm(benchmark::State& st, grouping how, int E, int T_, skew s) {
  using moe::op;
  const cuda_sizes& z = cuda_size();
  stream_holder stream;
  const moe::cuda sp(stream.s, {.grouped_gemm = how == grouping::loop ? moe::cuda_grouped_gemm::cublas_per_group
                                                                      : moe::cuda_grouped_gemm::device_offsets});
  const index_t d = z.d_model, f = z.d_ff;
  constexpr int K = 2;
  const std::vector<int> load = expert_loads(cached_routed_inputs(T_, int(d), E, s).in);
  const int C = int(std::floor(1.25 * double(T_) * K / double(E)));
  std::vector<int> offsets(static_cast<std::size_t>(E) + 1, 0);
  std::vector<std::int64_t> routed(static_cast<std::size_t>(E));
  double useful = 0;
  for (int e = 0; e < E; ++e) {
    const int l = load[std::size_t(e)];
    const int real = how == grouping::padded ? std::min(l, C) : l;
    offsets[std::size_t(e) + 1] = offsets[std::size_t(e)] + (how == grouping::padded ? C : l);
    useful += real;
    routed[std::size_t(e)] = l;
  }
  const index_t rows = offsets.back();
  const std::size_t a_values = std::size_t(rows) * std::size_t(d);
  device_buffer<T> a0(a_values), a1(a_values), w(std::size_t(E) * std::size_t(d) * std::size_t(f)),
      out(std::size_t(rows) * std::size_t(f));
  device_buffer<int> dev_offsets(offsets.size());
  check(cudaMemcpyAsync(dev_offsets.p, offsets.data(), offsets.size() * sizeof(int), cudaMemcpyHostToDevice, stream.s),
        "cudaMemcpyAsync (offsets)");
  device_random(sp, a0.p, a_values, 21);
  device_random(sp, a1.p, a_values, 22);
  device_random(sp, w.p, w.n, 23, 0.01f, 0.05f);
  if (how == grouping::padded) {  // empty slots are zero rows, as padded dispatch writes them
    for (int e = 0; e < E; ++e) {
      const index_t real = std::min(load[std::size_t(e)], C), first = index_t(e) * C + real;
      const std::size_t n = std::size_t(C - real) * std::size_t(d) * sizeof(T);
      check(cudaMemsetAsync(a0.p + first * d, 0, n, stream.s), "cudaMemsetAsync (padding)");
      check(cudaMemsetAsync(a1.p + first * d, 0, n, stream.s), "cudaMemsetAsync (padding)");
    }
  }
  sp.synchronize();

  const T* as[2] = {a0.p, a1.p};
  unsigned step = 0;
  auto pass = [&] {
    const T* a = as[step++ & 1u];
    switch (how) {
      case grouping::grouped:
      case grouping::loop:  // the space's option picks the path
        sp.grouped_gemm(op::none, E, dev_offsets.p, f, d, 1.0f, a, d, w.p, d * f, f, 0.0f, out.p, f);
        break;
      case grouping::padded:
        sp.batched_gemm(op::none, op::none, E, index_t(C), f, d, 1.0f, a, d, index_t(C) * d, w.p, f, d * f, 0.0f,
                        out.p, f, index_t(C) * f);
        break;
    }
  };
  pass();
  pass();
  sp.synchronize();
  event_timer timer;
  for (auto _ : st) st.SetIterationTime(timer.seconds(stream.s, pass));
  sp.synchronize();

  const double flops_per_row = 2.0 * double(d) * double(f);
  st.counters["tokens_per_s"] = rate(T_);
  st.counters["TFLOPps"] = rate(double(rows) * flops_per_row * 1e-12);
  st.counters["useful_TFLOPps"] = rate(useful * flops_per_row * 1e-12);
  st.counters["rows"] = useful > 0 ? double(rows) / useful : 0.0;
  set_load_counters(st, routed, (double(T_) * K - useful) / (double(T_) * K));
}

template <class T>
void register_all() {
  const cuda_sizes& z = cuda_size();
  const std::string dt = dtype_name<T>(), tok = "/T:" + std::to_string(z.tokens);
  auto reg = [](const std::string& name, auto f) {
    benchmark::RegisterBenchmark(name.c_str(), f)->UseManualTime()->Unit(benchmark::kMillisecond);
  };
  for (std::size_t mb : {64, 256}) {
    const std::size_t bytes = (z.smoke ? 1 : mb) << 20;
    reg("copy/d2d/MB:" + std::to_string(bytes >> 20), [=](benchmark::State& st) { bm_copy(st, bytes); });
  }
  for (bool bwd : {false, true}) {
    const std::string pass = bwd ? "/fwd_bwd" : "/fwd";
    reg("dense/relu/" + dt + "/f:" + std::to_string(z.d_ff) + pass + tok,
        [=](benchmark::State& st) { bm_dense<T, moe::activation::relu>(st, z.d_ff, false, bwd); });
    reg("dense/geglu/" + dt + "/f:" + std::to_string(2 * z.d_ff) + pass + tok,
        [=](benchmark::State& st) { bm_dense<T, moe::activation::gelu>(st, 2 * z.d_ff, true, bwd); });
    for (skew sk : {skew::uniform, skew::zipf}) {
      // --smoke (CI, on the emulator): zipf only, whose uneven expert loads cover the uniform code.
      if (z.smoke && sk == skew::uniform) continue;
      const std::string tail = pass + "/E:" + std::to_string(z.experts) + tok + "/skew:" + to_string(sk);
      reg("layer/switch_transformer/" + dt + tail, [=](benchmark::State& st) {
        bm_layer<moe::presets::switch_transformer<T, moe::cuda>, moe::activation::relu>(st, 1, false, bwd, sk);
      });
      reg("layer/glam/" + dt + tail, [=](benchmark::State& st) {
        bm_layer<moe::presets::glam<T, moe::cuda>, moe::activation::gelu>(st, 2, true, bwd, sk);
      });
      reg("layer/st_moe/" + dt + tail, [=](benchmark::State& st) {
        bm_layer<moe::presets::st_moe<T, moe::cuda>, moe::activation::gelu>(st, 2, true, bwd, sk);
      });
      // The expert GEMMs through cuBLAS per expert, the offsets read on the host every call
      // (cuda_grouped_gemm::cublas_per_group); --smoke: GLaM's forward + backward only.
      if (z.smoke && !bwd) continue;
      constexpr auto blas = moe::cuda_grouped_gemm::cublas_per_group;
      if (!z.smoke) {
        reg("layer/switch_transformer/" + dt + tail + "/grouped_gemm:cublas", [=](benchmark::State& st) {
          bm_layer<moe::presets::switch_transformer<T, moe::cuda>, moe::activation::relu>(st, 1, false, bwd, sk, blas);
        });
        reg("layer/st_moe/" + dt + tail + "/grouped_gemm:cublas", [=](benchmark::State& st) {
          bm_layer<moe::presets::st_moe<T, moe::cuda>, moe::activation::gelu>(st, 2, true, bwd, sk, blas);
        });
      }
      reg("layer/glam/" + dt + tail + "/grouped_gemm:cublas", [=](benchmark::State& st) {
        bm_layer<moe::presets::glam<T, moe::cuda>, moe::activation::gelu>(st, 2, true, bwd, sk, blas);
      });
    }
  }
  // Routers: E ∈ {8, 64, 256}, T ∈ {4k, 64k} (--smoke: the smoke E and T).
  const std::vector<int> router_tokens = z.smoke ? std::vector<int>{z.tokens} : std::vector<int>{4096, 65536};
  const std::vector<int> router_experts = z.smoke ? std::vector<int>{z.experts} : std::vector<int>{8, 64, 256};
  using lb_z = moe::losses<moe::load_balancing, moe::router_z_loss>;
  using z_only = moe::losses<moe::router_z_loss>;
  for (int T_ : router_tokens)
    for (int E : router_experts) {
      const std::string tail = "/" + dt + "/E:" + std::to_string(E) + "/T:" + std::to_string(T_);
      moe::top_k::config top1, top2;
      top1.k = 1;
      top2.k = 2;
      top2.renormalize = true;
      reg("router/top1" + tail,
          [=](benchmark::State& st) { bm_device_router<T, moe::top_k, lb_z>(st, top1, 1.25, E, T_); });
      reg("router/top2" + tail,
          [=](benchmark::State& st) { bm_device_router<T, moe::top_k, lb_z>(st, top2, 1.25, E, T_); });
      reg("router/expert_choice" + tail, [=](benchmark::State& st) {
        bm_device_router<T, moe::expert_choice, z_only>(st, moe::expert_choice::config{}, 2.0, E, T_);
      });
    }

  // Skew outermost: cached_routed_inputs keeps one entry.
  for (skew sk : {skew::uniform, skew::zipf})
    for (dispatch_stage s : {dispatch_stage::permute, dispatch_stage::combine, dispatch_stage::permute_bwd,
                             dispatch_stage::combine_bwd}) {
      device_dispatch_case c{s, 0.0, z.experts, z.tokens, sk};
      for (double cf : {1.0, 1.25, 2.0}) {
        c.cf = cf;
        reg(device_dispatch_name("sorted", c), [=](benchmark::State& st) {
          bm_device_dispatch<T, moe::sorted_dispatch, false>(st, c);
        });
        reg(device_dispatch_name("padded", c), [=](benchmark::State& st) {
          bm_device_dispatch<T, moe::padded_dispatch, true>(st, c);
        });
      }
      c.cf = 0.0;
      reg(device_dispatch_name("dropless", c), [=](benchmark::State& st) {
        bm_device_dispatch<T, moe::sorted_dispatch, false>(st, c);
      });
    }
  for (skew sk : {skew::uniform, skew::zipf})
    for (grouping g : {grouping::grouped, grouping::loop, grouping::padded}) {
      const std::string name = std::string("expert_gemm/") + to_string(g) + "/" + dt + "/E:" +
                               std::to_string(z.experts) + tok + "/skew:" + to_string(sk);
      reg(name, [=](benchmark::State& st) { bm_device_expert_gemm<T>(st, g, z.experts, z.tokens, sk); });
    }
}

}  // namespace

}  // namespace moe_bench

int main(int argc, char** argv) {
  using namespace moe_bench;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--smoke") == 0) {
      cuda_size() = {true, 64, 128, 8, 512};
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "moe_bench_cuda: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "none");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  const cuda_sizes& z = cuda_size();
  benchmark::AddCustomContext("gpu", prop.name);
  benchmark::AddCustomContext("cuda_driver", std::to_string(driver));
  benchmark::AddCustomContext("cuda_runtime", std::to_string(runtime));
  benchmark::AddCustomContext("sizes", std::string(z.smoke ? "smoke (timings meaningless)" : "full") + ": d_model " +
                                           std::to_string(z.d_model) + ", d_ff " + std::to_string(z.d_ff) +
                                           ", E " + std::to_string(z.experts) + ", T " + std::to_string(z.tokens));
  register_all<moe::bfloat16>();
#if MOE_BENCH_NCCL
  register_cuda_expert_parallel_benchmarks(devices);
#endif
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
