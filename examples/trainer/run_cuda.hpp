// examples/trainer/run_cuda.hpp — what the CUDA translation units of moe-train share (nvcc only).
#pragma once

#include <moe/cuda.cuh>

#include "run.hpp"
#include "train_cuda.hpp"

namespace trainer {

// The space's settings from the flags: --grouped-gemm.
inline moe::cuda_options space_options(const options& o) {
  return {.grouped_gemm = o.grouped_gemm == "cublas" ? moe::cuda_grouped_gemm::cublas_per_group
                                                     : moe::cuda_grouped_gemm::device_offsets};
}

template <class Preset, class DenseFFN>
int run_on(const options& o, const moe::cuda& space) {
  return run_rank<model<float, moe::cuda, Preset, DenseFFN>>(o, space, rank_context<moe::in_process_communicator, moe::cuda>{});
}

// --precision bf16 or fp16 on the device (moe_train_cuda_lowp.cu).
int train_cuda_low_precision(const options& o, const moe::cuda& space);

#if defined(MOE_TRAIN_NCCL)
// --ranks R > 1: R GPUs, NCCL (moe_train_cuda_ranks.cu); `devices` is the number visible.
int train_cuda_ranks(const options& o, int devices);
#endif

}  // namespace trainer
