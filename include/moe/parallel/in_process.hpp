// moe/parallel/in_process.hpp — ranks as threads of one process, exchanging host buffers.
//
//   auto world = std::make_shared<moe::in_process_world>(4);
//   // in thread r: moe::in_process_communicator comm(world, r);
//
// Semantics match moe::nccl_communicator (blocking collectives, every rank calls the same sequence
// with consistent sizes). Each collective posts this rank's buffers, waits for every rank, checks
// that all ranks called the same collective with matching sizes, copies from the peers' buffers,
// and waits again so no buffer is released while a peer still reads it. Waits are bounded: a rank
// that never arrives, a mismatched call, or a rank that failed (abort) ends the collective with a
// moe::error on every rank naming the cause. Reductions add in rank order, so results are the
// same bits on every run.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/parallel/communicator.hpp"

namespace moe {

class in_process_world {
 public:
  explicit in_process_world(int ranks, std::chrono::milliseconds timeout = std::chrono::seconds(60))
      : size_(ranks), timeout_(timeout), slots_(std::size_t(ranks > 0 ? ranks : 0)) {
    require(ranks >= 1, "in_process_world", "ranks=", ranks, " must be at least 1");
  }
  int size() const { return size_; }

  // Marks the world failed: every rank waiting in (or later entering) a collective throws `why`.
  void abort(const std::string& why) {
    std::lock_guard lock(mutex_);
    if (aborted_.empty()) aborted_ = why;
    cv_.notify_all();
  }

 private:
  friend class in_process_communicator;

  enum class op { none, all_to_all, all_to_all_v, all_gather, all_reduce_float, all_reduce_double, barrier };

  struct slot {
    op what = op::none;
    std::uint64_t sequence = 0;
    const void* src = nullptr;
    std::size_t bytes = 0;                    // all_to_all (per rank), all_gather, all_reduce
    const std::size_t* send_bytes = nullptr;  // all_to_all_v: [size]
    const std::size_t* recv_bytes = nullptr;  // all_to_all_v: [size]
  };

  static const char* op_name(op o) {
    switch (o) {
      case op::all_to_all: return "all_to_all";
      case op::all_to_all_v: return "all_to_all_v";
      case op::all_gather: return "all_gather";
      case op::all_reduce_float: return "all_reduce_sum<float>";
      case op::all_reduce_double: return "all_reduce_sum<double>";
      case op::barrier: return "barrier";
      default: return "none";
    }
  }

  // Waits until every rank has arrived at this phase; throws on abort or timeout.
  void arrive(std::unique_lock<std::mutex>& lock, int rank, const char* what) {
    const std::uint64_t generation = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    const bool done = cv_.wait_for(lock, timeout_, [&] { return generation_ != generation || !aborted_.empty(); });
    if (generation_ != generation) return;  // completed, even if a rank aborted right after
    if (!aborted_.empty()) throw error(aborted_);
    if (!done) {
      aborted_ = detail::concat("in_process_communicator: rank ", rank, " waited ",
                                std::chrono::duration<double>(timeout_).count(), " s in ", what,
                                " for the other ranks (one stopped calling collectives, or called another one)");
      cv_.notify_all();
      throw error(aborted_);
    }
  }

  int size_;
  std::chrono::milliseconds timeout_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<slot> slots_;
  int arrived_ = 0;
  std::uint64_t generation_ = 0;
  std::string aborted_;
};

class in_process_communicator {
 public:
  using policy_kind = communicator_kind;
  static constexpr const char* name = "in_process";
  // Buffers are host memory (moe::host space).
  static constexpr bool host_memory = true;

  in_process_communicator(std::shared_ptr<in_process_world> world, int rank) : world_(std::move(world)), rank_(rank) {
    require(world_ != nullptr, "in_process_communicator", "world must not be null");
    require(rank >= 0 && rank < world_->size(), "in_process_communicator", "rank=", rank,
            " is outside the world of ", world_->size(), " ranks");
  }

  int rank() const { return rank_; }
  int size() const { return world_->size(); }
  in_process_world& world() const { return *world_; }

  void all_to_all(const void* src, void* dst, std::size_t bytes) {
    collective(in_process_world::op::all_to_all, src, bytes, nullptr, nullptr, [&](const auto& slots) {
      for (int p = 0; p < size(); ++p)
        copy(static_cast<char*>(dst) + std::size_t(p) * bytes,
             static_cast<const char*>(slots[std::size_t(p)].src) + std::size_t(rank_) * bytes, bytes);
    });
  }

