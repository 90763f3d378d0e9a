// moe/host/blas.hpp — row-major GEMM on the host.
//
// float and double go to a CBLAS (OpenBLAS when the build found one: MOE_HAVE_CBLAS). The 16-bit
// storage types are widened to float (every product of two 16-bit values is exact in float), given
// to sgemm, and the result rounded back: float accumulation, as on the GPU. Without a CBLAS a
// portable kernel does the same work, accumulating in float (double for double).
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/numeric.hpp"
#include "moe/core/op.hpp"
#include "moe/host/thread_pool.hpp"

#if defined(MOE_HAVE_CBLAS)
#include <cblas.h>
#endif

namespace moe {

namespace detail {

// C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C, all row-major; the portable kernel.
// Rows of C are split over the pool; each C element is accumulated in a fixed order (k ascending
// within 256-wide blocks, blocks ascending), so the result does not depend on the thread count.
template <class TA, class TB, class TC>
void gemm_portable(thread_pool* pool, op opa, op opb, index_t m, index_t n, index_t k, acc_t<TC> alpha,
                   const TA* a, index_t lda, const TB* b, index_t ldb, acc_t<TC> beta, TC* c, index_t ldc) {
  using acc = std::conditional_t<std::is_same_v<TA, double> || std::is_same_v<TB, double> ||
                                     std::is_same_v<TC, double>,
                                 double, float>;
  constexpr index_t kb = 256;  // depth block: a column panel of B stays in cache
  auto rows = [&](index_t r0, index_t r1) {
    std::vector<acc> arow(static_cast<std::size_t>(kb));
    std::vector<acc> crow(static_cast<std::size_t>(n));
    for (index_t i = r0; i < r1; ++i) {
      std::fill(crow.begin(), crow.end(), acc(0));
      for (index_t p0 = 0; p0 < k; p0 += kb) {
        const index_t pk = std::min(kb, k - p0);
        for (index_t p = 0; p < pk; ++p)
          arow[p] = convert<acc>(opa == op::none ? a[i * lda + p0 + p] : a[(p0 + p) * lda + i]);
        for (index_t p = 0; p < pk; ++p) {
          const acc av = arow[p];
          if (av == acc(0)) continue;
          if (opb == op::none) {
            const TB* brow = b + (p0 + p) * ldb;
            for (index_t j = 0; j < n; ++j) crow[j] += av * convert<acc>(brow[j]);
          } else {
            for (index_t j = 0; j < n; ++j) crow[j] += av * convert<acc>(b[j * ldb + p0 + p]);
          }
        }
      }
      for (index_t j = 0; j < n; ++j) {
        const acc prior = beta == acc_t<TC>(0) ? acc(0) : acc(beta) * convert<acc>(c[i * ldc + j]);
        c[i * ldc + j] = convert<TC>(acc(alpha) * crow[j] + prior);
      }
    }
  };
  if (pool && m * n * k > (index_t(1) << 15))
    pool->run_chunks(m, rows);
  else
    rows(0, m);
}

}  // namespace detail

// C = alpha · op(A) · op(B) + beta · C (row-major; lda, ldb, ldc are row strides of the stored
// matrices). beta == 0 overwrites C without reading it, so C may hold garbage (even NaN).
template <class TA, class TB, class TC>
void host_gemm(detail::thread_pool* pool, op opa, op opb, index_t m, index_t n, index_t k, acc_t<TC> alpha,
               const TA* a, index_t lda, const TB* b, index_t ldb, acc_t<TC> beta, TC* c, index_t ldc) {
  if (m < 0 || n < 0 || k < 0) fail("gemm", "negative size m=", m, " n=", n, " k=", k);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // Through convert: TC(0) is ambiguous for the 16-bit types (no constructor from int).
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j)
        c[i * ldc + j] = convert<TC>(beta == acc_t<TC>(0) ? acc_t<TC>(0) : beta * widen(c[i * ldc + j]));
    return;
  }
#if defined(MOE_HAVE_CBLAS)
  constexpr index_t int_max = 2147483647;
  require(m <= int_max && n <= int_max && k <= int_max && lda <= int_max && ldb <= int_max && ldc <= int_max,
          "gemm", "m=", m, " n=", n, " k=", k, " lda=", lda, " ldb=", ldb, " ldc=", ldc,
          ": a size exceeds the 32-bit CBLAS interface; split the product");
  constexpr bool all_float = std::is_same_v<TA, float> && std::is_same_v<TB, float> && std::is_same_v<TC, float>;
  constexpr bool all_double =
      std::is_same_v<TA, double> && std::is_same_v<TB, double> && std::is_same_v<TC, double>;
  if constexpr (all_float || all_double) {
    const auto ta = opa == op::none ? CblasNoTrans : CblasTrans;
    const auto tb = opb == op::none ? CblasNoTrans : CblasTrans;
    if constexpr (all_float)
      cblas_sgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
    else
      cblas_dgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
    return;
  } else if constexpr (!std::is_same_v<acc_t<TA>, double> && !std::is_same_v<acc_t<TB>, double> &&
                       !std::is_same_v<acc_t<TC>, double>) {
    // Widen to float, multiply with sgemm, round back. Host-only scratch, reused per thread.
    thread_local std::vector<float> wa, wb, wc;
    const index_t a_rows = opa == op::none ? m : k, b_rows = opb == op::none ? k : n;
    const index_t a_cols = opa == op::none ? k : m, b_cols = opb == op::none ? n : k;
    wa.resize(std::size_t(a_rows * a_cols));
    wb.resize(std::size_t(b_rows * b_cols));
    wc.resize(std::size_t(m * n));
    for (index_t i = 0; i < a_rows; ++i)
      for (index_t j = 0; j < a_cols; ++j) wa[std::size_t(i * a_cols + j)] = convert<float>(a[i * lda + j]);
    for (index_t i = 0; i < b_rows; ++i)
      for (index_t j = 0; j < b_cols; ++j) wb[std::size_t(i * b_cols + j)] = convert<float>(b[i * ldb + j]);
    if (beta != acc_t<TC>(0))
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < n; ++j) wc[std::size_t(i * n + j)] = convert<float>(c[i * ldc + j]);
    cblas_sgemm(CblasRowMajor, opa == op::none ? CblasNoTrans : CblasTrans,
                opb == op::none ? CblasNoTrans : CblasTrans, int(m), int(n), int(k), float(alpha), wa.data(),
                int(a_cols), wb.data(), int(b_cols), float(beta), wc.data(), int(n));
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j) c[i * ldc + j] = convert<TC>(wc[std::size_t(i * n + j)]);
    return;
  }
#endif
  detail::gemm_portable(pool, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace moe
