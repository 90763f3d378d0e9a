// moe/cuda.cuh — the public entry of the CUDA execution space (needs nvcc, with
// --extended-lambda --expt-relaxed-constexpr).
//
//   #include <moe/cuda.cuh>
//   moe::cuda space(stream);
//   moe::presets::glam<moe::bfloat16, moe::cuda>::layer layer(cfg, space);
//
// Everything in <moe/moe.hpp>, plus moe::cuda (moe/cuda/space.cuh). The policies are the same
// single-source code the host runs; see docs/cuda.md for streams, workspaces, graph capture,
// determinism and where non-finite router logits are reported.
#pragma once

#if !defined(__CUDACC__) && !defined(MOE_CUDA_EMULATION)  // (the emulator of tests/emu: see launch.cuh)
#error "<moe/cuda.cuh> must be compiled by nvcc (as CUDA); CPU-only code includes <moe/moe.hpp>"
#endif

#include "moe/moe.hpp"
#include "moe/cuda/space.cuh"
#include "moe/cuda/gating.cuh"  // the warp-per-token gating kernel (a specialisation used by route.hpp)

static_assert(moe::execution_space<moe::cuda>, "moe::cuda must satisfy moe::execution_space");
