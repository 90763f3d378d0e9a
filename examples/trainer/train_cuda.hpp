// examples/trainer/train_cuda.hpp — the entry points of moe-train's translation units: 16-bit MoE
// layers on the host (moe_train_lowp.cpp) and the CUDA space (moe_train_cuda.cu and
// moe_train_cuda_lowp.cu, which nvcc compiles when the build has CUDA: MOE_TRAIN_CUDA).
#pragma once

#include "cli.hpp"

namespace trainer {

// Exit code of `moe-train --device cuda` when the CUDA runtime finds no usable device.
inline constexpr int exit_no_device = 4;

// Trains o.kind on the host with --precision bf16 or fp16.
int train_host_low_precision(const options& o);

#if defined(MOE_TRAIN_CUDA)
// Trains o.kind on the current CUDA device; returns the process exit code (exit_no_device when no
// device is usable).
int train_cuda(const options& o);
#endif

}  // namespace trainer
