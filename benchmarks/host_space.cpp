// benchmarks/host_space.cpp — what one fork-join of the host space's thread pool costs.
//
// host/parallel_for/n:<n>/gap_us:<g>: parallel_for over n floats of a cheap element-wise body
// (x = 0.999·x + 0.001), then g µs of serial work on the calling thread (a busy loop), repeated; a
// training step is hundreds of such calls a few µs to a few hundred µs apart. The time is that of
// one call plus its gap. Counters:
//   overhead_us   time − gap − the body's share of one thread (serial body time / threads):
//                 what the fork-join itself costs, waking and waiting included
//   vs_serial     the same loop on a one-thread host space / this one: above 1 when splitting the
//                 call over the pool pays for its fork-join
//
// host/reduce_sum/n:<n>: host::reduce_sum of n random floats (blocks of 8-lane partial sums, added
// pairwise; spread over the pool when large). Counters: GBps (the bytes read), vs_running_sum = the
// time of a running sum in index order (what reduce_sum did before, serial) / this one.
#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "common.hpp"

namespace moe_bench {
namespace {

using clock_type = std::chrono::steady_clock;

void busy_wait(std::chrono::microseconds gap) {
  if (gap.count() == 0) return;
  const auto until = clock_type::now() + gap;
  while (clock_type::now() < until) {
  }
}

// The measured call: a cheap element-wise body over p[0, n).
void decay(const moe::host& sp, float* p, index_t n) {
  sp.parallel_for(n, [p](index_t i) { p[i] = p[i] * 0.999f + 0.001f; });
}

// Seconds per (call + gap) on `sp`, over `calls` calls.
double seconds_per_call(const moe::host& sp, float* p, index_t n, std::chrono::microseconds gap, int calls) {
  const auto start = clock_type::now();
  for (int c = 0; c < calls; ++c) {
    decay(sp, p, n);
    busy_wait(gap);
  }
  return std::chrono::duration<double>(clock_type::now() - start).count() / calls;
}

void bm_parallel_for(benchmark::State& st, index_t n, int gap_us) {
  const moe::host& sp = space();
  const std::chrono::microseconds gap(gap_us);
  std::vector<float> v = random_values(std::size_t(n), 7);
  float* p = v.data();
  const moe::host serial(1);
  const int calls = sizes().smoke ? 20 : 2000;
  seconds_per_call(serial, p, n, std::chrono::microseconds(0), calls);  // warm-up
  const double serial_body = seconds_per_call(serial, p, n, std::chrono::microseconds(0), calls);
  const double serial_call = seconds_per_call(serial, p, n, gap, calls);

  double total = 0.0;  // timed per call, so that the counters below use the benchmark's own time
  for (auto _ : st) {
    const auto start = clock_type::now();
    decay(sp, p, n);
    busy_wait(gap);
    const double s = std::chrono::duration<double>(clock_type::now() - start).count();
    st.SetIterationTime(s);
    total += s;
  }
  benchmark::DoNotOptimize(v.data());
  const double parallel_call = total / double(st.iterations());
  st.counters["overhead_us"] = (parallel_call - gap_us * 1e-6 - serial_body / sp.threads()) * 1e6;
  st.counters["vs_serial"] = serial_call / parallel_call;
  st.counters["threads"] = sp.threads();
}

// Seconds per running sum of p[0, n) in index order, over `calls` calls.
double running_sum_seconds(const float* p, index_t n, int calls) {
  const auto start = clock_type::now();
  for (int c = 0; c < calls; ++c) {
    float acc = 0.0f;
    for (index_t i = 0; i < n; ++i) acc += p[i];
    benchmark::DoNotOptimize(acc);
  }
  return std::chrono::duration<double>(clock_type::now() - start).count() / calls;
}

void bm_reduce_sum(benchmark::State& st, index_t n) {
  const moe::host& sp = space();
  const std::vector<float> v = random_values(std::size_t(n), 11, 0.5f, 1.5f);
  const int calls = sizes().smoke ? 5 : int(std::max<index_t>(20, (index_t(1) << 26) / n));
  running_sum_seconds(v.data(), n, calls);  // warm-up
  const double running = running_sum_seconds(v.data(), n, calls);
  float out = 0.0f;
  for (auto _ : st) {
    sp.reduce_sum(v.data(), n, &out);
    benchmark::DoNotOptimize(out);
  }
  st.counters["GBps"] = rate(double(n) * sizeof(float) * 1e-9);
  st.counters["vs_running_sum"] = ratio_to(running);
  st.counters["threads"] = sp.threads();
}

}  // namespace

void register_host_space_benchmarks() {
  for (index_t n : {index_t(4096), index_t(65536), index_t(1) << 20}) {
    const std::string name = "host/reduce_sum/n:" + std::to_string(n);
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { bm_reduce_sum(st, n); })
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
  for (index_t n : {index_t(4096), index_t(65536)})
    for (int gap : {0, 20, 200}) {
      const std::string name =
          "host/parallel_for/n:" + std::to_string(n) + "/gap_us:" + std::to_string(gap);
      benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { bm_parallel_for(st, n, gap); })
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
}

}  // namespace moe_bench
