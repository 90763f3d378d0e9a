// Shared helpers of the GPU tests: a stream, device buffers, host/device comparisons of whole
// layers (forward, backward, routing, statistics) against the host space.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <moe/cuda.cuh>

#include "test_util.hpp"

namespace moe_cuda_test {

inline void ok(cudaError_t e) { REQUIRE_MESSAGE(e == cudaSuccess, cudaGetErrorString(e)); }

// A non-blocking stream (capturable into a graph), destroyed last.
struct stream_holder {
  cudaStream_t s = nullptr;
  stream_holder() { ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~stream_holder() { cudaStreamDestroy(s); }
  stream_holder(const stream_holder&) = delete;
  stream_holder& operator=(const stream_holder&) = delete;
};

// Device memory holding n elements of T.
template <class T>
struct device_vector {
  T* p = nullptr;
  std::size_t n = 0;
  explicit device_vector(std::size_t count) : n(count) {
    if (n) ok(cudaMalloc(&p, n * sizeof(T)));
  }
  explicit device_vector(const std::vector<T>& h) : device_vector(h.size()) { upload(h); }
  ~device_vector() { cudaFree(p); }
  device_vector(const device_vector&) = delete;
  device_vector& operator=(const device_vector&) = delete;
  void upload(const std::vector<T>& h) {
    REQUIRE(h.size() == n);
    if (n) ok(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    ok(cudaDeviceSynchronize());
    std::vector<T> h(n);
    if (n) ok(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

template <class T>
std::vector<T> download(const T* p, std::size_t n) {
  ok(cudaDeviceSynchronize());
  std::vector<T> h(n);
  if (n) ok(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

template <class T>
std::vector<double> widened(const std::vector<T>& v) {
  std::vector<double> w(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) w[i] = double(moe::widen(v[i]));
  return w;
}

// |got − ref| <= rtol · max(|ref|, rms(ref)) element by element: relative, with the tensor's rms as
// the floor for elements that cancel to near zero. Reports the worst element.
inline void check_close(const std::vector<double>& got, const std::vector<double>& ref, double rtol,
                        const std::string& what) {
  REQUIRE(got.size() == ref.size());
  double ss = 0;
  for (double r : ref) ss += r * r;
  const double rms = ref.empty() ? 0.0 : std::sqrt(ss / double(ref.size()));
  std::size_t worst = 0, bad = 0;
  double worst_ratio = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double scale = std::max(std::abs(ref[i]), rms);
    const double err = std::abs(got[i] - ref[i]);
    const double ratio = scale > 0 ? err / scale : (err > 0 ? INFINITY : 0.0);
    if (!(ratio <= rtol)) ++bad;
    if (!(ratio <= worst_ratio)) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  INFO(what, ": ", bad, " of ", ref.size(), " elements off; worst [", worst, "] got ",
       got.empty() ? 0.0 : got[worst], " expected ", ref.empty() ? 0.0 : ref[worst], " (relative ", worst_ratio,
       ", rtol ", rtol, ")");
  CHECK(bad == 0);
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Every parameter and gradient of a layer, copied to the host, by name (as doubles).
struct parameter_snapshot {
  std::map<std::string, std::vector<double>> value, grad;
};
template <class Layer>
parameter_snapshot snapshot(Layer& l, bool device) {
  parameter_snapshot s;
  l.for_each_parameter([&](const auto& p) {
    using P = std::remove_cv_t<std::remove_pointer_t<decltype(p.value)>>;
    using G = std::remove_cv_t<std::remove_pointer_t<decltype(p.grad)>>;
    const std::size_t n = std::size_t(p.size());
    std::vector<P> v(n);
    std::vector<G> g(n);
    if (device) {
      v = download(p.value, n);
      g = download(p.grad, n);
    } else {
      std::copy(p.value, p.value + n, v.begin());
      std::copy(p.grad, p.grad + n, g.begin());
    }
    s.value[p.name] = widened(v);
    s.grad[p.name] = widened(g);
  });
  return s;
}

// Copies every parameter of the host layer `h` into the device layer `g` (same configuration), so
// that a comparison of steps does not depend on initialisation (which is compared separately).
template <class HostLayer, class CudaLayer>
void copy_parameters(HostLayer& h, CudaLayer& g) {
  std::map<std::string, std::pair<const void*, std::size_t>> src;
  h.for_each_parameter([&](const auto& p) { src[p.name] = {p.value, std::size_t(p.size()) * sizeof(*p.value)}; });
  g.for_each_parameter([&](const auto& p) {
    const auto& [ptr, bytes] = src.at(p.name);
    REQUIRE(bytes == std::size_t(p.size()) * sizeof(*p.value));
    ok(cudaMemcpy(p.value, ptr, bytes, cudaMemcpyHostToDevice));
  });
}

// The result of one training step of a device layer, on the host.
template <class T>
struct step_result {
  std::vector<T> y, dx;
  parameter_snapshot params;
  moe::routing_decisions routing;
  moe::routing_statistics stats;
};

// What a device layer (moe::layer or moe::expert_parallel) holds after forward and backward wrote
// y and dx: outputs, parameters and gradients, routing and statistics, on the host.
template <class CudaLayer, class T>
step_result<T> collect_step(CudaLayer& g, const device_vector<T>& y, const device_vector<T>& dx) {
  step_result<T> r;
  r.y = y.download();
  r.dx = dx.download();
  r.params = snapshot(g, true);
  r.routing = g.routing();
  r.stats = g.statistics();
  return r;
}

// zero_grad, forward and backward of a device layer with its own workspace (x, dy on the host).
template <class CudaLayer, class T>
step_result<T> device_step(CudaLayer& g, const std::vector<T>& x, const std::vector<T>& dy, int tokens,
                           moe::step_context ctx = {}) {
  const int d = g.get_config().d_model;
  device_vector<T> xd(x), dyd(dy), yd(x.size()), dxd(x.size());
  device_vector<unsigned char> ws(g.workspace_bytes(tokens));
  g.zero_grad();
  g.forward(ctx, {xd.p, tokens, d}, {yd.p, tokens, d}, {ws.p, ws.n});
  g.backward({dyd.p, tokens, d}, {dxd.p, tokens, d}, {ws.p, ws.n});
  return collect_step(g, yd, dxd);
}

template <class HostLayer, class T>
step_result<T> host_step(HostLayer& h, const std::vector<T>& x, const std::vector<T>& dy, int tokens,
                         moe::step_context ctx = {}) {
  const int d = h.get_config().d_model;
  step_result<T> r;
  r.y.resize(x.size());
  r.dx.resize(x.size());
  h.zero_grad();
  h.forward(ctx, {x.data(), tokens, d}, {r.y.data(), tokens, d});
  h.backward({dy.data(), tokens, d}, {r.dx.data(), tokens, d});
  r.params = snapshot(h, false);
  r.routing = h.routing();
  r.stats = h.statistics();
  return r;
}

// Device step vs host step. exact_routing: expert ids, slots, activity and per-expert counts must be
// equal (float); otherwise routing may differ where bf16 rounding moved a near tie.
template <class T>
void check_steps(const step_result<T>& got, const step_result<T>& ref, double rtol, bool exact_routing) {
  if (exact_routing) {
    CHECK(got.routing.expert == ref.routing.expert);
    CHECK(got.routing.slot == ref.routing.slot);
    CHECK(got.routing.active == ref.routing.active);
    CHECK(got.stats.routed_per_expert == ref.stats.routed_per_expert);
    CHECK(got.stats.kept_per_expert == ref.stats.kept_per_expert);
    CHECK(got.stats.dropped_pairs == ref.stats.dropped_pairs);
    CHECK(got.stats.tokens_without_expert == ref.stats.tokens_without_expert);
    check_close(got.routing.gate, ref.routing.gate, rtol, "routing gates");
  }
  check_close({got.stats.aux_loss}, {ref.stats.aux_loss}, rtol, "aux_loss");
  check_close({got.stats.router_entropy, got.stats.mean_top1_probability, got.stats.router_z},
              {ref.stats.router_entropy, ref.stats.mean_top1_probability, ref.stats.router_z}, rtol,
              "statistics (entropy, top-1 probability, z)");
  check_close(widened(got.y), widened(ref.y), rtol, "forward y");
  check_close(widened(got.dx), widened(ref.dx), rtol, "backward dx");
  for (const auto& [name, g] : ref.params.grad) check_close(got.params.grad.at(name), g, rtol, "gradient " + name);
}

template <class T>
void check_same_bits(const step_result<T>& a, const step_result<T>& b) {
  CHECK(same_bits(a.y, b.y));
  CHECK(same_bits(a.dx, b.dx));
  for (const auto& [name, g] : a.params.grad) {
    INFO("gradient ", name);
    CHECK(same_bits(g, b.params.grad.at(name)));
  }
  CHECK(a.routing.expert == b.routing.expert);
  CHECK(a.routing.slot == b.routing.slot);
}

// Builds the host and device layers of one configuration with equal parameters, runs one step on
// fresh random inputs (never zeros) on both and compares. Returns the device step.
template <class HostLayer, class CudaLayer>
auto compare_layer(const typename HostLayer::config& cfg, const typename CudaLayer::config& cuda_cfg,
                   const moe::cuda& space, int tokens, std::uint64_t seed, double rtol, bool exact_routing,
                   moe::step_context ctx = {}, moe::trainable_parameters trainable = {}) {
  using T = typename HostLayer::element_type;
  static_assert(std::is_same_v<T, typename CudaLayer::element_type>);
  HostLayer h(cfg);
  CudaLayer g(cuda_cfg, space);
  h.set_trainable(trainable);
  g.set_trainable(trainable);
  // Initialisation is the same Philox draws in both spaces.
  {
    const parameter_snapshot hp = snapshot(h, false), gp = snapshot(g, true);
    for (const auto& [name, v] : hp.value) check_close(gp.value.at(name), v, 1e-6, "initial " + name);
  }
  copy_parameters(h, g);
  const std::size_t n = std::size_t(tokens) * std::size_t(cfg.d_model);
  const std::vector<T> x = moe_test::random_vector<T>(n, seed), dy = moe_test::random_vector<T>(n, seed + 1);
  const step_result<T> ref = host_step(h, x, dy, tokens, ctx);
  const step_result<T> got = device_step(g, x, dy, tokens, ctx);
  check_steps(got, ref, rtol, exact_routing);
  return got;
}

}  // namespace moe_cuda_test
