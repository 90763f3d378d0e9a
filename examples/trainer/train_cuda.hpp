// examples/trainer/train_cuda.hpp — the entry points of moe-train's translation units: 16-bit MoE
// layers on the host (moe_train_lowp.cpp) and the CUDA space (moe_train_cuda.cu and
// moe_train_cuda_lowp.cu, which nvcc compiles when the build has CUDA: MOE_TRAIN_CUDA, into the
// module libmoe-train-cuda.so that moe-train loads for --device cuda).
#pragma once

#include <cstddef>

#include "cli.hpp"

namespace trainer {

// Exit code of `moe-train --device cuda` when the CUDA runtime finds no usable device.
inline constexpr int exit_no_device = 4;

// Trains o.kind on the host with --precision bf16 or fp16.
int train_host_low_precision(const options& o);

#if defined(MOE_TRAIN_CUDA)
// Trains o.kind on the current CUDA device; returns the process exit code (exit_no_device when no
// device is usable). Defined in moe_train_cuda.cu; moe-train's own definition
// (moe_train_cuda_loader.cpp) loads that code as a module and calls the module's entry.
int train_cuda(const options& o);

// The CUDA module's one exported function (moe_train_cuda_module.cpp): train_cuda(*o), with an
// exception turned into the exit status and a line on stderr (exit_status_of). options_size is
// sizeof(options) where the caller was compiled: a module built from other sources refuses to run.
using cuda_module_entry = int (*)(const options* o, std::size_t options_size);
inline constexpr const char* cuda_module_entry_name = "moe_train_cuda_module_entry";
#endif

}  // namespace trainer
