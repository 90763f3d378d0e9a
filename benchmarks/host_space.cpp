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
//
// host/dropout_factors/run:<n>: moe::dropout_draws::factors (rate 0.1) over 4096 runs of n elements,
// as the layers and the trainer draw their masks; causal: runs of 1 … 64 elements, as the rows of
// causal attention. vs_block_loop = the time of a loop drawing one Philox block at a time and
// deciding element by element (what factors did before) / this one; tokens_per_s counts elements.
//
// host/philox/blocks:<n>: rng_stream::bits_n drawing n consecutive Philox-4x32-10 blocks on one
// thread (eight at a time with AVX2 on x86, moe/core/philox_x86.hpp). Counters: ns_per_block,
// vs_one_by_one = the time of n calls of rng_stream::bits (the scalar rounds) / this one, avx2 = 1
// when the eight-block path ran.
//
// host/radix_sort/<keys>/n:<n>: host::radix_sort_pairs of n (key, value) pairs, the keys routing sorts:
//   expert_choice  (expert << 32) | descending probability key, E = 256 (n = T·256 proposals; the
//                  probabilities a softmax of N(0, 1) logits): expert choice's slot sort
//   bpr            descending top-1 probability key, one group (E = 64): batch-priority ranking
//   random64       uniform 64-bit keys
// Counters: pairs_per_s, GBps (12 bytes a pair, read once and written once: what one pass moves),
// vs_stable_sort = std::stable_sort of the same pairs (by key, one thread) / this one.
//
// host/radix_sort_heads/expert_choice/n:<n>/head:<C>: host::radix_sort_segment_heads of the
// expert_choice keys above keeping C = T/E a segment (capacity factor 1): expert choice's slot
// sort as routing now calls it. Extra counter vs_full_sort = radix_sort_pairs of the same pairs
// (best of three) / this one.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <utility>
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

// The previous dropout_draws::factors: one block at a time, one decision per element.
void block_loop_factors(const moe::dropout_draws& d, const moe::rng_stream& rng, std::uint64_t first,
                        std::uint64_t n, float kept, float* out) {
  for (std::uint64_t k = 0; k < n;) {
    const std::uint64_t g = first + k;
    const moe::philox4x32 bits = rng.bits(moe::dropout_draws::block_of(g));
    const std::uint64_t stop = n - k < 8 - (g & 7u) ? n : k + 8 - (g & 7u);
    for (; k < stop; ++k) out[k] = kept * float(d.keep(bits, first + k));
  }
}

// run = 0: causal rows (run r has r mod 64 + 1 elements, starting at 64·r).
template <class Draw>
std::uint64_t draw_runs(int runs, std::uint64_t run, Draw&& draw) {
  std::uint64_t elements = 0;
  for (int r = 0; r < runs; ++r) {
    const std::uint64_t n = run ? run : std::uint64_t(r % 64 + 1), first = run ? std::uint64_t(r) * run : 64u * r;
    draw(first, n);
    elements += n;
  }
  return elements;
}

void bm_dropout_factors(benchmark::State& st, std::uint64_t run) {
  const moe::rng_stream rng{42, moe::rng_purpose::expert_dropout, 1, 7};
  const moe::dropout_draws d = moe::dropout_draws::at_rate(0.1f);
  const float kept = d.kept_scale<float>();
  std::vector<float> out(256);
  const int runs = 4096;
  const int calls = sizes().smoke ? 2 : 50;
  const auto reference = [&] {
    return draw_runs(runs, run, [&](std::uint64_t first, std::uint64_t n) {
      block_loop_factors(d, rng, first, n, kept, out.data());
      benchmark::DoNotOptimize(out.data());
    });
  };
  reference();  // warm-up
  const auto start = clock_type::now();
  for (int c = 0; c < calls; ++c) reference();
  const double block_loop = std::chrono::duration<double>(clock_type::now() - start).count() / calls;
  std::uint64_t elements = 0;
  for (auto _ : st)
    elements = draw_runs(runs, run, [&](std::uint64_t first, std::uint64_t n) {
      d.factors(rng, first, n, kept, out.data());
      benchmark::DoNotOptimize(out.data());
    });
  st.counters["tokens_per_s"] = rate(double(elements));
  st.counters["vs_block_loop"] = ratio_to(block_loop);
}

