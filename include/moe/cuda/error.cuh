// moe/cuda/error.cuh — CUDA runtime and cuBLAS status codes as moe::error exceptions.
//
// Every launch and every runtime call of the CUDA space goes through one of these checks, so a
// failure surfaces at the call that caused it (launch configuration errors) or at the next checked
// call (asynchronous faults), as a host exception that names the kernel or API, e.g.
//   "cuda: parallel_for kernel (n=1024): an illegal memory access was encountered (cudaErrorIllegalAddress)".
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "moe/core/error.hpp"

namespace moe {

// A CUDA runtime or cuBLAS call failed.
class cuda_error : public error {
 public:
  using error::error;
};

namespace cuda_detail {

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw cuda_error(detail::concat("cuda: ", what, ": ", cudaGetErrorString(status), " (", cudaGetErrorName(status),
                                    ")"));
}
template <class... Parts>
void check(cudaError_t status, const char* what, Parts&&... detail_parts) {
  if (status != cudaSuccess)
    throw cuda_error(detail::concat("cuda: ", what, " ", std::forward<Parts>(detail_parts)..., ": ",
                                    cudaGetErrorString(status), " (", cudaGetErrorName(status), ")"));
}

// After a kernel launch (MOE_CUDA_LAUNCH): launch-configuration errors and earlier asynchronous faults.
template <class... Parts>
void check_launch(const char* kernel, Parts&&... detail_parts) {
  check(cudaGetLastError(), kernel, std::forward<Parts>(detail_parts)...);
}

inline void check_blas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw cuda_error(detail::concat("cuda: ", what, ": ", cublasGetStatusString(status), " (",
                                    cublasGetStatusName(status), ")"));
}

}  // namespace cuda_detail
}  // namespace moe
