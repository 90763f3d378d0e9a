// benchmarks/expert_parallel.cpp — expert parallelism over in-process ranks: what a step exchanges
// and how long the exchange takes next to the rest of the layer.
//
// ep/<preset>/R:<ranks>/T:<tokens per rank>: R ranks (threads, each with a one-thread host space),
// E = 8 experts split over them, one forward + backward per iteration. Counters:
//   exchange_MB    bytes rank 0 sent to other ranks per step (rows and their token ids, forward +
//                  backward; it receives as much when the load is even) — the number the scaling
//                  model of docs/expert_parallelism.md starts from
//   exchange_ms    rank 0's wall time inside the communicator per step (copies and waiting for peers)
//   exchange_frac  exchange_ms / step time
//   tokens_per_s   tokens of all ranks per second
// In-process ranks exchange by memcpy on this machine's cores, so exchange_ms says little about a
// network; exchange_MB is exact and scales to any link with the model in the docs. R beyond the
// core count oversubscribes the machine (the step time then includes waiting for a core).
#include <atomic>
#include <barrier>
#include <chrono>
#include <memory>
#include <thread>

#include "common.hpp"
#include "timed_communicator.hpp"

namespace moe_bench {

namespace {

using comm_type = timed_communicator<moe::in_process_communicator, wall_clock>;
static_assert(moe::communicator<comm_type>);

template <class Preset>
void bm_expert_parallel(benchmark::State& st, int ranks, int tokens_per_rank) {
  using layer_type = typename Preset::template parallel_layer<comm_type>;
  const int E = 8, d = sizes().d_model;
  const auto cfg = Preset::make_config(d, sizes().d_ff, E, 1);
  auto world = std::make_shared<moe::in_process_world>(ranks);
  const std::size_t n = std::size_t(tokens_per_rank) * std::size_t(d);

  struct rank_state {
    std::shared_ptr<wall_clock> exchange = std::make_shared<wall_clock>();
    std::unique_ptr<layer_type> layer;
    std::vector<float> x, y, dy, dx;
    std::size_t bytes = 0;
  };
  std::vector<rank_state> rs(static_cast<std::size_t>(ranks));
  std::uint32_t step = 0;
  auto run_step = [&](int r) {
    rank_state& s = rs[std::size_t(r)];
    s.layer->forward({.training = true, .step = step}, {s.x.data(), tokens_per_rank, d},
                     {s.y.data(), tokens_per_rank, d});
    s.layer->backward({s.dy.data(), tokens_per_rank, d}, {s.dx.data(), tokens_per_rank, d});
    s.bytes = s.layer->forward_exchange_bytes() + s.layer->backward_exchange_bytes();
  };

  // Ranks 1..R−1 run on their own threads, released once per step; rank 0 is this thread.
  std::barrier sync(ranks);
  std::atomic<bool> stop{false};
  std::vector<std::jthread> workers;
  auto construct = [&](int r) {
    rank_state& s = rs[std::size_t(r)];
    s.layer = std::make_unique<layer_type>(
        cfg, comm_type(moe::in_process_communicator(world, r), s.exchange), moe::host(1));
    s.x = random_values(n, 10 + std::uint64_t(r));
    s.y.resize(n);
    s.dx.resize(n);
    s.dy = random_values(n, 100 + std::uint64_t(r), 0.01f, 0.1f);
  };
  for (int r = 1; r < ranks; ++r)
    workers.emplace_back([&, r] {
      construct(r);  // the constructor is collective (it compares configurations)
      while (true) {
        sync.arrive_and_wait();
        if (stop.load()) return;
        run_step(r);
      }
    });
  construct(0);

  auto step_all = [&] {
    sync.arrive_and_wait();
    run_step(0);
    ++step;
  };
  step_all();  // warm-up
  rs[0].exchange->seconds = 0.0;
  const std::uint32_t first = step;
  for (auto _ : st) step_all();
  const double steps = double(step - first);
  stop.store(true);
  sync.arrive_and_wait();
  workers.clear();  // joins

  st.counters["exchange_MB"] = double(rs[0].bytes) * 1e-6;
  st.counters["exchange_ms"] = rs[0].exchange->seconds / steps * 1e3;
  st.counters["exchange_frac"] = rate(rs[0].exchange->seconds / steps);
  st.counters["tokens_per_s"] = rate(double(tokens_per_rank) * ranks);
}

template <class Preset>
void register_preset(const char* name) {
  const int tokens = sizes().smoke ? 256 : 1024;
  for (int ranks : {1, 2, 4, 8}) {
    const std::string bm = std::string("ep/") + name + "/R:" + std::to_string(ranks) + "/T:" + std::to_string(tokens);
    configure(benchmark::RegisterBenchmark(bm.c_str(), [=](benchmark::State& st) {
      bm_expert_parallel<Preset>(st, ranks, tokens);
    }));
  }
}

}  // namespace

void register_expert_parallel_benchmarks() {
  register_preset<moe::presets::switch_transformer<float>>("switch_transformer");
  register_preset<moe::presets::glam<float>>("glam");
}

}  // namespace moe_bench
