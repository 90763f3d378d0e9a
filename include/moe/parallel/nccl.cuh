// moe/parallel/nccl.cuh — expert-parallel communication between GPUs over NCCL.
//
// Wraps an ncclComm_t and a CUDA stream. Buffers are device memory. The variable-size all-to-all is
// one ncclGroupStart … ncclSend/ncclRecv per peer … ncclGroupEnd (NCCL has no all-to-all-v); sizes
// are host values, as NCCL needs them to launch. Setup helpers cover one process driving several
// GPUs (ncclCommInitAll) and one process per GPU (a unique id created by rank 0 and passed to the
// others by the caller, e.g. over MPI or a file).
//
// Not yet run on more than one real GPU (this project's GPU machines have one). Several GPUs are
// tested on the host kernel emulator, which emulates NCCL between its devices (tests/emu).
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/parallel/communicator.hpp"

namespace moe {

namespace detail {

inline void nccl_check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess)
    throw error(detail::concat("nccl_communicator: ", what, " failed: ", ncclGetErrorString(r),
                               r == ncclSystemError || r == ncclRemoteError ? " (a peer rank failed or hung up)" : ""));
}
inline void cuda_check_comm(cudaError_t r, const char* what) {
  if (r != cudaSuccess) throw error(detail::concat("nccl_communicator: ", what, " failed: ", cudaGetErrorString(r)));
}

}  // namespace detail

class nccl_communicator {
 public:
  using policy_kind = communicator_kind;
  static constexpr const char* name = "nccl";
  static constexpr bool host_memory = false;  // device buffers

  // Adopts `comm` (destroyed with the last copy of this handle) on `stream`.
  nccl_communicator(ncclComm_t comm, cudaStream_t stream)
      : comm_(std::shared_ptr<ncclComm>(comm, [](ncclComm_t c) { ncclCommDestroy(c); })), stream_(stream) {
    detail::nccl_check(ncclCommCount(comm, &size_), "ncclCommCount");
    detail::nccl_check(ncclCommUserRank(comm, &rank_), "ncclCommUserRank");
  }

  // One process, several GPUs: communicator r drives devices[r] (streams[r] on that device).
  static std::vector<nccl_communicator> init_all(const std::vector<int>& devices,
                                                 const std::vector<cudaStream_t>& streams) {
    require(!devices.empty(), "nccl_communicator::init_all", "no devices given");
    require(streams.size() == devices.size(), "nccl_communicator::init_all", streams.size(), " streams for ",
            devices.size(), " devices");
    std::vector<ncclComm_t> comms(devices.size());
    detail::nccl_check(ncclCommInitAll(comms.data(), int(devices.size()), devices.data()), "ncclCommInitAll");
    std::vector<nccl_communicator> out;
    for (std::size_t i = 0; i < comms.size(); ++i) out.emplace_back(comms[i], streams[i]);
    return out;
  }

  // One process per GPU: rank 0 calls unique_id() and sends the id to every other rank.
  static ncclUniqueId unique_id() {
    ncclUniqueId id;
    detail::nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    return id;
  }
  static nccl_communicator init_rank(const ncclUniqueId& id, int ranks, int rank, cudaStream_t stream) {
    require(ranks >= 1 && rank >= 0 && rank < ranks, "nccl_communicator::init_rank", "rank=", rank,
            " outside a world of ", ranks);
    ncclComm_t comm;
    detail::nccl_check(ncclCommInitRank(&comm, ranks, id, rank), "ncclCommInitRank");
    return nccl_communicator(comm, stream);
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  cudaStream_t stream() const { return stream_; }

  void all_to_all(const void* src, void* dst, std::size_t bytes) {
    detail::nccl_check(ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < size_; ++p) {
      detail::nccl_check(ncclSend(static_cast<const char*>(src) + std::size_t(p) * bytes, bytes, ncclChar, p,
                                  comm_.get(), stream_),
                         "ncclSend");
      detail::nccl_check(
          ncclRecv(static_cast<char*>(dst) + std::size_t(p) * bytes, bytes, ncclChar, p, comm_.get(), stream_),
          "ncclRecv");
    }
    detail::nccl_check(ncclGroupEnd(), "ncclGroupEnd (all_to_all)");
  }

  void all_to_all_v(const void* src, const std::size_t* send_bytes, void* dst, const std::size_t* recv_bytes) {
    detail::nccl_check(ncclGroupStart(), "ncclGroupStart");
    std::size_t out = 0, in = 0;
    for (int p = 0; p < size_; ++p) {
      if (send_bytes[p])
        detail::nccl_check(
            ncclSend(static_cast<const char*>(src) + out, send_bytes[p], ncclChar, p, comm_.get(), stream_),
            "ncclSend");
      if (recv_bytes[p])
        detail::nccl_check(ncclRecv(static_cast<char*>(dst) + in, recv_bytes[p], ncclChar, p, comm_.get(), stream_),
                           "ncclRecv");
      out += send_bytes[p];
      in += recv_bytes[p];
    }
    detail::nccl_check(ncclGroupEnd(), "ncclGroupEnd (all_to_all_v)");
  }

  void all_gather(const void* src, std::size_t bytes, void* dst) {
    detail::nccl_check(ncclAllGather(src, dst, bytes, ncclChar, comm_.get(), stream_), "ncclAllGather");
  }

  void all_reduce_sum(float* data, std::size_t count) {
    detail::nccl_check(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_.get(), stream_), "ncclAllReduce");
  }
  void all_reduce_sum(double* data, std::size_t count) {
    detail::nccl_check(ncclAllReduce(data, data, count, ncclFloat64, ncclSum, comm_.get(), stream_), "ncclAllReduce");
  }

  void barrier() {
    // An all-reduce of one value on the stream, then wait for it: every rank has reached this point.
    if (!scratch_) {
      float* p = nullptr;
      detail::cuda_check_comm(cudaMalloc(&p, sizeof(float)), "cudaMalloc");
      scratch_ = std::shared_ptr<float>(p, [](float* q) { cudaFree(q); });
    }
    detail::nccl_check(ncclAllReduce(scratch_.get(), scratch_.get(), 1, ncclFloat32, ncclSum, comm_.get(), stream_),
                       "ncclAllReduce (barrier)");
    detail::cuda_check_comm(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (barrier)");
  }

 private:
  std::shared_ptr<ncclComm> comm_;
  cudaStream_t stream_;
  int rank_ = 0, size_ = 1;
  std::shared_ptr<float> scratch_;
};

}  // namespace moe
