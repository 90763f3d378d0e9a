// examples/trainer/run_cuda_ranks.hpp — moe-train --device cuda --ranks R: one rank per GPU, a thread
// each, NCCL between them (nvcc, with NCCL: moe_train_cuda_ranks.cu and moe_train_cuda_ranks_lowp.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <thread>
#include <vector>

#include <moe/parallel/nccl.cuh>

#include "run_cuda.hpp"

namespace trainer {

// Trains Preset on comms.size() GPUs, rank r on GPU r and streams[r]: the MoE layers expert-parallel
// over NCCL (each rank holds E/R experts and exchanges tokens all-to-all), the rest data-parallel.
template <class Preset, class DenseFFN>
int run_ranks(const options& o, const std::vector<moe::nccl_communicator>& comms,
              const std::vector<cudaStream_t>& streams) {
  using parallel_layer = typename Preset::template parallel_layer<moe::nccl_communicator>;
  using model_t = model<float, moe::cuda, Preset, DenseFFN, parallel_layer>;
  std::vector<std::thread> threads;
  for (int r = 0; r < o.ranks; ++r)
    threads.emplace_back([&, r] {
      try {
        moe::cuda_detail::check(cudaSetDevice(r), "cudaSetDevice");
        const moe::cuda space(streams[std::size_t(r)], space_options(o));
        moe::nccl_communicator comm = comms[std::size_t(r)];
        rank_context<moe::nccl_communicator, moe::cuda> rc{r, o.ranks, &comm, &space};
        typename model_t::moe_factory make = [&comm, space](const typename parallel_layer::config& c) {
          return std::make_unique<parallel_layer>(c, comm, space);
        };
        run_rank<model_t>(o, space, rc, make);
        space.synchronize();
      } catch (const std::exception& e) {
        // The other ranks may be waiting in an NCCL collective for this one, which nothing here can
        // interrupt: end the process, naming the cause, rather than hang.
        std::fprintf(stderr, "moe-train: rank %d stopped: %s\n", r, e.what());
        std::fflush(stderr);
        std::_Exit(1);
      }
    });
  for (auto& t : threads) t.join();
  return 0;
}

// --precision bf16 or fp16 on several GPUs (moe_train_cuda_ranks_lowp.cu).
int train_cuda_ranks_low_precision(const options& o, const std::vector<moe::nccl_communicator>& comms,
                                   const std::vector<cudaStream_t>& streams);

}  // namespace trainer
