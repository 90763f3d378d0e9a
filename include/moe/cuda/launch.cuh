// moe/cuda/launch.cuh — how the CUDA space launches its kernels.
//
//   MOE_CUDA_LAUNCH(grid, block, stream, kernel<Args...>)(parameters...);
//
// is kernel<Args...><<<grid, block, 0, stream>>>(parameters...) under nvcc. The macro exists so that
// the space also compiles with a plain C++ compiler against the host kernel emulator of the tests
// (tests/emu: every CUDA thread a fiber; MOE_CUDA_EMULATION), which runs the GPU tests where there is
// no GPU; a plain C++ compiler cannot parse <<<...>>>. The kernel comes last because its template
// arguments may contain commas.
#pragma once

#include <cuda_runtime.h>

#if defined(MOE_CUDA_EMULATION)
#define MOE_CUDA_LAUNCH(grid, block, stream, ...) ::moe_emu::launch(#__VA_ARGS__, (grid), (block), (stream), __VA_ARGS__)
#else
#define MOE_CUDA_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#endif
