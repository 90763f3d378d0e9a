// moe/core/config.hpp — compiler switches shared by every header.
//
// Policies are written once as MOE_HOST_DEVICE functions: under nvcc they compile for the host and
// the device, under a plain C++ compiler they are ordinary inline functions. Lambdas handed to an
// execution space's parallel_for are marked MOE_LAMBDA (nvcc's extended lambdas need the
// annotation; plain C++ must not see it).
#pragma once

#include <cstddef>
#include <cstdint>

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0

// MOE_ALWAYS_INLINE: MOE_HOST_DEVICE for small numeric functions called per element inside loops
// that must vectorise (moe/core/math.hpp, the activations). g++'s inliner weighs a whole
// translation unit and may leave such a function a call per element: a GLaM training step ran
// 1.3x slower when moe::logistic<float> stopped being inlined after unrelated code was added.
#if defined(__CUDACC__)
#define MOE_ALWAYS_INLINE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define MOE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MOE_ALWAYS_INLINE inline
#endif

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__ inline
#define MOE_LAMBDA __host__ __device__
#define MOE_DEVICE_COMPILE 1
#else
#define MOE_HOST_DEVICE inline
#define MOE_LAMBDA
#define MOE_DEVICE_COMPILE 0
#endif

#if defined(__CUDA_ARCH__)
#define MOE_ON_DEVICE 1
#else
#define MOE_ON_DEVICE 0
#endif

namespace moe {

// Sizes and offsets. Token and expert ids are `int` (compact on the device); products of
// dimensions (T·d, T·E·C) use index_t.
using index_t = std::int64_t;

}  // namespace moe