// Seconds per draw of n blocks one at a time, over `calls` calls.
double one_by_one_seconds(const moe::rng_stream& rng, std::uint64_t n, moe::philox4x32* out, int calls) {
  const auto start = clock_type::now();
  for (int c = 0; c < calls; ++c) {
    for (std::uint64_t i = 0; i < n; ++i) out[i] = rng.bits(std::uint64_t(c) * n + i);
    benchmark::DoNotOptimize(out);
    benchmark::ClobberMemory();
  }
  return std::chrono::duration<double>(clock_type::now() - start).count() / calls;
}

void bm_philox(benchmark::State& st, std::uint64_t n) {
  const moe::rng_stream rng{7, moe::rng_purpose::init, 1, 0};
  std::vector<moe::philox4x32> out(n);
  const int calls = sizes().smoke ? 2 : int(std::max<std::uint64_t>(20, (std::uint64_t(1) << 22) / n));
  one_by_one_seconds(rng, n, out.data(), calls);  // warm-up
  const double one_by_one = one_by_one_seconds(rng, n, out.data(), calls);
  std::uint64_t first = 0;
  const auto start = clock_type::now();
  for (auto _ : st) {
    rng.bits_n(first, n, out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    first += n;
  }
  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  st.counters["ns_per_block"] = seconds * 1e9 / (double(st.iterations()) * double(n));
  st.counters["vs_one_by_one"] = ratio_to(one_by_one);
#if defined(MOE_PHILOX_AVX2)
  st.counters["avx2"] = moe::detail::cpu_has_avx2() ? 1.0 : 0.0;
#else
  st.counters["avx2"] = 0.0;
#endif
}

enum class sort_keys { expert_choice, bpr, random64 };
const char* to_string(sort_keys k) {
  return k == sort_keys::expert_choice ? "expert_choice" : k == sort_keys::bpr ? "bpr" : "random64";
}

// What moe::detail::descending_key does: larger probabilities sort first.
std::uint32_t descending(float p) { return ~moe::detail::float_bits(p); }

// n keys of the family (expert_choice: n/256 tokens of 256 probabilities each).
std::vector<std::uint64_t> sort_keys_of(sort_keys family, index_t n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> logit(0.0f, 1.0f);
  std::vector<std::uint64_t> keys(static_cast<std::size_t>(n));
  const auto softmax_row = [&](int experts, std::vector<float>& p) {
    p.resize(std::size_t(experts));
    float sum = 0.0f;
    for (float& v : p) sum += (v = std::exp(logit(gen)));
    for (float& v : p) v /= sum;
  };
  std::vector<float> p;
  if (family == sort_keys::expert_choice) {
    constexpr int experts = 256;
    for (index_t t = 0; t < n / experts; ++t) {
      softmax_row(experts, p);
      for (int e = 0; e < experts; ++e)
        keys[std::size_t(t * experts + e)] = (std::uint64_t(e) << 32) | descending(p[std::size_t(e)]);
    }
  } else if (family == sort_keys::bpr) {
    for (auto& k : keys) {
      softmax_row(64, p);
      k = descending(*std::max_element(p.begin(), p.end()));
    }
  } else {
    for (auto& k : keys) k = gen();
  }
  return keys;
}

// Placed as the routing plan's buffers are (moe::host::allocate).
template <class T>
using placed_vector = std::vector<T, host_allocator<T>>;

// head < 0: radix_sort_pairs; otherwise radix_sort_segment_heads (segments from bit 32: experts).
void bm_radix_sort(benchmark::State& st, sort_keys family, index_t n, index_t head = -1) {
  const moe::host& sp = space();
  const std::vector<std::uint64_t> generated = sort_keys_of(family, n, 23);
  const placed_vector<std::uint64_t> keys(generated.begin(), generated.end());
  placed_vector<int> values(static_cast<std::size_t>(n));
  std::iota(values.begin(), values.end(), 0);
  placed_vector<std::uint64_t> keys_out(std::size_t(n), 0);
  placed_vector<int> values_out(std::size_t(n), 0);
  const std::size_t scratch_bytes = moe::host::radix_sort_scratch_bytes(n);
  placed_vector<std::byte> scratch(scratch_bytes);
  const int key_bits = family == sort_keys::expert_choice ? 40 : family == sort_keys::bpr ? 32 : 64;
  const auto full_sort = [&] {
    sp.radix_sort_pairs(keys.data(), keys_out.data(), values.data(), values_out.data(), n, key_bits, scratch.data(),
                        scratch_bytes);
  };

  std::vector<std::pair<std::uint64_t, int>> reference(static_cast<std::size_t>(n));
  const auto stable_sort_seconds = [&] {
    for (std::size_t i = 0; i < reference.size(); ++i) reference[i] = {keys[i], values[i]};
    const auto start = clock_type::now();
    std::stable_sort(reference.begin(), reference.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    return std::chrono::duration<double>(clock_type::now() - start).count();
  };
  const double stable = stable_sort_seconds();
  // The full radix sort of the same pairs, for the heads' ratio: the best of three.
  double full = 0.0;
  if (head >= 0) {
    full = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      const auto start = clock_type::now();
      full_sort();
      full = std::min(full, std::chrono::duration<double>(clock_type::now() - start).count());
    }
  }
  for (auto _ : st) {
    if (head < 0)
      full_sort();
    else
      sp.radix_sort_segment_heads(keys.data(), keys_out.data(), values.data(), values_out.data(), n, key_bits, 32,
                                  head, scratch.data(), scratch_bytes);
    benchmark::DoNotOptimize(values_out.data());
  }
  // The whole order, or each segment's first `head` pairs.
  std::size_t segment_begin = 0;
  for (std::size_t i = 0; i < reference.size(); ++i) {
    if (head >= 0) {
      if (reference[i].first >> 32 != reference[segment_begin].first >> 32) segment_begin = i;
      if (i - segment_begin >= std::size_t(head)) continue;
    }
    if (values_out[i] != reference[i].second) {
      st.SkipWithError("radix_sort disagrees with std::stable_sort");
      return;
    }
  }
  st.counters["pairs_per_s"] = rate(double(n));
  st.counters["GBps"] = rate(double(n) * 12.0 * 2.0 * 1e-9);
  st.counters["vs_stable_sort"] = ratio_to(stable);
  if (head >= 0) st.counters["vs_full_sort"] = ratio_to(full);
  st.counters["threads"] = sp.threads();
}

}  // namespace

