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
//   layer/<preset>/<dtype>/<fwd|fwd_bwd>/E:<E>/T:<T>/skew:<s>
//                                     the full layer on moe::cuda, with vs_dense = time of the dense FFN
//                                     of equal active FLOPs (measured in the same benchmark, just
//                                     before) / layer time
// Default sizes are the issue's CUDA target: d_model 2048, d_ff 8192, E = 8, ≥ 4096 tokens per
// expert (T = 32768), bf16 storage. --smoke: tiny sizes, for CI to build and (on a GPU) run it.
// Without a device the binary prints why and exits 77.
//
// Not here yet: permute/combine on their own with vs_copy, and the grouped-vs-loop-vs-padded expert
// GEMM family (the host binary has both); they need the dispatcher stages on a device plan.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <moe/cuda.cuh>

#include "common.hpp"

namespace moe_bench {

// The host binary's sizes() lives in common.cpp; the CUDA sizes are their own.
struct cuda_sizes {
  bool smoke = false;
  int d_model = 2048, d_ff = 8192, experts = 8, tokens = 32768;
};
cuda_sizes& cuda_size() {
  static cuda_sizes s;
  return s;
}

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

struct stream_holder {
  cudaStream_t s = nullptr;
  stream_holder() { check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~stream_holder() { cudaStreamDestroy(s); }
};

template <class T>
struct device_buffer {
  T* p = nullptr;
  std::size_t n = 0;
  explicit device_buffer(std::size_t count) : n(count) {
    check(cudaMalloc(&p, std::max<std::size_t>(n, 1) * sizeof(T)), "cudaMalloc");
  }
  device_buffer(const std::vector<float>& h) : device_buffer(h.size()) { upload(h); }
  ~device_buffer() { cudaFree(p); }
  device_buffer(const device_buffer&) = delete;
  void upload(const std::vector<float>& h) {
    std::vector<T> t(h.size());
    for (std::size_t i = 0; i < h.size(); ++i) t[i] = T(h[i]);
    check(cudaMemcpy(p, t.data(), t.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
};

// Times one call of f on `stream` with CUDA events; returns seconds.
struct event_timer {
  cudaEvent_t a = nullptr, b = nullptr;
  event_timer() {
    check(cudaEventCreate(&a), "cudaEventCreate");
    check(cudaEventCreate(&b), "cudaEventCreate");
  }
  ~event_timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  template <class F>
  double seconds(cudaStream_t s, F&& f) {
    check(cudaEventRecord(a, s), "cudaEventRecord");
    f();
    check(cudaEventRecord(b, s), "cudaEventRecord");
    check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    return ms * 1e-3;
  }
};

template <class T>
const char* dtype_name() {
  return std::is_same_v<T, moe::bfloat16> ? "bf16" : std::is_same_v<T, moe::float16> ? "fp16" : "f32";
}

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
  event_timer timer;
  auto pass = [&] {
    ffn.forward(x, y);
    if (backward) ffn.backward(x, dy, dx);
  };
  pass();
  pass();
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) t.push_back(timer.seconds(s, pass));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
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
void bm_layer(benchmark::State& st, int k, bool gated, bool backward, skew s) {
  using Layer = typename Preset::layer;
  using T = typename Layer::element_type;
  const cuda_sizes& z = cuda_size();
  stream_holder stream;
  const moe::cuda sp(stream.s);
  const int T_ = z.tokens, d = z.d_model, E = z.experts;
  const auto cfg = Preset::make_config(d, z.d_ff, E, 1);
  Layer layer(cfg, sp);
  // Routing imposed by the router weights and the inputs (common.hpp: make_routed_inputs).
  const routed_inputs in = make_routed_inputs(T_, d, E, k, s, 1234);
  {
    auto w = layer.router_weights();
    check(cudaMemcpy(w.data, in.w_router.data(), in.w_router.size() * sizeof(float), cudaMemcpyHostToDevice),
          "router weights");
  }
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
    }
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
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
