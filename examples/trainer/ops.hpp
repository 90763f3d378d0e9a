// examples/trainer/ops.hpp — the transformer's building blocks, forward and backward, written once
// against an execution space's primitives (parallel_for and gemm), like the library's policies.
//
// Shapes: N = B·S tokens (row-major [N, d]); attention heads H of width dh = d / H; V vocabulary.
// Every reduction runs in a fixed order inside one index of a parallel_for, so results are the
// same bits at any thread count (checkpoint/resume equality relies on it).
#pragma once

#include <cmath>
#include <cstdint>

#include <moe/moe.hpp>

namespace trainer {

using moe::index_t;

// Inverted dropout (Srivastava et al. 2014; T5's and the Switch Transformer's "dropout 0.1"): in
// training a kept element is scaled up, a dropped one is zeroed, so evaluation runs the same network
// without it. The mask of element i is a pure function of (seed, site, step, base + i), so backward
// recomputes it instead of storing it, every space draws the same mask, and a data-parallel rank
// whose elements start at `base` draws what one process holding the whole batch would. Draws as
// the library's expert dropout does (moe::dropout_draws: eight elements per Philox block, the rate
// quantised to 1/65536).
struct dropout_mask {
  moe::rng_stream rng{};   // seed, purpose, site (the layer field) and step
  float rate = 0;          // 0: off
  std::uint64_t base = 0;  // global index of element 0
  bool on() const { return rate > 0; }