  void all_to_all_v(const void* src, const std::size_t* send_bytes, void* dst, const std::size_t* recv_bytes) {
    collective(in_process_world::op::all_to_all_v, src, 0, send_bytes, recv_bytes, [&](const auto& slots) {
      std::size_t out = 0;
      for (int p = 0; p < size(); ++p) {
        const auto& peer = slots[std::size_t(p)];
        std::size_t offset = 0;  // where peer p's block for this rank starts in its src
        for (int q = 0; q < rank_; ++q) offset += peer.send_bytes[q];
        copy(static_cast<char*>(dst) + out, static_cast<const char*>(peer.src) + offset, recv_bytes[p]);
        out += recv_bytes[p];
      }
    });
  }

  void all_gather(const void* src, std::size_t bytes, void* dst) {
    collective(in_process_world::op::all_gather, src, bytes, nullptr, nullptr, [&](const auto& slots) {
      for (int p = 0; p < size(); ++p)
        copy(static_cast<char*>(dst) + std::size_t(p) * bytes, slots[std::size_t(p)].src, bytes);
    });
  }

  // data[i] = Σ_ranks data[i], added in rank order (rank 0 + rank 1 + …) on every rank.
  void all_reduce_sum(float* data, std::size_t count) { reduce(in_process_world::op::all_reduce_float, data, count); }
  void all_reduce_sum(double* data, std::size_t count) {
    reduce(in_process_world::op::all_reduce_double, data, count);
  }

  void barrier() {
    collective(in_process_world::op::barrier, nullptr, 0, nullptr, nullptr, [](const auto&) {});
  }

 private:
  template <class T>
  void reduce(in_process_world::op what, T* data, std::size_t count) {
    std::vector<T> sum(count, T(0));
    collective(what, data, count * sizeof(T), nullptr, nullptr, [&](const auto& slots) {
      for (int p = 0; p < size(); ++p) {
        const T* peer = static_cast<const T*>(slots[std::size_t(p)].src);
        for (std::size_t i = 0; i < count; ++i) sum[i] += peer[i];
      }
    });
    // Every rank has read every peer's data (second phase done): now overwrite.
    std::memcpy(data, sum.data(), count * sizeof(T));
  }

  static void copy(void* dst, const void* src, std::size_t bytes) {
    if (bytes) std::memcpy(dst, src, bytes);
  }

  // Post, wait, check consistency, run `body` (reads the peers' slots), wait again. The check reads
  // every rank's slot and every rank computes the same verdict; a rank leaves (and releases the
  // buffers its slot points to) only after the second wait, when no rank reads them any more.
  template <class Body>
  void collective(in_process_world::op what, const void* src, std::size_t bytes, const std::size_t* send_bytes,
                  const std::size_t* recv_bytes, Body&& body) {
    in_process_world& w = *world_;
    std::unique_lock lock(w.mutex_);
    if (!w.aborted_.empty()) throw error(w.aborted_);
    const char* name_of_op = in_process_world::op_name(what);
    w.slots_[std::size_t(rank_)] = {what, ++sequence_, src, bytes, send_bytes, recv_bytes};
    w.arrive(lock, rank_, name_of_op);
    const std::string problem = validate(w.slots_);
    if (problem.empty()) {
      lock.unlock();
      body(w.slots_);
      lock.lock();
    }
    w.arrive(lock, rank_, name_of_op);
    if (!problem.empty()) throw error(problem);
  }

  // The first inconsistency among the posted slots (the same text on every rank), or "".
  std::string validate(const std::vector<in_process_world::slot>& slots) const {
    const auto& first = slots[0];
    for (int p = 1; p < size(); ++p) {
      const auto& s = slots[std::size_t(p)];
      if (s.what != first.what || s.sequence != first.sequence)
        return detail::concat("in_process_communicator: rank ", p, " called ", in_process_world::op_name(s.what),
                              " (collective #", s.sequence, ") while rank 0 called ",
                              in_process_world::op_name(first.what), " (#", first.sequence, ")");
    }
    const auto what = first.what;
    if (what == in_process_world::op::all_to_all || what == in_process_world::op::all_gather ||
        what == in_process_world::op::all_reduce_float || what == in_process_world::op::all_reduce_double)
      for (int p = 1; p < size(); ++p)
        if (slots[std::size_t(p)].bytes != first.bytes)
          return detail::concat("in_process_communicator: ", in_process_world::op_name(what), " with ",
                                slots[std::size_t(p)].bytes, " bytes on rank ", p, " but ", first.bytes,
                                " bytes on rank 0");
    if (what == in_process_world::op::all_to_all_v)
      for (int p = 0; p < size(); ++p)
        for (int q = 0; q < size(); ++q) {
          const std::size_t sent = slots[std::size_t(p)].send_bytes[q];
          const std::size_t expected = slots[std::size_t(q)].recv_bytes[p];
          if (sent != expected)
            return detail::concat("in_process_communicator: all_to_all_v: rank ", p, " sends ", sent,
                                  " bytes to rank ", q, ", which expects ", expected);
        }
    return {};
  }

  std::shared_ptr<in_process_world> world_;
  int rank_;
  std::uint64_t sequence_ = 0;
};

}  // namespace moe
