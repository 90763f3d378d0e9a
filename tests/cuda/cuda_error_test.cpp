// The host side of moe::cuda's error reporting (moe/cuda/error.cuh): a failed runtime or cuBLAS
// call becomes a moe::cuda_error (a moe::error) naming the kernel or API. Needs the CUDA headers and
// runtime library, not a GPU (cudaGetErrorString works without a driver).
#include <doctest/doctest.h>

#include <string>

#include <moe/cuda/error.cuh>

TEST_CASE("CUDA errors name the call that failed") {
  CHECK_NOTHROW(moe::cuda_detail::check(cudaSuccess, "cudaMemsetAsync"));
  CHECK_THROWS_WITH_AS(moe::cuda_detail::check(cudaErrorInvalidValue, "grouped_gemm_kernel", "(groups=", 8, ")"),
                       "cuda: grouped_gemm_kernel (groups=8): invalid argument (cudaErrorInvalidValue)",
                       moe::cuda_error);
  CHECK_THROWS_AS(moe::cuda_detail::check(cudaErrorMemoryAllocation, "cudaMalloc"), moe::error);
  CHECK_THROWS_WITH_AS(moe::cuda_detail::check_blas(CUBLAS_STATUS_NOT_INITIALIZED, "cublasGemmEx"),
                       doctest::Contains("cuda: cublasGemmEx: "), moe::cuda_error);
  CHECK_NOTHROW(moe::cuda_detail::check_blas(CUBLAS_STATUS_SUCCESS, "cublasGemmEx"));
}
