// Emulation shim (tests/emu): the cuBLAS calls of the CUDA space, computed on the host in the
// requested compute type (float or double, products summed in k order), queued on the handle's
// stream like the runtime's other work. Arguments are validated as cuBLAS does (leading dimensions,
// sizes, types).
#pragma once

#include <cstdint>
#include <memory>

#include "library_types.h"
#include "moe_emu/half_types.hpp"
#include "moe_emu/runtime.hpp"

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_ARCH_MISMATCH = 8,
  CUBLAS_STATUS_MAPPING_ERROR = 11,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14,
  CUBLAS_STATUS_NOT_SUPPORTED = 15
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_64F = 70 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0 };

struct cublasContext {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
};
using cublasHandle_t = cublasContext*;

inline cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t h) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void* w, std::size_t bytes) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes && !moe_emu::device_range(w, bytes)) return CUBLAS_STATUS_INVALID_VALUE;
  h->workspace = w;
  h->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t) {
  return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
inline const char* cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}
inline const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the requested functionality is not supported";
    default: return cublasGetStatusName(s);
  }
}

namespace moe_emu::blas {

inline double load(const void* p, cudaDataType_t t, std::int64_t i) {
  switch (t) {
    case CUDA_R_32F: return double(static_cast<const float*>(p)[i]);
    case CUDA_R_64F: return static_cast<const double*>(p)[i];
    case CUDA_R_16F: return double(float(static_cast<const __half*>(p)[i]));
    case CUDA_R_16BF: return double(float(static_cast<const __nv_bfloat16*>(p)[i]));
  }
  return 0;
}
// Round-to-nearest-even into the storage type (the library's conversions: same bits as cuBLAS's).
inline void store(void* p, cudaDataType_t t, std::int64_t i, double v) {
  const float f = float(v);
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = f; return;
    case CUDA_R_64F: static_cast<double*>(p)[i] = v; return;
    case CUDA_R_16BF: static_cast<__nv_bfloat16*>(p)[i] = __nv_bfloat16{moe::bfloat16(f).bits}; return;
    case CUDA_R_16F: static_cast<__half*>(p)[i] = __half{moe::float16(f).bits}; return;
  }
}
inline bool known(cudaDataType_t t) { return t == CUDA_R_32F || t == CUDA_R_64F || t == CUDA_R_16F || t == CUDA_R_16BF; }

struct gemm_args {
  cublasOperation_t ta, tb;
  int m, n, k;
  double alpha, beta;
  const void* a;
  cudaDataType_t at;
  int lda;
  const void* b;
  cudaDataType_t bt;
  int ldb;
  void* c;
  cudaDataType_t ct;
  int ldc;
  bool dbl;
};

// Column-major C = alpha · op(A) · op(B) + beta · C.
inline void run(const gemm_args& g) {
  for (int j = 0; j < g.n; ++j)
    for (int i = 0; i < g.m; ++i) {
      double s = 0;
      float sf = 0;
      for (int p = 0; p < g.k; ++p) {
        const double av = load(g.a, g.at, g.ta == CUBLAS_OP_N ? std::int64_t(p) * g.lda + i : std::int64_t(i) * g.lda + p);
        const double bv = load(g.b, g.bt, g.tb == CUBLAS_OP_N ? std::int64_t(j) * g.ldb + p : std::int64_t(p) * g.ldb + j);
        if (g.dbl)
          s += av * bv;
        else
          sf += float(av) * float(bv);
      }
      const std::int64_t ci = std::int64_t(j) * g.ldc + i;
      double v = g.dbl ? g.alpha * s : double(float(g.alpha) * sf);
      if (g.beta != 0) v = g.dbl ? v + g.beta * load(g.c, g.ct, ci) : double(float(v) + float(g.beta) * float(load(g.c, g.ct, ci)));
      store(g.c, g.ct, ci, v);
    }
}

