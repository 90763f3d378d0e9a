// moe/cuda/blas.cuh — row-major GEMM through cuBLAS (column-major), and which types it takes.
//
// Row-major C[m, n] = op(A) · op(B) is column-major Cᵀ[n, m] = op(B)ᵀ · op(A)ᵀ, and a row-major
// matrix read column-major is its transpose, so the call is gemm(op_b, op_a, n, m, k, B, A, C) with
// the same leading dimensions and the same op flags.
//
// Precision: float uses CUBLAS_COMPUTE_32F, which never uses TF32 (that needs _FAST_TF32 or the
// TF32 math mode, neither of which this space sets), so float matches the host within 1e-5;
// bf16/fp16 storage computes in float32 (CUBLAS_COMPUTE_32F) with bf16/fp16 or float output;
// double uses CUBLAS_COMPUTE_64F. cuBLAS gives the same bits run to run on one GPU model with a
// fixed workspace (which the space sets), so this stays deterministic.
#pragma once

#include <cublas_v2.h>
#include <library_types.h>

#include <type_traits>

#include "moe/core/numeric.hpp"
#include "moe/core/op.hpp"
#include "moe/cuda/error.cuh"

namespace moe::cuda_detail {

template <class T>
constexpr cudaDataType_t blas_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  else if constexpr (std::is_same_v<T, bfloat16>) return CUDA_R_16BF;
  else return CUDA_R_16F;
}

// cublasGemmEx takes A and B of one type, and C of that type or (16-bit inputs) float.
template <class TA, class TB, class TC>
inline constexpr bool blas_supported =
    std::is_same_v<TA, TB> && (std::is_same_v<TA, TC> || (is_half_v<TA> && std::is_same_v<TC, float>));

inline cublasOperation_t blas_op(op o) { return o == op::none ? CUBLAS_OP_N : CUBLAS_OP_T; }

template <class TA, class TB, class TC>
void blas_gemm(cublasHandle_t handle, op opa, op opb, index_t m, index_t n, index_t k, acc_t<TC> alpha, const TA* a,
               index_t lda, const TB* b, index_t ldb, acc_t<TC> beta, TC* c, index_t ldc) {
  static_assert(blas_supported<TA, TB, TC>);
  constexpr bool dbl = std::is_same_v<TC, double>;
  // cuBLAS takes int sizes; the space checks the range before calling.
  check_blas(cublasGemmEx(handle, blas_op(opb), blas_op(opa), int(n), int(m), int(k), &alpha, b, blas_type<TB>(),
                          int(ldb), a, blas_type<TA>(), int(lda), &beta, c, blas_type<TC>(), int(ldc),
                          dbl ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx");
}

// Strided-batched form (the padded dispatcher's experts): the same transposition as blas_gemm, one
// call for every batch entry. Strides are in elements.
template <class TA, class TB, class TC>
void blas_gemm_strided_batched(cublasHandle_t handle, op opa, op opb, int batch, index_t m, index_t n, index_t k,
                               acc_t<TC> alpha, const TA* a, index_t lda, index_t a_stride, const TB* b, index_t ldb,
                               index_t b_stride, acc_t<TC> beta, TC* c, index_t ldc, index_t c_stride) {
  static_assert(blas_supported<TA, TB, TC>);
  constexpr bool dbl = std::is_same_v<TC, double>;
  check_blas(cublasGemmStridedBatchedEx(handle, blas_op(opb), blas_op(opa), int(n), int(m), int(k), &alpha, b,
                                        blas_type<TB>(), int(ldb), static_cast<long long>(b_stride), a,
                                        blas_type<TA>(), int(lda), static_cast<long long>(a_stride), &beta, c,
                                        blas_type<TC>(), int(ldc), static_cast<long long>(c_stride), batch,
                                        dbl ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmStridedBatchedEx");
}

}  // namespace moe::cuda_detail
