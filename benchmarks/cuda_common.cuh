// benchmarks/cuda_common.cuh — what the translation units of moe_bench_cuda share: the CUDA sizes,
// error checks, streams, device buffers and event timing.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <moe/cuda.cuh>

namespace moe_bench {

// The host binary's sizes() lives in common.cpp; the CUDA sizes are their own.
struct cuda_sizes {
  bool smoke = false;
  int d_model = 2048, d_ff = 8192, experts = 8, tokens = 32768;
};
inline cuda_sizes& cuda_size() {
  static cuda_sizes s;
  return s;
}

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

struct stream_holder {
  cudaStream_t s = nullptr;
  stream_holder() { check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~stream_holder() { cudaStreamDestroy(s); }
  stream_holder(const stream_holder&) = delete;
  stream_holder& operator=(const stream_holder&) = delete;
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
  device_buffer& operator=(const device_buffer&) = delete;
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
  event_timer(const event_timer&) = delete;
  event_timer& operator=(const event_timer&) = delete;
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

// Median seconds of 5 timed calls of f on `stream`, after 2 untimed ones (the reference timings
// taken inside a benchmark: dense FFN, copy, one-GPU layer). Under --smoke one call after one: CI runs
// the smoke on the kernel emulator, where it checks the code, not the time.
template <class F>
double median_event_seconds(cudaStream_t stream, F&& f) {
  const bool smoke = cuda_size().smoke;
  const int reps = smoke ? 1 : 5, warmup = smoke ? 1 : 2;
  event_timer timer;
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(timer.seconds(stream, f));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Copies router weights (float, [d, E] as in make_routed_inputs) into a layer on the device.
template <class Layer>
void set_router_weights(Layer& layer, const std::vector<float>& w_router) {
  auto w = layer.router_weights();
  check(cudaMemcpy(w.data, w_router.data(), w_router.size() * sizeof(float), cudaMemcpyHostToDevice),
        "router weights");
}

template <class T>
const char* dtype_name() {
  return std::is_same_v<T, moe::bfloat16> ? "bf16" : std::is_same_v<T, moe::float16> ? "fp16" : "f32";
}

// The ep/ family (cuda_expert_parallel.cu): expert parallelism over NCCL on the visible GPUs.
void register_cuda_expert_parallel_benchmarks(int devices);

}  // namespace moe_bench
