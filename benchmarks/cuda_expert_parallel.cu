// benchmarks/cuda_expert_parallel.cu — moe_bench_cuda's ep/ family: expert parallelism over NCCL,
// one GPU per rank. What a step exchanges, how long the exchange takes next to the rest of the
// layer, and how far R GPUs are from doing R times the work of one.
//
// ep/<preset>/<dtype>/R:<R>/T:<tokens per rank>/skew:<s>: R ranks on GPUs 0 … R−1 (R ∈ {1, 2, 4, 8}
// up to the visible GPUs), one host thread each (as moe-train --device cuda --ranks drives them),
// the E experts split over them, one forward + backward per iteration on every rank. Weak scaling:
// every rank brings T tokens routed as in layer/ (uniform: each expert gets T/E first choices per
// rank; zipf: a hot head, so the ranks owning it receive more rows and the others wait for them).
// The iteration time is rank 0's step between CUDA events; the ranks start each step together.
// Counters:
//   exchange_MB     bytes rank 0 sent to other ranks per step (rows and token ids, forward and
//                   backward): the input of the scaling model in docs/expert_parallelism.md
//   exchange_ms     device time of rank 0's collectives per step (CUDA events around each NCCL call
//                   on its stream: the transfers and the wait for the slowest peer)
//   exchange_frac   exchange_ms / step time
//   exchange_GBps   exchange_MB / exchange_ms: the bandwidth the exchange achieved (0 at R = 1, where
//                   nothing leaves the GPU)
//   single_ms       moe::layer holding every expert on GPU 0, forward + backward at T tokens
//                   (measured in the same benchmark, just before)
//   scaling         single_ms / step time: weak-scaling efficiency (1.0 = R GPUs do R times one
//                   GPU's work in one GPU's time). At R = 1 it is the cost of the expert-parallel
//                   machinery itself: the count exchange, one host synchronisation per forward and
//                   one per backward, NCCL's copies of a rank's rows to itself
//   tokens_per_s    tokens of all ranks per second
// Built where NCCL is found (MOE_BENCH_NCCL). The machines this project was developed on have at
// most one GPU, so only R = 1 has run on real hardware; R > 1 runs on the kernel emulator's GPUs at
// smoke sizes (bench.cuda_emu_smoke), which exercises the code, not the speed.
#include <benchmark/benchmark.h>

#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

#include <moe/cuda.cuh>
#include <moe/parallel/nccl.cuh>

#include "common.hpp"
#include "cuda_common.cuh"
#include "timed_communicator.hpp"

namespace moe_bench {

namespace {

// The clock of timed_communicator on the device: a CUDA event on the communicator's stream before
// and after each collective; take_seconds() sums the time inside each pair. Events are created on
// first use, on the device current in the thread that records them.
class event_log {
 public:
  event_log() = default;
  event_log(const event_log&) = delete;
  event_log& operator=(const event_log&) = delete;
  ~event_log() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  void before(const moe::nccl_communicator& c) { mark(c.stream()); }
  void after(const moe::nccl_communicator& c) { mark(c.stream()); }
  // Seconds inside the pairs recorded since the last call (waits for the last event).
  double take_seconds() {
    double total = 0;
    if (used_ > 0) check(cudaEventSynchronize(events_[used_ - 1]), "cudaEventSynchronize");
    for (std::size_t i = 0; i + 1 < used_; i += 2) {
      float ms = 0;
      check(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]), "cudaEventElapsedTime");
      total += double(ms) * 1e-3;
    }
    used_ = 0;
    return total;
  }

 private:
  void mark(cudaStream_t s) {
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      check(cudaEventCreate(&e), "cudaEventCreate");
      events_.push_back(e);
    }
    check(cudaEventRecord(events_[used_++], s), "cudaEventRecord");
  }
  std::vector<cudaEvent_t> events_;
  std::size_t used_ = 0;
};

using timed_nccl = timed_communicator<moe::nccl_communicator, event_log>;
static_assert(moe::communicator<timed_nccl>);

