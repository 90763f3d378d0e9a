// examples/trainer/train_cuda.hpp — moe-train on the CUDA space (one GPU, float32), declared here and
// defined in moe_train_cuda.cu, which nvcc compiles when the build has CUDA (MOE_TRAIN_CUDA).
#pragma once

#include "cli.hpp"

namespace trainer {

// Exit code of `moe-train --device cuda` when the CUDA runtime finds no usable device.
inline constexpr int exit_no_device = 4;

#if defined(MOE_TRAIN_CUDA)
// Trains o.kind on the current CUDA device; returns the process exit code (exit_no_device when no
// device is usable).
int train_cuda(const options& o);
#endif

}  // namespace trainer