inline cublasStatus_t validate(cublasHandle_t h, const gemm_args& g, cublasComputeType_t compute, int algo) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (g.m < 0 || g.n < 0 || g.k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (g.ta == CUBLAS_OP_C || g.tb == CUBLAS_OP_C) return CUBLAS_STATUS_NOT_SUPPORTED;
  const int a_rows = g.ta == CUBLAS_OP_N ? g.m : g.k, b_rows = g.tb == CUBLAS_OP_N ? g.k : g.n;
  if (g.lda < (a_rows > 1 ? a_rows : 1) || g.ldb < (b_rows > 1 ? b_rows : 1) || g.ldc < (g.m > 1 ? g.m : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!known(g.at) || !known(g.bt) || !known(g.ct) || g.at != g.bt) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (algo != CUBLAS_GEMM_DEFAULT) return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool half_in = g.at == CUDA_R_16F || g.at == CUDA_R_16BF;
  if (compute == CUBLAS_COMPUTE_64F) {
    if (g.at != CUDA_R_64F || g.ct != CUDA_R_64F) return CUBLAS_STATUS_NOT_SUPPORTED;
  } else if (compute == CUBLAS_COMPUTE_32F) {
    if (g.at == CUDA_R_64F || !(g.ct == g.at || (half_in && g.ct == CUDA_R_32F))) return CUBLAS_STATUS_NOT_SUPPORTED;
  } else {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return CUBLAS_STATUS_SUCCESS;
}

// The arguments of one call; alpha and beta are read at the call (host pointer mode).
inline gemm_args args(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void* alpha,
                      const void* a, cudaDataType_t at, int lda, const void* b, cudaDataType_t bt, int ldb,
                      const void* beta, void* c, cudaDataType_t ct, int ldc, cublasComputeType_t compute) {
  const bool dbl = compute == CUBLAS_COMPUTE_64F;
  const double al = dbl ? *static_cast<const double*>(alpha) : double(*static_cast<const float*>(alpha));
  const double be = dbl ? *static_cast<const double*>(beta) : double(*static_cast<const float*>(beta));
  return {ta, tb, m, n, k, al, be, a, at, lda, b, bt, ldb, c, ct, ldc, dbl};
}

}  // namespace moe_emu::blas

inline cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const void* alpha, const void* a, cudaDataType_t at, int lda, const void* b,
                                   cudaDataType_t bt, int ldb, const void* beta, void* c, cudaDataType_t ct, int ldc,
                                   cublasComputeType_t compute, cublasGemmAlgo_t algo) {
  const moe_emu::blas::gemm_args g =
      moe_emu::blas::args(ta, tb, m, n, k, alpha, a, at, lda, b, bt, ldb, beta, c, ct, ldc, compute);
  if (const cublasStatus_t s = moe_emu::blas::validate(h, g, compute, algo)) return s;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  moe_emu::enqueue(h->stream, [g] { moe_emu::blas::run(g); });
  return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                                 int n, int k, const void* alpha, const void* a, cudaDataType_t at,
                                                 int lda, long long sa, const void* b, cudaDataType_t bt, int ldb,
                                                 long long sb, const void* beta, void* c, cudaDataType_t ct, int ldc,
                                                 long long sc, int batch, cublasComputeType_t compute,
                                                 cublasGemmAlgo_t algo) {
  const moe_emu::blas::gemm_args g =
      moe_emu::blas::args(ta, tb, m, n, k, alpha, a, at, lda, b, bt, ldb, beta, c, ct, ldc, compute);
  if (const cublasStatus_t s = moe_emu::blas::validate(h, g, compute, algo)) return s;
  if (batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  const auto size_of = [](cudaDataType_t t) { return t == CUDA_R_64F ? 8 : t == CUDA_R_32F ? 4 : 2; };
  moe_emu::enqueue(h->stream, [g, sa, sb, sc, batch, size_of] {
    for (int i = 0; i < batch; ++i) {
      moe_emu::blas::gemm_args e = g;
      e.a = static_cast<const char*>(g.a) + sa * i * size_of(g.at);
      e.b = static_cast<const char*>(g.b) + sb * i * size_of(g.bt);
      e.c = static_cast<char*>(g.c) + sc * i * size_of(g.ct);
      moe_emu::blas::run(e);
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}