// Runs f; a failure ends the process, naming the rank: the other ranks may be waiting for this one
// inside an NCCL collective, which nothing here can interrupt.
template <class F>
void or_exit(int rank, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_bench_cuda ep/: rank %d failed: %s\n", rank, e.what());
    std::fflush(stderr);
    std::_Exit(1);
  }
}

// Median seconds of forward + backward of moe::layer holding every expert, on the current device.
template <class Preset>
double single_layer_seconds(const typename Preset::layer::config& cfg, const routed_inputs& in) {
  using Layer = typename Preset::layer;
  using T = typename Layer::element_type;
  stream_holder stream;
  Layer layer(cfg, moe::cuda(stream.s));
  set_router_weights(layer, in.w_router);
  const int tokens = in.tokens, d = in.d;
  const std::size_t n = std::size_t(tokens) * std::size_t(d);
  device_buffer<T> x(in.x), dy(random_values(n, 5, 0.01f, 0.1f)), y(n), dx(n);
  std::uint32_t step = 0;
  return median_event_seconds(stream.s, [&] {
    layer.forward({.training = true, .step = step++}, {x.p, tokens, d}, {y.p, tokens, d});
    layer.backward({dy.p, tokens, d}, {dx.p, tokens, d});
  });
}

template <class Preset>
void bm_cuda_expert_parallel(benchmark::State& st, int ranks, int k, skew s) {
  using Layer = typename Preset::template parallel_layer<timed_nccl>;
  using T = typename Layer::element_type;
  const cuda_sizes& z = cuda_size();
  const int tokens = z.tokens, d = z.d_model, E = z.experts;
  const auto cfg = Preset::make_config(d, z.d_ff, E, 1);
  const routed_inputs in = make_routed_inputs(tokens, d, E, k, s, 1234);
  const std::size_t n = std::size_t(tokens) * std::size_t(d);

  check(cudaSetDevice(0), "cudaSetDevice");
  const double t_single = single_layer_seconds<Preset>(cfg, in);

  std::vector<int> devices(static_cast<std::size_t>(ranks));
  std::iota(devices.begin(), devices.end(), 0);
  std::vector<cudaStream_t> raw(devices.size(), nullptr);
  for (int r = 0; r < ranks; ++r) {
    check(cudaSetDevice(r), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&raw[std::size_t(r)], cudaStreamNonBlocking), "cudaStreamCreate");
  }
  check(cudaSetDevice(0), "cudaSetDevice");
  std::vector<moe::nccl_communicator> comms = moe::nccl_communicator::init_all(devices, raw);

  // Everything a rank owns lives and dies on its own thread (rank 0: this one), its GPU current.
  struct rank_state {
    std::shared_ptr<event_log> log = std::make_shared<event_log>();
    std::unique_ptr<Layer> layer;
    std::unique_ptr<device_buffer<T>> x0, x1, dy, y, dx;
    std::size_t bytes = 0;
  };
  auto build = [&](int r, rank_state& rs) {
    const auto rr = std::size_t(r);
    rs.layer = std::make_unique<Layer>(cfg, timed_nccl(comms[rr], rs.log), moe::cuda(raw[rr]));  // collective
    set_router_weights(*rs.layer, in.w_router);  // every rank holds the same, replicated router
    // Rank r's tokens: the same imposed routing, its own filler values, two buffers in turn.
    rs.x0 = std::make_unique<device_buffer<T>>(r == 0 ? in.x : rerandomized_x(in, 100 + rr));
    rs.x1 = std::make_unique<device_buffer<T>>(rerandomized_x(in, 200 + rr));
    rs.dy = std::make_unique<device_buffer<T>>(random_values(n, 300 + rr, 0.01f, 0.1f));
    rs.y = std::make_unique<device_buffer<T>>(n);
    rs.dx = std::make_unique<device_buffer<T>>(n);
  };
  auto run_step = [&](rank_state& rs, std::uint32_t step) {
    const T* x = (step & 1u) ? rs.x1->p : rs.x0->p;
    rs.layer->forward({.training = true, .step = step}, {x, tokens, d}, {rs.y->p, tokens, d});
    rs.layer->backward({rs.dy->p, tokens, d}, {rs.dx->p, tokens, d});
    rs.bytes = rs.layer->forward_exchange_bytes() + rs.layer->backward_exchange_bytes();
  };

  // Ranks 1 … R−1 wait at the barrier for each step; rank 0 (this thread) runs the benchmark loop.
  std::barrier sync(ranks);
  bool stop = false;  // written by rank 0 before the barrier that releases the others
  std::vector<std::thread> workers;
  for (int r = 1; r < ranks; ++r)
    workers.emplace_back([&, r] {
      or_exit(r, [&] {
        check(cudaSetDevice(r), "cudaSetDevice");
        rank_state rs;
        build(r, rs);
        for (std::uint32_t step = 0;; ++step) {  // in step with rank 0's count
          sync.arrive_and_wait();
          if (stop) break;
          run_step(rs, step);
          // Rank 0 ends its step by waiting for its GPU; so does every rank. It costs nothing here (the
          // next step waits for rank 0 anyway), and the kernel emulator needs it: it runs a device's
          // work, NCCL sends included, only when the device is synchronised.
          check(cudaStreamSynchronize(raw[std::size_t(r)]), "cudaStreamSynchronize");
        }
      });
    });

  or_exit(0, [&] {
    rank_state rs;
    build(0, rs);
    event_timer timer;
    std::uint32_t step = 0;
    auto timed_step = [&] {
      sync.arrive_and_wait();
      return timer.seconds(raw[0], [&] { run_step(rs, step++); });
    };
    timed_step();  // warm-up: workspaces, NCCL connections
    if (!cuda_size().smoke) timed_step();
    rs.log->take_seconds();
    double exchange = 0;
    std::int64_t steps = 0;
    for (auto _ : st) {
      st.SetIterationTime(timed_step());
      exchange += rs.log->take_seconds();
      ++steps;
    }
    stop = true;
    sync.arrive_and_wait();
    for (auto& w : workers) w.join();

    const double per_step = exchange / double(std::max<std::int64_t>(steps, 1));
    st.counters["exchange_MB"] = double(rs.bytes) * 1e-6;
    st.counters["exchange_ms"] = per_step * 1e3;
    st.counters["exchange_frac"] = rate(per_step);
    st.counters["exchange_GBps"] = per_step > 0 ? double(rs.bytes) * 1e-9 / per_step : 0.0;
    st.counters["single_ms"] = t_single * 1e3;
    st.counters["scaling"] = ratio_to(t_single);
    st.counters["tokens_per_s"] = rate(double(tokens) * ranks);
  });
  comms.clear();  // ncclCommDestroy before the streams go
  for (int r = 0; r < ranks; ++r) {
    check(cudaSetDevice(r), "cudaSetDevice");
    check(cudaStreamDestroy(raw[std::size_t(r)]), "cudaStreamDestroy");
  }
  check(cudaSetDevice(0), "cudaSetDevice");
}

template <class Preset>
void register_preset(const char* name, int k, int devices) {
  const cuda_sizes& z = cuda_size();
  using T = typename Preset::layer::element_type;
  // --smoke (CI, on the emulator): zipf only, whose uneven exchanges cover the uniform case's code.
  for (skew s : {skew::uniform, skew::zipf})
    for (int ranks : {1, 2, 4, 8}) {
      if (z.smoke && s == skew::uniform) continue;
      if (ranks > devices || z.experts % ranks != 0) continue;
      const std::string bm = std::string("ep/") + name + "/" + dtype_name<T>() + "/R:" + std::to_string(ranks) +
                             "/T:" + std::to_string(z.tokens) + "/skew:" + to_string(s);
      benchmark::RegisterBenchmark(bm.c_str(), [=](benchmark::State& st) { bm_cuda_expert_parallel<Preset>(st, ranks, k, s); })
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }
}

}  // namespace

void register_cuda_expert_parallel_benchmarks(int devices) {
  register_preset<moe::presets::switch_transformer<moe::bfloat16, moe::cuda>>("switch_transformer", 1, devices);
  register_preset<moe::presets::glam<moe::bfloat16, moe::cuda>>("glam", 2, devices);
}

}  // namespace moe_bench
