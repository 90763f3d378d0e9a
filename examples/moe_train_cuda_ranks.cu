// moe-train --device cuda --ranks R: one GPU per rank, one thread per GPU in this process, NCCL
// between them (moe::nccl_communicator::init_all). The MoE layers are expert-parallel
// (moe::expert_parallel over NCCL: each rank holds E/R experts and exchanges tokens all-to-all), the
// rest data-parallel (dense gradients all-reduced). float32 here, 16-bit MoE layers in
// moe_train_cuda_ranks_lowp.cu (which compiles in parallel). Built where NCCL is found.
//
// Not yet run on real GPUs (the machines this was developed on have at most one); tested on the
// host kernel emulator's GPUs and NCCL (tests/emu, tests/trainer/cuda_test.sh).
#include <cuda_runtime_api.h>

#include <cstdio>
#include <numeric>
#include <vector>

#include "trainer/run_cuda_ranks.hpp"

namespace trainer {

int train_cuda_ranks(const options& o, int devices) {
  if (devices < o.ranks) {
    std::fprintf(stderr, "moe-train: --ranks %d: needs %d GPUs (one per rank), %d visible\n", o.ranks, o.ranks,
                 devices);
    return 2;
  }
  std::vector<int> ids(static_cast<std::size_t>(o.ranks));
  std::iota(ids.begin(), ids.end(), 0);
  std::vector<cudaStream_t> streams(ids.size(), nullptr);
  struct stream_guard {
    std::vector<cudaStream_t>& s;
    ~stream_guard() {
      for (std::size_t r = 0; r < s.size(); ++r)
        if (s[r]) cudaSetDevice(int(r)), cudaStreamDestroy(s[r]);
    }
  } guard{streams};
  for (int r = 0; r < o.ranks; ++r) {
    moe::cuda_detail::check(cudaSetDevice(r), "cudaSetDevice");
    moe::cuda_detail::check(cudaStreamCreateWithFlags(&streams[std::size_t(r)], cudaStreamNonBlocking),
                            "cudaStreamCreate");
  }
  const std::vector<moe::nccl_communicator> comms = moe::nccl_communicator::init_all(ids, streams);
  if (o.precision != "fp32") return train_cuda_ranks_low_precision(o, comms, streams);  // moe_train_cuda_ranks_lowp.cu
  return with_preset<float, moe::cuda>(
      o.kind, [&]<class Preset, class DenseFFN>() { return run_ranks<Preset, DenseFFN>(o, comms, streams); });
}

}  // namespace trainer
