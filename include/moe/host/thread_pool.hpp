// moe/host/thread_pool.hpp — a small fork-join pool for the host execution space.
//
// parallel_for splits [0, n) into one contiguous chunk per thread. Every index is processed by
// exactly one call of the body and bodies never reduce across indices, so results do not depend on
// the number of threads: the host space is deterministic at any thread count.
//
// A training step issues hundreds of short fork-joins a few microseconds apart. Blocking on a
// condition variable costs each of them a futex sleep and wake per thread (on this project's VM
// they were 16 % of a two-thread trainer's samples, in the kernel's wake-up path), so idle workers
// and the waiting submitter first poll an atomic for a while ($MOE_SPIN_US microseconds, default
// 500; 0 turns polling off) and only then block. Waking a thread that went to sleep cost about
// 100 µs there, so the default covers the serial stretches between a step's loops. They poll only
// when the pool has no more threads than the process has CPUs (cpus.hpp: affinity mask and cgroup
// CPU quota; an oversubscribed poller would take the core of a thread with work), and yield every
// few µs while polling: when the scheduler put the submitter and a polling worker on one core, a
// poller that only paused held it for its whole time slice, and a 1.2 ms forward took 13 ms.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/error.hpp"
#include "moe/host/cpus.hpp"

namespace moe::detail {

class thread_pool {
 public:
  // How long an idle thread polls before it blocks, unless $MOE_SPIN_US says otherwise.
  static constexpr std::chrono::microseconds default_spin_time{500};

  explicit thread_pool(int threads)
      : threads_(std::max(1, threads)),
        spin_time_(spin_time_from_environment()),
        spin_(spin_time_.count() > 0 && threads_ <= available_cpus()) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
  }
  ~thread_pool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  int size() const { return threads_; }
  // Whether idle threads poll before they block (see the top of this file).
  bool polls() const { return spin_; }

  // Runs body(begin, end) over `parts` contiguous chunks of [0, n) and waits for all of them.
  // The first exception thrown by any chunk is rethrown here.
  void run_chunks(index_t n, const std::function<void(index_t, index_t)>& body) {
    if (n <= 0) return;
    const int parts = int(std::min<index_t>(threads_, n));
    if (parts == 1 || inside_pool()) {
      body(0, n);
      return;
    }
    std::unique_lock submit(submit_mutex_);  // one fork-join at a time per pool
    {
      std::lock_guard lock(mutex_);
      job_ = &body;
      job_n_ = n;
      job_parts_ = parts;
      pending_ = parts - 1;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    run_part(0, parts, n, body);
    spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; });
    std::unique_lock lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static bool& inside_flag() {
    thread_local bool inside = false;
    return inside;
  }
  static bool inside_pool() { return inside_flag(); }

  void run_part(int part, int parts, index_t n, const std::function<void(index_t, index_t)>& body) {
    const index_t begin = n * part / parts, end = n * (part + 1) / parts;
    bool& inside = inside_flag();
    const bool was_inside = inside;
    inside = true;  // nested parallel_for calls run serially instead of deadlocking
    try {
      body(begin, end);
    } catch (...) {
      std::lock_guard lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    inside = was_inside;
  }

  static std::chrono::microseconds spin_time_from_environment() {
    const char* env = std::getenv("MOE_SPIN_US");
    if (env == nullptr) return default_spin_time;
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    require(end != env && *end == '\0' && v >= 0 && v <= 1000000, "MOE_SPIN_US", "'", env,
            "' is not a polling time in microseconds in [0, 1000000]");
    return std::chrono::microseconds(v);
  }

  // Polls ready() for up to spin_time_ (when polling is on); the caller then blocks as usual.
  template <class Ready>
  void spin_until(Ready&& ready) const {
    if (!spin_) return;
    const auto until = std::chrono::steady_clock::now() + spin_time_;
    for (unsigned i = 1; !ready(); ++i) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
      if (i % 64 == 0) {
        if (std::chrono::steady_clock::now() > until) return;
        std::this_thread::yield();  // a thread with work that shares this core gets it
      }
    }
  }

  void worker(int id) {
    std::size_t seen = 0;
    for (;;) {
      const std::function<void(index_t, index_t)>* job;
      index_t n;
      int parts;
      spin_until([&] {
        return generation_.load(std::memory_order_acquire) != seen || stopping_.load(std::memory_order_acquire);
      });
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        job = job_;
        n = job_n_;
        parts = job_parts_;
      }
      if (id < parts) {
        run_part(id, parts, n, *job);
        std::lock_guard lock(mutex_);
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  int threads_;
  std::chrono::microseconds spin_time_;
  bool spin_;
  std::vector<std::thread> workers_;
  std::mutex submit_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(index_t, index_t)>* job_ = nullptr;
  index_t job_n_ = 0;
  int job_parts_ = 0;
  // Written under mutex_; atomic so that spinning threads may poll them without it.
  std::atomic<int> pending_{0};
  std::atomic<std::size_t> generation_{0};
  std::atomic<bool> stopping_{false};
  std::exception_ptr error_;
};

}  // namespace moe::detail