void register_host_space_benchmarks() {
  const index_t sort_scale = sizes().smoke ? 64 : 1;
  for (const auto& [family, n] : {std::pair{sort_keys::expert_choice, index_t(4096) * 256},
                                  std::pair{sort_keys::expert_choice, index_t(65536) * 256},
                                  std::pair{sort_keys::bpr, index_t(65536)}, std::pair{sort_keys::random64,
                                  index_t(1) << 20}}) {
    const index_t size = std::max<index_t>(256, n / sort_scale);
    const std::string name = std::string("host/radix_sort/") + to_string(family) + "/n:" + std::to_string(size);
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { bm_radix_sort(st, family, size); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  // Expert choice's heads at capacity factor 1: C = T/E of each expert's T proposals.
  for (const index_t tokens : {index_t(4096), index_t(65536)}) {
    const index_t size = std::max<index_t>(256, tokens * 256 / sort_scale), head = size / 256 / 256;
    const std::string name = "host/radix_sort_heads/expert_choice/n:" + std::to_string(size) +
                             "/head:" + std::to_string(head);
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
      bm_radix_sort(st, sort_keys::expert_choice, size, head);
    })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  for (const std::uint64_t n : {std::uint64_t(32), std::uint64_t(4096)}) {
    const std::string name = "host/philox/blocks:" + std::to_string(n);
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { bm_philox(st, n); })
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
  for (const std::uint64_t run : {std::uint64_t(256), std::uint64_t(0)}) {
    const std::string name = "host/dropout_factors/run:" + (run ? std::to_string(run) : std::string("causal"));
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { bm_dropout_factors(st, run); })
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
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
