// benchmarks/timed_communicator.hpp — a communicator that times the collectives of another.
//
// The ep/ families measure how long an expert-parallel step spends exchanging: the layer is built
// on timed_communicator<Comm, Clock>, which forwards every collective to Comm between
// clock->before(comm) and clock->after(comm). The host family's clock reads the wall clock (the
// in-process collectives run on the calling thread); the CUDA family's records CUDA events on the
// NCCL communicator's stream (NCCL calls only enqueue work).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <utility>

#include <moe/parallel/communicator.hpp>

namespace moe_bench {

template <class Comm, class Clock>
class timed_communicator {
 public:
  using policy_kind = moe::communicator_kind;
  static constexpr const char* name = Comm::name;
  static constexpr bool host_memory = Comm::host_memory;

  timed_communicator(Comm inner, std::shared_ptr<Clock> clock) : inner_(std::move(inner)), clock_(std::move(clock)) {}
  int rank() const { return inner_.rank(); }
  int size() const { return inner_.size(); }
  // The in-process world, so that a failing rank still releases the others (expert_parallel looks
  // for it).
  auto& world() const
    requires requires(const Comm& c) { c.world(); }
  {
    return inner_.world();
  }

  void all_to_all(const void* src, void* dst, std::size_t bytes) {
    timed([&] { inner_.all_to_all(src, dst, bytes); });
  }
  void all_to_all_v(const void* src, const std::size_t* send_bytes, void* dst, const std::size_t* recv_bytes) {
    timed([&] { inner_.all_to_all_v(src, send_bytes, dst, recv_bytes); });
  }
  void all_gather(const void* src, std::size_t bytes, void* dst) {
    timed([&] { inner_.all_gather(src, bytes, dst); });
  }
  void all_reduce_sum(float* data, std::size_t count) {
    timed([&] { inner_.all_reduce_sum(data, count); });
  }
  void all_reduce_sum(double* data, std::size_t count) {
    timed([&] { inner_.all_reduce_sum(data, count); });
  }
  void barrier() {
    timed([&] { inner_.barrier(); });
  }

 private:
  template <class F>
  void timed(F&& f) {
    clock_->before(inner_);
    f();
    clock_->after(inner_);
  }
  Comm inner_;
  std::shared_ptr<Clock> clock_;
};

// Wall-clock seconds spent inside the collectives.
struct wall_clock {
  double seconds = 0;
  std::chrono::steady_clock::time_point start{};
  template <class Comm>
  void before(const Comm&) {
    start = std::chrono::steady_clock::now();
  }
  template <class Comm>
  void after(const Comm&) {
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
};

}  // namespace moe_bench
