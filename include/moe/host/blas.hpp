// moe/host/blas.hpp — row-major GEMM on the host.
//
// float and double go to a CBLAS (OpenBLAS when the build found one: MOE_HAVE_CBLAS). The 16-bit
// storage types are widened to float (every product of two 16-bit values is exact in float), given
// to sgemm, and the result rounded back: float accumulation, as on the GPU. Without a CBLAS a
// portable kernel does the same work, accumulating in float (double for double).
//
// The host space's pool is the only parallelism. A CBLAS product is cut into tiles of C by its
// shape alone and each tile is one single-threaded BLAS call, run by the pool. Why: a BLAS's value
// for an element depends on how the product was split (OpenBLAS picks its micro-kernel by the
// element's place in the block it is handed, and splits by its own thread count, which defaults to
// the machine's cores). Fixed tiles make results independent of moe::host's thread count and of
// the machine's core count, and a single-threaded BLAS does not spin threads of its own beside the
// pool's (with OpenBLAS's default, a one-thread trainer spent a third of its CPU time in
// sched_yield). With OpenBLAS (MOE_HAVE_OPENBLAS) the first GEMM sets openblas_set_num_threads(1)
// (see blas_single_threaded for OpenBLAS's OpenMP build); with another CBLAS set its threads to 1
// yourself (MKL_NUM_THREADS=1, ...).
#pragma once

#include <algorithm>
#include <atomic>
#include <mutex>
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
#if defined(MOE_HAVE_OPENBLAS)
#include <dlfcn.h>
#endif

namespace moe {

namespace detail {

// Multiply-adds up to which a product is one call on one thread (with a CBLAS: one tile; the
// portable kernel splits rows from 2^15 on). host_grouped_gemm runs such products side by side.
constexpr index_t gemm_one_call_work = index_t(1) << 18;

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

#if defined(MOE_HAVE_CBLAS)
// The tiles of C that a CBLAS product is computed in: a function of the shape only (see the top of
// the file). Tiles of at most 256 × 256 spend a few per cent of their time packing their panels; a
// product with fewer than 8 of them and enough work has its tile count doubled along the longer
// tile side (tiles down to 32) so that several threads have something to do. The tiles of a
// product are equal but for the last one, shorter by less than the tile count: the pool hands each
// thread a run of tiles, and tiles of 256 and 128 columns (as 384 = 256 + 128 used to be cut)
// kept one thread busy twice as long as the other.
struct gemm_tiling {
  index_t tile_m, tile_n, count_m, count_n;
  index_t count() const { return count_m * count_n; }
};

inline gemm_tiling host_gemm_tiling(index_t m, index_t n, index_t k) {
  constexpr index_t max_tile = 256, min_tile = 32;
  constexpr index_t min_tile_work = index_t(1) << 21;  // a split tile keeps at least this much
  if (m * n * k <= gemm_one_call_work) return {m, n, 1, 1};
  const auto ceil_div = [](index_t a, index_t b) { return (a + b - 1) / b; };
  index_t cm = ceil_div(m, max_tile), cn = ceil_div(n, max_tile);
  for (;;) {
    const index_t tm = ceil_div(m, cm), tn = ceil_div(n, cn);
    if (cm * cn >= 8 || (tm * tn / 2) * k < min_tile_work) break;
    if (tm >= 2 * min_tile && (tm >= tn || tn < 2 * min_tile))
      cm *= 2;
    else if (tn >= 2 * min_tile)
      cn *= 2;
    else
      break;
  }
  const index_t tm = ceil_div(m, cm), tn = ceil_div(n, cn);
  return {tm, tn, ceil_div(m, tm), ceil_div(n, tn)};
}

#if defined(MOE_HAVE_OPENBLAS)
// Makes the calling thread's OpenBLAS calls single-threaded; run by every thread that runs tiles.
// OpenBLAS built with pthreads has one process-wide count: checked before each product, since other
// code may change it. Built with OpenMP, each call follows its calling thread's OpenMP thread count
// (omp_get_max_threads), which openblas_set_num_threads sets for the calling thread: so it is set
// every time, and openmp_count_keeper puts the thread's count back after the tiles. The setter
// also reallocates OpenBLAS's buffers, hence the lock.
inline void blas_single_threaded() {
  static std::mutex setting;
  constexpr int openmp_build = 2;  // openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP
  if (openblas_get_parallel() == openmp_build || openblas_get_num_threads() != 1) {
    const std::lock_guard lock(setting);
    openblas_set_num_threads(1);
  }
}

// The calling thread's OpenMP thread count, put back when the scope ends. openblas_set_num_threads
// in OpenBLAS's OpenMP build sets it (omp_set_num_threads) along with OpenBLAS's own count, so a
// caller whose own OpenMP loops ran on N threads would find them on one after a host GEMM. The
// OpenMP runtime is found at run time (that build brings one; this header links none): without
// one, or with OpenBLAS's pthreads build, there is nothing to put back.
class openmp_count_keeper {
 public:
  openmp_count_keeper() {
    constexpr int openmp_build = 2;
    if (openblas_get_parallel() == openmp_build && runtime().get) saved_ = runtime().get();
  }
  ~openmp_count_keeper() {
    if (saved_ > 0) runtime().set(saved_);
  }
  openmp_count_keeper(const openmp_count_keeper&) = delete;
  openmp_count_keeper& operator=(const openmp_count_keeper&) = delete;

