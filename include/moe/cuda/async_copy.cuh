// moe/cuda/async_copy.cuh — copies from global to shared memory that bypass the registers (cp.async,
// sm_80 and later), so a kernel can stage its next panel while it computes on the current one.
//
//   async_copy_16(smem, gmem, bytes)   16 bytes into shared memory: `bytes` (16 or 0) read from gmem,
//                                      the rest zero-filled; both addresses 16-byte aligned
//   async_copy_commit()                the thread's copies issued since the last commit form a group
//   async_copy_wait<N>()               waits until at most the N newest groups are pending
//
// A copy is visible to the thread that issued it after its wait, and to the block after a
// __syncthreads that follows the wait. Before sm_80 (and in nvcc's host pass) the copy is an ordinary
// 16-byte load and store, so the same code is correct there. On the kernel emulator (tests/emu) a
// copy lands only when its thread waits for it, so reading a stage too early reads stale data there
// too.
#pragma once

#include <cuda_runtime.h>

#if defined(MOE_CUDA_EMULATION)
#include <source_location>
#endif

namespace moe::cuda_detail {

#if defined(MOE_CUDA_EMULATION)
inline void async_copy_16(void* smem, const void* gmem, int bytes,
                          std::source_location loc = std::source_location::current()) {
  ::moe_emu::async_copy_16(smem, gmem, bytes, loc);
}
inline void async_copy_commit() { ::moe_emu::async_commit(); }
template <int N>
void async_copy_wait() {
  ::moe_emu::async_wait(N);
}
#else
__device__ __forceinline__ void async_copy_16(void* smem, const void* gmem, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes) : "memory");
#else
  uint4 v = make_uint4(0, 0, 0, 0);
  if (bytes == 16) v = *static_cast<const uint4*>(gmem);
  *static_cast<uint4*>(smem) = v;
#endif
}
__device__ __forceinline__ void async_copy_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void async_copy_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
#endif

}  // namespace moe::cuda_detail
