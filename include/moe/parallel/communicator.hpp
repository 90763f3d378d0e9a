// moe/parallel/communicator.hpp — what a communicator provides to expert parallelism.
//
// A communicator connects R ranks (GShard/Switch expert parallelism: each rank holds E/R experts
// and exchanges tokens with the others). Members: moe::in_process_communicator (threads in one
// process exchanging host buffers: lets CI test expert parallelism on the CPU) and
// moe::nccl_communicator (<moe/parallel/nccl.cuh>: GPUs, device buffers, a CUDA stream).
//
// Every collective is called by all ranks in the same order with consistent sizes; an
// inconsistency is reported as an error on every rank, never as a hang.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>

namespace moe {

struct communicator_kind {};

template <class C>
concept communicator =
    requires(C& c, const void* src, void* dst, std::size_t bytes, const std::size_t* sizes, float* f, double* d) {
      typename C::policy_kind;
      requires std::same_as<typename C::policy_kind, communicator_kind>;
      { C::name } -> std::convertible_to<const char*>;
      { c.rank() } -> std::same_as<int>;
      { c.size() } -> std::same_as<int>;
      // Fixed-size exchange: `bytes` from this rank to every rank (block q of src goes to rank q,
      // block p of dst comes from rank p).
      c.all_to_all(src, dst, bytes);
      // Variable-size exchange: send_bytes[q] to rank q (blocks laid end to end in src, in rank order),
      // recv_bytes[p] from rank p (laid end to end in dst). Sizes are host values.
      c.all_to_all_v(src, sizes, dst, sizes);
      // Every rank's `bytes` laid end to end in rank order in dst.
      c.all_gather(src, bytes, dst);
      // In-place element-wise sum over ranks.
      c.all_reduce_sum(f, bytes);
      c.all_reduce_sum(d, bytes);
      c.barrier();
    };

}  // namespace moe