 private:
  struct functions {
    int (*get)() = nullptr;      // omp_get_max_threads
    void (*set)(int) = nullptr;  // omp_set_num_threads
  };
  static const functions& runtime() {
    static const functions f = [] {
      functions r;
      r.get = reinterpret_cast<int (*)()>(::dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
      r.set = reinterpret_cast<void (*)(int)>(::dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
      return r.get && r.set ? r : functions{};
    }();
    return f;
  }
  int saved_ = 0;
};
#else
inline void blas_single_threaded() {}
struct openmp_count_keeper {
  openmp_count_keeper() {}  // user-provided: a `keep` that does nothing is not an unused variable
};
#endif

template <class T>
void cblas_call(op opa, op opb, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b,
                index_t ldb, T beta, T* c, index_t ldc) {
  const auto ta = opa == op::none ? CblasNoTrans : CblasTrans;
  const auto tb = opb == op::none ? CblasNoTrans : CblasTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
  else
    cblas_dgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

// Tile i of a product tiled as t: one CBLAS call (the calling thread's BLAS set single-threaded).
template <class T>
void cblas_tile(const gemm_tiling& t, index_t i, op opa, op opb, index_t m, index_t n, index_t k, T alpha,
                const T* a, index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc) {
  const index_t i0 = (i / t.count_n) * t.tile_m, j0 = (i % t.count_n) * t.tile_n;
  const T* at = opa == op::none ? a + i0 * lda : a + i0;  // op(A)'s rows i0.. (columns of a stored Aᵀ)
  const T* bt = opb == op::none ? b + j0 : b + j0 * ldb;  // op(B)'s columns j0..
  cblas_call(opa, opb, std::min(t.tile_m, m - i0), std::min(t.tile_n, n - j0), k, alpha, at, lda, bt, ldb, beta,
             c + i0 * ldc + j0, ldc);
}

// C = alpha · op(A) · op(B) + beta · C through the CBLAS, tile by tile on the pool.
template <class T>
void cblas_tiled(thread_pool* pool, op opa, op opb, index_t m, index_t n, index_t k, T alpha, const T* a,
                 index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc) {
  const gemm_tiling t = host_gemm_tiling(m, n, k);
  auto tiles = [&](index_t first, index_t last) {
    const openmp_count_keeper keep;  // this thread's OpenMP count, which the next line may change
    blas_single_threaded();
    for (index_t i = first; i < last; ++i) cblas_tile(t, i, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  };
  if (pool && t.count() > 1)
    pool->run_chunks(t.count(), tiles);
  else
    tiles(0, t.count());
}

// The products of a grouped GEMM (operands(g) for g < groups, each with m, n, k > 0). A product
// too small to be cut into tiles (below 2^22 multiply-adds: an expert of 128 tokens at d_model 64,
// d_ff 256) is one call on one thread: in a loop of cblas_tiled calls the other threads waited
// through each. Such products run side by side instead, in one fork-join, the pool's threads taking
// the next one in turn (a counter); the others are cut into tiles as host_gemm cuts them, one
// fork-join each. Running every product's tiles in one fork-join was tried (a static split by
// multiply-adds, and a counter over all tiles): at E = 256 with Zipf-skewed loads, where the
// experts' weights (1 GiB) stream from memory, both ran 10-20 % slower than a fork-join per
// product, and at E = 8 or 64 the gain was within the noise (expert_gemm benchmark, 2026-11-25).
// Every product is computed by the calls host_gemm makes for it: the same bits.
template <class T, class Operands>
void cblas_grouped_tiled(thread_pool* pool, int groups, T alpha, T beta, const Operands& operands) {
  std::vector<int> single;  // products of one tile, in group order
  for (int g = 0; g < groups; ++g) {
    const auto o = operands(g);
    if (host_gemm_tiling(o.m, o.n, o.k).count() == 1) single.push_back(g);
  }
  const index_t singles = index_t(single.size());
  std::atomic<index_t> next{0};
  auto take_singles = [&](index_t, index_t) {
    const openmp_count_keeper keep;
    blas_single_threaded();
    for (index_t i = next.fetch_add(1, std::memory_order_relaxed); i < singles;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      const auto o = operands(single[std::size_t(i)]);
      cblas_call(o.opa, o.opb, o.m, o.n, o.k, alpha, o.a, o.lda, o.b, o.ldb, beta, o.c, o.ldc);
    }
  };
  const index_t parts = pool && singles > 1 ? std::min<index_t>(pool->size(), singles) : 1;
  if (parts > 1)
    pool->run_chunks(parts, take_singles);
  else
    take_singles(0, 1);
  std::size_t s = 0;
  for (int g = 0; g < groups; ++g) {
    if (s < single.size() && single[s] == g) {
      ++s;
      continue;
    }
    const auto o = operands(g);
    cblas_tiled(pool, o.opa, o.opb, o.m, o.n, o.k, alpha, o.a, o.lda, o.b, o.ldb, beta, o.c, o.ldc);
  }
}
#endif

// host_gemm's checks of a product's sizes, shared with the grouped products (whose tiles reach the
// CBLAS without passing through host_gemm).
inline void require_gemm_sizes(index_t m, index_t n, index_t k, [[maybe_unused]] index_t lda,
                               [[maybe_unused]] index_t ldb, [[maybe_unused]] index_t ldc) {
  if (m < 0 || n < 0 || k < 0) fail("gemm", "negative size m=", m, " n=", n, " k=", k);
#if defined(MOE_HAVE_CBLAS)
  constexpr index_t int_max = 2147483647;
  require(m <= int_max && n <= int_max && k <= int_max && lda <= int_max && ldb <= int_max && ldc <= int_max,
          "gemm", "m=", m, " n=", n, " k=", k, " lda=", lda, " ldb=", ldb, " ldc=", ldc,
          ": a size exceeds the 32-bit CBLAS interface; split the product");
#endif
}

// Operand types a CBLAS multiplies directly (the others are widened to float first).
template <class TA, class TB, class TC>
inline constexpr bool cblas_types =
    (std::is_same_v<TA, float> && std::is_same_v<TB, float> && std::is_same_v<TC, float>) ||
    (std::is_same_v<TA, double> && std::is_same_v<TB, double> && std::is_same_v<TC, double>);

}  // namespace detail

// C = alpha · op(A) · op(B) + beta · C (row-major; lda, ldb, ldc are row strides of the stored
// matrices). beta == 0 overwrites C without reading it, so C may hold garbage (even NaN).
template <class TA, class TB, class TC>
void host_gemm(detail::thread_pool* pool, op opa, op opb, index_t m, index_t n, index_t k, acc_t<TC> alpha,
               const TA* a, index_t lda, const TB* b, index_t ldb, acc_t<TC> beta, TC* c, index_t ldc) {
  detail::require_gemm_sizes(m, n, k, lda, ldb, ldc);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // Through convert: TC(0) is ambiguous for the 16-bit types (no constructor from int).
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j)
        c[i * ldc + j] = convert<TC>(beta == acc_t<TC>(0) ? acc_t<TC>(0) : beta * widen(c[i * ldc + j]));
    return;
  }
#if defined(MOE_HAVE_CBLAS)
  if constexpr (detail::cblas_types<TA, TB, TC>) {
    detail::cblas_tiled(pool, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
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
    detail::cblas_tiled(pool, opa, opb, m, n, k, float(alpha), wa.data(), a_cols, wb.data(), b_cols, float(beta),
                        wc.data(), n);
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j) c[i * ldc + j] = convert<TC>(wc[std::size_t(i * n + j)]);
    return;
  }
#endif
  detail::gemm_portable(pool, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// The operands of one product of a grouped GEMM: C = alpha · op(A) · op(B) + beta · C, [m, n].
template <class TA, class TB, class TC>
struct gemm_operands {
  op opa, opb;
  index_t m, n, k;
  const TA* a;
  index_t lda;
  const TB* b;
  index_t ldb;
  TC* c;
  index_t ldc;
};

// For g < groups, the product operands(g) (a gemm_operands<TA, TB, TC>), with the results host_gemm
// gives each of them. float and double through a CBLAS go to cblas_grouped_tiled (products too
// small to be tiled side by side, the others tiled one by one; products with k = 0, C = beta · C,
// or no rows or columns, through host_gemm first); the other types through host_gemm one by one,
// side by side when every product is one call.
template <class TA, class TB, class TC, class Operands>
void host_grouped_gemm(detail::thread_pool* pool, int groups, acc_t<TC> alpha, acc_t<TC> beta,
                       const Operands& operands) {
#if defined(MOE_HAVE_CBLAS)
  if constexpr (detail::cblas_types<TA, TB, TC>) {
    std::vector<int> tiled;  // the products with work, in group order
    tiled.reserve(std::size_t(groups > 0 ? groups : 0));
    for (int g = 0; g < groups; ++g) {
      const gemm_operands<TA, TB, TC> o = operands(g);
      detail::require_gemm_sizes(o.m, o.n, o.k, o.lda, o.ldb, o.ldc);
      if (o.m > 0 && o.n > 0 && o.k > 0)
        tiled.push_back(g);
      else
        host_gemm(pool, o.opa, o.opb, o.m, o.n, o.k, alpha, o.a, o.lda, o.b, o.ldb, beta, o.c, o.ldc);
    }
    detail::cblas_grouped_tiled(pool, int(tiled.size()), alpha, beta,
                                [&](int i) { return operands(tiled[std::size_t(i)]); });
    return;
  }
#endif
  // Products small enough to be one call each are spread over the pool by product (a product run
  // inside a pool thread is computed on that thread alone, with the same bits); larger ones split
  // themselves.
  bool all_small = true;
  for (int g = 0; g < groups && all_small; ++g) {
    const gemm_operands<TA, TB, TC> o = operands(g);
    all_small = o.m * o.n * o.k <= detail::gemm_one_call_work;
  }
  const auto run = [&](index_t first, index_t last) {
    for (index_t g = first; g < last; ++g) {
      const gemm_operands<TA, TB, TC> o = operands(int(g));
      host_gemm(pool, o.opa, o.opb, o.m, o.n, o.k, alpha, o.a, o.lda, o.b, o.ldb, beta, o.c, o.ldc);
    }
  };
  if (pool && groups > 1 && all_small)
    pool->run_chunks(groups, run);
  else
    run(0, groups);
}

}  // namespace moe