  // out[k] = the dropout factor (0 or the kept scale) of element first + k, k < n.
  template <class T>
  MOE_HOST_DEVICE void factors(index_t first, index_t n, T* out) const {
    const moe::dropout_draws draws = moe::dropout_draws::at_rate(rate);
    draws.factors(rng, base + std::uint64_t(first), std::uint64_t(n), draws.template kept_scale<T>(), out);
  }
};

// y[i] = x[i] · mask(i) for i < n (in place when y == x). Backward is the same call on gradients.
template <class Space, class T>
void apply_dropout(const Space& sp, const dropout_mask& m, const T* x, index_t n, T* y) {
  if (n <= 0) return;
  // One parallel index per run of elements (the space's elementwise run: one element per CUDA
  // thread, coalesced), the factors first, then a product loop that vectorises.
  constexpr index_t run = moe::detail::elementwise_columns<Space>();
  sp.parallel_for((n + run - 1) / run, [=] MOE_LAMBDA(index_t k) {
    const index_t first = k * run, count = n - first < run ? n - first : run;
    T keep[run];
    m.factors(first, count, keep);  // writes keep[0, count)
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // g++ 12 does not follow factors' batches
#endif
    for (index_t i = 0; i < count; ++i) y[first + i] = x[first + i] * keep[i];
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC diagnostic pop
#endif
  });
}

// x[t] = tok_emb[token[t]] + pos_emb[t mod S]
template <class Space, class T>
void embed_forward(const Space& sp, const int* tokens, const T* tok_emb, const T* pos_emb, index_t N, index_t S,
                   index_t d, T* x) {
  sp.parallel_for(N * d, [=] MOE_LAMBDA(index_t i) {
    const index_t t = i / d, j = i - t * d;
    x[i] = tok_emb[index_t(tokens[t]) * d + j] + pos_emb[(t % S) * d + j];
  });
}

// d tok_emb[v] += Σ_{t: token t = v} dx[t];  d pos_emb[s] += Σ_{t mod S = s} dx[t].
// by_token lists the token positions grouped by token id (CSR: positions of v are
// by_token[offsets[v] .. offsets[v+1]), ascending), so each sum runs in a fixed order.
template <class Space, class T>
void embed_backward(const Space& sp, const int* by_token, const int* offsets, const T* dx, index_t N, index_t S,
                    index_t d, index_t V, T* dtok_emb, T* dpos_emb) {
  sp.parallel_for(V * d, [=] MOE_LAMBDA(index_t i) {
    const index_t v = i / d, j = i - v * d;
    T acc = 0;
    for (int q = offsets[v]; q < offsets[v + 1]; ++q) acc += dx[index_t(by_token[q]) * d + j];
    dtok_emb[i] += acc;
  });
  sp.parallel_for(S * d, [=] MOE_LAMBDA(index_t i) {
    const index_t s = i / d, j = i - s * d;
    T acc = 0;
    for (index_t t = s; t < N; t += S) acc += dx[t * d + j];
    dpos_emb[i] += acc;
  });
}

// RMSNorm (Zhang & Sennrich 2019, as in T5): y = x / sqrt(mean(x²) + eps) ⊙ g. Saves 1/rms per row.
template <class T>
inline constexpr T rms_epsilon = T(1e-6);

template <class Space, class T>
void rmsnorm_forward(const Space& sp, const T* x, const T* g, index_t N, index_t d, T* y, T* rinv) {
  sp.parallel_for(N, [=] MOE_LAMBDA(index_t t) {
    const T* row = x + t * d;
    T ss = 0;
    for (index_t j = 0; j < d; ++j) ss += row[j] * row[j];
    const T r = T(1) / std::sqrt(ss / T(d) + rms_epsilon<T>);
    rinv[t] = r;
    for (index_t j = 0; j < d; ++j) y[t * d + j] = row[j] * r * g[j];
  });
}

// dx += ∂L/∂x; dg += ∂L/∂g (column sums in token order) unless dg is null.
template <class Space, class T>
void rmsnorm_backward(const Space& sp, const T* x, const T* g, const T* rinv, const T* dy, index_t N, index_t d,
                      T* dx, T* dg) {
  sp.parallel_for(N, [=] MOE_LAMBDA(index_t t) {
    const T* row = x + t * d;
    const T* drow = dy + t * d;
    const T r = rinv[t];
    T dot = 0;  // Σ_j dy_j g_j x_j
    for (index_t j = 0; j < d; ++j) dot += drow[j] * g[j] * row[j];
    const T c = dot * r * r * r / T(d);
    for (index_t j = 0; j < d; ++j) dx[t * d + j] += drow[j] * g[j] * r - row[j] * c;
  });
  if (!dg) return;  // a frozen gain: its gradient is not computed
  // Column sums over a run of adjacent columns per body (one cache line of each row on the host,
  // where a walk down one column at a time read every line `width` times; one column per thread on
  // CUDA). Each column still sums its tokens in order: the same bits at any run length. The run is
  // the space's element-wise width, at most 16 (acc lives in registers: 16 floats are one AVX-512
  // vector or two AVX2 ones).
  constexpr index_t width = moe::detail::elementwise_columns<Space>() < 16 ? moe::detail::elementwise_columns<Space>()
                                                                            : 16;
  sp.parallel_for((d + width - 1) / width, [=] MOE_LAMBDA(index_t b) {
    const index_t j0 = b * width, n = d - j0 < width ? d - j0 : width;
    T acc[width] = {};
    for (index_t t = 0; t < N; ++t) {
      const T* dyr = dy + t * d + j0;
      const T* xr = x + t * d + j0;
      const T r = rinv[t];
      if (n == width)  // the same loop with a constant trip count, which the compiler unrolls into vectors
        for (index_t k = 0; k < width; ++k) acc[k] += dyr[k] * xr[k] * r;
      else
        for (index_t k = 0; k < n; ++k) acc[k] += dyr[k] * xr[k] * r;
    }
    for (index_t k = 0; k < n; ++k) dg[j0 + k] += acc[k];
  });
}

// Causal multi-head attention core. qkv is [N, 3d] (q | k | v, head h at columns h·dh); o is [N, d];
// P is [B, H, S, S] (row i: the probabilities over keys j ≤ i, zero above the diagonal). Scores and
// weighted sums are GEMMs per (sequence, head) — strided views into qkv, no copies — handed to the
// space as tasks (parallel_tasks: on the host the pool runs the heads side by side, as each product,
// S·S·dh multiply-adds, is too small to be split over threads); the softmax is one parallel index
// per query row. With dropout on the probabilities (T5), Pd = P ⊙ mask holds
// what multiplies V (P keeps the softmax, which backward needs); without, Pd is P. The mask is
// indexed over [B, H, S, S] and drawn for the causal entries j ≤ i only.
template <class Space, class T>
void attention_forward(const Space& sp, const T* qkv, index_t B, index_t S, index_t H, index_t dh, T* P, T* o,
                       const dropout_mask& drop = {}, T* Pd = nullptr) {
  const index_t d = H * dh, ld = 3 * d;
  const T scale = T(1) / std::sqrt(T(dh));
  sp.parallel_tasks(B * H, [&](index_t bh) {
    const T* q = qkv + (bh / H) * S * ld + (bh % H) * dh;
    sp.gemm(moe::op::none, moe::op::transpose, S, S, dh, scale, q, ld, q + d, ld, T(0), P + bh * S * S, S);
  });
  const bool dropping = drop.on();
  sp.parallel_for(B * H * S, [=] MOE_LAMBDA(index_t r) {
    const index_t i = r % S;
    T* p = P + r * S;
    T m = -INFINITY;
    for (index_t j = 0; j <= i; ++j) m = p[j] > m ? p[j] : m;
    for (index_t j = 0; j <= i; ++j) p[j] = moe::exp_of(p[j] - m);  // vectorises (std::exp does not)
    T sum = 0;
    for (index_t j = 0; j <= i; ++j) sum += p[j];
    for (index_t j = 0; j <= i; ++j) p[j] /= sum;
    for (index_t j = i + 1; j < S; ++j) p[j] = 0;
    if (dropping) {
      T* pd = Pd + r * S;
      constexpr index_t chunk = 64;
      T keep[chunk];
      for (index_t j0 = 0; j0 <= i; j0 += chunk) {
        const index_t n = i + 1 - j0 < chunk ? i + 1 - j0 : chunk;
        drop.factors(r * S + j0, n, keep);
        for (index_t j = 0; j < n; ++j) pd[j0 + j] = p[j0 + j] * keep[j];
      }
      for (index_t j = i + 1; j < S; ++j) pd[j] = 0;
    }
  });
  const T* weights = dropping ? Pd : P;
  sp.parallel_tasks(B * H, [&](index_t bh) {
    const index_t b = bh / H, h = bh % H;
    sp.gemm(moe::op::none, moe::op::none, S, dh, S, T(1), weights + bh * S * S, S, qkv + b * S * ld + 2 * d + h * dh,
            ld, T(0), o + b * S * d + h * dh, d);
  });
}

// From dout = ∂L/∂o: writes dqkv (all of it). dS holds ∂L/∂scores [B, H, S, S] on return. With
// dropout, Pd and the same mask as the forward's.
template <class Space, class T>
void attention_backward(const Space& sp, const T* qkv, const T* P, const T* dout, index_t B, index_t S, index_t H,
                        index_t dh, T* dS, T* dqkv, const dropout_mask& drop = {}, const T* Pd = nullptr) {
  const index_t d = H * dh, ld = 3 * d;
  const T scale = T(1) / std::sqrt(T(dh));
  // dPd = dO · Vᵀ ;  dV = Pdᵀ · dO ;  dP = dPd ⊙ mask (in the softmax backward below)
  const T* weights = drop.on() ? Pd : P;
  sp.parallel_tasks(B * H, [&](index_t bh) {
    const index_t b = bh / H, h = bh % H;
    const T* g = dout + b * S * d + h * dh;
    sp.gemm(moe::op::none, moe::op::transpose, S, S, dh, T(1), g, d, qkv + b * S * ld + 2 * d + h * dh, ld, T(0),
            dS + bh * S * S, S);
    sp.gemm(moe::op::transpose, moe::op::none, S, dh, S, T(1), weights + bh * S * S, S, g, d, T(0),
            dqkv + b * S * ld + 2 * d + h * dh, ld);
  });
  // dS = P ⊙ (dP − Σ_j P dP) per row (zero above the diagonal, where P is zero)
  const bool dropping = drop.on();
  sp.parallel_for(B * H * S, [=] MOE_LAMBDA(index_t r) {
    const T* p = P + r * S;
    T* ds = dS + r * S;
    if (dropping) {
      const index_t i = r % S;
      constexpr index_t chunk = 64;
      T keep[chunk];
      for (index_t j0 = 0; j0 <= i; j0 += chunk) {
        const index_t n = i + 1 - j0 < chunk ? i + 1 - j0 : chunk;
        drop.factors(r * S + j0, n, keep);
        for (index_t j = 0; j < n; ++j) ds[j0 + j] *= keep[j];
      }
    }
    T dot = 0;
    for (index_t j = 0; j < S; ++j) dot += p[j] * ds[j];
    for (index_t j = 0; j < S; ++j) ds[j] = p[j] * (ds[j] - dot);
  });
  // dQ = scale · dS · K ;  dK = scale · dSᵀ · Q
  sp.parallel_tasks(B * H, [&](index_t bh) {
    const T* q = qkv + (bh / H) * S * ld + (bh % H) * dh;
    T* dq = dqkv + (bh / H) * S * ld + (bh % H) * dh;
    sp.gemm(moe::op::none, moe::op::none, S, dh, S, scale, dS + bh * S * S, S, q + d, ld, T(0), dq, ld);
    sp.gemm(moe::op::transpose, moe::op::none, S, dh, S, scale, dS + bh * S * S, S, q, ld, T(0), dq + d, ld);
  });
}

// Softmax cross-entropy of logits [N, V] against targets: loss[t] = −log p(target_t); the logits are
// overwritten with ∂(Σ loss / norm)/∂logits = (p − onehot) / norm (norm = N for the mean).
template <class Space, class T>
void cross_entropy(const Space& sp, T* logits, const int* targets, index_t N, index_t V, index_t norm, T* loss) {
  sp.parallel_for(N, [=] MOE_LAMBDA(index_t t) {
    T* row = logits + t * V;
    T m = -INFINITY;
    for (index_t v = 0; v < V; ++v) m = row[v] > m ? row[v] : m;
    const T target_logit = row[targets[t]];
    // One exponential per logit, in place (a vectorised loop; the sum runs in order after it)
    for (index_t v = 0; v < V; ++v) row[v] = moe::exp_of(row[v] - m);
    T sum = 0;
    for (index_t v = 0; v < V; ++v) sum += row[v];
    loss[t] = m + std::log(sum) - target_logit;
    const T scale = T(1) / (sum * T(norm));  // p_v / norm = e_v / (sum · norm)
    for (index_t v = 0; v < V; ++v) row[v] *= scale;
    row[targets[t]] -= T(1) / T(norm);
  });
}

// dst[i] = src[i] · scale in dst's type (the loss scaling of 16-bit layers; scale is a power of two)
template <class Space, class From, class To, class S>
void scale_into(const Space& sp, const From* src, index_t n, S scale, To* dst) {
  sp.parallel_for(n, [=] MOE_LAMBDA(index_t i) { dst[i] = moe::convert<To>(moe::widen(src[i]) * scale); });
}
// dst[i] = src[i] in dst's type (rounded to nearest even when narrowing; exact when widening)
template <class Space, class From, class To>
void convert_into(const Space& sp, const From* src, index_t n, To* dst) {
  scale_into(sp, src, n, moe::acc_t<From>(1), dst);
}
// x[i] *= scale
template <class Space, class T, class S>
void scale_in_place(const Space& sp, T* x, index_t n, S scale) {
  sp.parallel_for(n, [=] MOE_LAMBDA(index_t i) { x[i] = x[i] * scale; });
}

// y += x (element-wise)
template <class Space, class T>
void add_into(const Space& sp, const T* x, index_t n, T* y) {
  sp.parallel_for(n, [=] MOE_LAMBDA(index_t i) { y[i] += x[i]; });
}

}  // namespace trainer
