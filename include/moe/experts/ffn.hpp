// moe/experts/ffn.hpp — the expert feed-forward network, E experts at once.
//
//   plain:  h = act(x·W_in + b_in)                        out = (h ⊙ m_e ⊙ drop)·W_out + b_out
//   gated:  h = act(x·W_in + b_in) ⊙ (x·W_up + b_up)      (GLU variants, Shazeer 2020: GEGLU =
//           gelu, SwiGLU = silu; W_in is the activated branch, W_up the linear one — LLaMA's
//           gate_proj and up_proj)
// with options
//   bias                 additive biases b_in, b_up, b_out (T5/Switch/GLaM/ST-MoE use none)
//   multiplicative_bias  a learned per-expert scale m_e ∈ R^{d_ff} on the hidden activation,
//                        initialised to 1 — our reading of ST-MoE's "multiplicative bias" option,
//                        which the paper reports as a small quality gain
//   dropout              expert dropout on the hidden activation during training (Switch §2.4: 0.4 in
//                        experts while 0.1 elsewhere at fine-tuning; ST-MoE studies it too); the mask
//                        is keyed by (token, expert, unit), so it is the same in every dispatcher,
//                        and drawn eight units per Philox block (moe::dropout_draws: the rate is
//                        quantised to 1/65536)
//   init_scale           W ~ truncated normal with std sqrt(init_scale / fan_in) (Switch: 0.1)
//
// Weights of all experts are contiguous: W_in, W_up [E, d_model, d_ff], W_out [E, d_ff, d_model].
// Rows are expert-contiguous (rows.expert_offsets), so each projection is one grouped GEMM.
//
// Inside lambdas run by an execution space, compile-time branches are plain `if`s on constexpr
// values: nvcc's extended lambdas may not first capture a variable inside `if constexpr`.
#pragma once

#include <cmath>

#include "moe/core/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/numeric.hpp"
#include "moe/core/op.hpp"
#include "moe/core/policy.hpp"
#include "moe/core/rng.hpp"
#include "moe/core/workspace.hpp"
#include "moe/experts/activations.hpp"

namespace moe {

// Which expert row r holds, and whose token: produced by the dispatcher.
struct row_map {
  index_t rows_bound = 0;         // rows the buffers are sized for
  int* expert_offsets = nullptr;  // [E+1] rows of expert e: [offsets[e], offsets[e+1])
  int* row_pair = nullptr;        // [rows_bound] the (token, choice) pair in row r, -1 if empty
  int* row_token = nullptr;       // [rows_bound] its token, -1 if empty
  int* row_expert = nullptr;      // [rows_bound] its expert, -1 past the last used row
  // > 0 when every expert owns exactly this many rows (the padded layout: expert e's rows are
  // [e·uniform_rows, (e+1)·uniform_rows)); its GEMMs then run as one strided-batched call.
  index_t uniform_rows = 0;
};

struct expert_shape {
  int experts = 0;
  index_t d_model = 0;
  index_t d_ff = 0;
  // Dropout masks are keyed by the global expert id (first_expert + local id) among total_experts,
  // so that an expert-parallel rank holding experts [first, first + experts) draws what a single
  // layer holding all of them would. total_experts = 0 means `experts`.
  int first_expert = 0;
  int total_experts = 0;
};

// Parameters (or gradients) of the expert FFNs of one layer; null where an option is off.
template <class T>
struct ffn_tensors {
  T* w_in = nullptr;   // [E, d_model, d_ff]
  T* w_up = nullptr;   // [E, d_model, d_ff] (gated only)
  T* w_out = nullptr;  // [E, d_ff, d_model]
  T* b_in = nullptr;   // [E, d_ff]
  T* b_up = nullptr;   // [E, d_ff]
  T* b_out = nullptr;  // [E, d_model]
  T* scale = nullptr;  // [E, d_ff] multiplicative bias
};

// Saved activations of one forward call (workspace).
template <class T>
struct ffn_activations {
  T* pre = nullptr;     // [rows, d_ff] x·W_in + b_in
  T* lin = nullptr;     // [rows, d_ff] x·W_up + b_up (gated)
  T* hidden = nullptr;  // [rows, d_ff] the input of W_out
  T* out = nullptr;     // [rows, d_model]
  // backward scratch
  T* dhidden = nullptr;  // [rows, d_ff] ∂L/∂hidden, then ∂L/∂pre in place
  T* dlin = nullptr;     // [rows, d_ff] (gated)
};

namespace detail {

// Element-wise loops over a [rows, cols] matrix give each parallel_for body a run of up to
// elementwise_columns<Space>() contiguous columns of one row. A space whose bodies run on CPU threads
// declares a run length (moe::host::elementwise_columns): the row index is then divided out once
// per run and the inner loop vectorises. Other spaces (CUDA: one element per thread) get 1, which is
// the plain one-element-per-index loop. Every element is computed by the same expression either
// way, so results do not depend on the run length.
template <class Space>
constexpr index_t elementwise_columns() {
  if constexpr (requires { Space::elementwise_columns; })
    return index_t(Space::elementwise_columns);
  else
    return 1;
}

// Runs of one row: body index c covers columns [first, end) of row `row` (runs per row = runs).
struct column_run {
  index_t row, first, end;
  MOE_HOST_DEVICE column_run(index_t c, index_t runs, index_t width, index_t cols)
      : row(c / runs), first((c - (c / runs) * runs) * width), end(first + width < cols ? first + width : cols) {}
};

// out[e, j] += Σ_{rows r of e} in[r, j]  (rows in order: deterministic)
template <class Space, class T, class R>
void expert_column_sums(const Space& sp, int E, const int* off, index_t cols, const T* in, R* out) {
  sp.parallel_for(index_t(E) * cols, [=] MOE_LAMBDA(index_t i) {
    const int e = int(i / cols);
    const index_t j = i - index_t(e) * cols;
    R sum = 0;
    for (index_t r = off[e]; r < off[e + 1]; ++r) sum += widen(in[r * cols + j]);
    out[i] += sum;
  });
}

// The experts' GEMMs: C[rows of e] = alpha · A[rows of e] · op(B_e) + beta · C[rows of e] for every
// expert e (B_e = b + e·b_stride). One strided-batched GEMM when every expert has the same number
// of rows (padded layout: static shapes, cuBLAS's batched kernels on the device), else the grouped
// GEMM over the device-side offsets (no host copy of the counts). Same arguments as grouped_gemm.
template <class Space, class TA, class TB, class TC>
void expert_gemm(const Space& sp, const row_map& rows, op opb, int E, index_t n, index_t k, acc_t<TC> alpha,
                 const TA* a, index_t lda, const TB* b, index_t b_stride, index_t ldb, acc_t<TC> beta, TC* c,
                 index_t ldc) {
  const index_t m = rows.uniform_rows;
  if (m > 0)
    sp.batched_gemm(op::none, opb, E, m, n, k, alpha, a, lda, m * lda, b, ldb, b_stride, beta, c, ldc, m * ldc);
  else
    sp.grouped_gemm(opb, E, rows.expert_offsets, n, k, alpha, a, lda, b, b_stride, ldb, beta, c, ldc);
}
// Weight gradients: C_e = alpha · A[rows of e]ᵀ · B[rows of e] + beta · C_e (C_e = c + e·c_stride, [m, n]).
template <class Space, class TA, class TB, class TC>
void expert_gemm_tn(const Space& sp, const row_map& rows, int E, index_t m, index_t n, acc_t<TC> alpha, const TA* a,
                    index_t lda, const TB* b, index_t ldb, acc_t<TC> beta, TC* c, index_t c_stride, index_t ldc) {
  const index_t r = rows.uniform_rows;
  if (r > 0)
    sp.batched_gemm(op::transpose, op::none, E, m, n, r, alpha, a, lda, r * lda, b, ldb, r * ldb, beta, c, ldc,
                    c_stride);
  else
    sp.grouped_gemm_tn(E, rows.expert_offsets, m, n, alpha, a, lda, b, ldb, beta, c, c_stride, ldc);
}

}  // namespace detail

template <class Activation, bool Gated = false>
struct ffn {
  static_assert(expert_activation<Activation>,
                "moe::ffn<Act>: the activation does not satisfy moe::expert_activation (name, f<R>(x), df<R>(x))");
  using policy_kind = expert_kind;
  using activation = Activation;
  static constexpr bool gated = Gated;
  static constexpr const char* name = Gated ? "gated_ffn" : "ffn";

  struct config {
    bool bias = false;
    bool multiplicative_bias = false;
    float dropout = 0.0f;
    float init_scale = 1.0f;
    bool operator==(const config&) const = default;
  };

  static void check(const config& c) {
    require(c.dropout >= 0.0f && c.dropout < 1.0f, "expert.dropout", "rate=", c.dropout, " must be in [0, 1)");
    require(c.init_scale > 0.0f && std::isfinite(c.init_scale), "expert.init_scale", "scale=", c.init_scale,
            " must be finite and > 0");
  }

  template <class T>
  static void carve(workspace_carver& w, const expert_shape& s, index_t rows, ffn_activations<T>& a) {
    a.pre = w.take<T>(rows * s.d_ff);
    a.lin = Gated ? w.take<T>(rows * s.d_ff) : nullptr;
    a.hidden = w.take<T>(rows * s.d_ff);
    a.out = w.take<T>(rows * s.d_model);
    a.dhidden = w.take<T>(rows * s.d_ff);
    a.dlin = Gated ? w.take<T>(rows * s.d_ff) : nullptr;
  }

  // Dropout of hidden units (moe::dropout_draws: the rate quantised to 1/65536). Unit j of
  // (token, expert) is element (token·experts + expert)·d_ff + j, so a run of consecutive units
  // shares each Philox block among eight.
  MOE_HOST_DEVICE static std::uint64_t dropout_unit(int token, int expert, int experts, index_t d_ff, index_t j) {
    return (std::uint64_t(token) * std::uint64_t(experts) + std::uint64_t(expert)) * std::uint64_t(d_ff) +
           std::uint64_t(j);
  }
  // The factor (0 or `kept`, the draws' kept scale, hoisted by the caller) of one unit.
  template <class R>
  MOE_HOST_DEVICE static R dropout_scale(const rng_stream& rng, dropout_draws draws, R kept, int token, int expert,
                                         int experts, index_t d_ff, index_t j) {
    const std::uint64_t unit = dropout_unit(token, expert, experts, d_ff, j);
    return kept * R(draws.keep(rng.bits(dropout_draws::block_of(unit)), unit));
  }
  // The dropout factors (0 or the kept scale) of units [first, end) of row r into keep[0, end − first).
  template <class R>
  MOE_HOST_DEVICE static void dropout_factors(const rng_stream& rng, float rate, R kept, int token, int expert,
                                              int experts, index_t d_ff, index_t first, index_t end, R* keep) {
    dropout_draws::at_rate(rate).factors(rng, dropout_unit(token, expert, experts, d_ff, first),
                                         std::uint64_t(end - first), kept, keep);
  }

  // out[rows] = FFN_e(xp[rows]) for every expert e.
  template <class Space, class T>
  static void forward(const Space& sp, const config& c, const expert_shape& s, const ffn_tensors<const T>& w,
                      const row_map& rows, const T* xp, const ffn_activations<T>& a, bool training,
                      const rng_stream& dropout_rng) {
    using R = acc_t<T>;
    const index_t d = s.d_model, f = s.d_ff;
    const int E = s.experts;
    const int key_first = s.first_expert, key_E = s.total_experts ? s.total_experts : s.experts;
    detail::expert_gemm(sp, rows, op::none, E, f, d, R(1), xp, d, w.w_in, d * f, f, R(0), a.pre, f);
    if constexpr (Gated)
      detail::expert_gemm(sp, rows, op::none, E, f, d, R(1), xp, d, w.w_up, d * f, f, R(0), a.lin, f);

    const bool drop = training && c.dropout > 0.0f;
    const float rate = c.dropout;
    const int* row_expert = rows.row_expert;
    const int* row_token = rows.row_token;
    const T *b_in = c.bias ? w.b_in : nullptr, *b_up = c.bias ? w.b_up : nullptr;
    const T* scale = c.multiplicative_bias ? w.scale : nullptr;
    T *pre = a.pre, *lin = a.lin, *hidden = a.hidden;
    const rng_stream rng = dropout_rng;
    const R kept = dropout_draws::at_rate(rate).template kept_scale<R>();
    // Without biases or scale the body is a branch-free loop (the same arithmetic as the general
    // one with those terms off); a run's dropout factors are drawn first (one Philox block per eight
    // units), so neither loop draws per element.
    const bool plain = !b_in && !b_up && !scale;
    constexpr index_t width = detail::elementwise_columns<Space>();
    const index_t runs = (f + width - 1) / width;
    sp.parallel_for(rows.rows_bound * runs, [=] MOE_LAMBDA(index_t run_index) {
      const detail::column_run run(run_index, runs, width, f);
      const index_t r = run.row;
      const int e = row_expert[r];
      if (e < 0) return;
      const bool drop_row = drop && row_token[r] >= 0;
      R keep[width];
      if (drop_row) dropout_factors(rng, rate, kept, row_token[r], key_first + e, key_E, f, run.first, run.end, keep);
      if (plain) {
        const index_t i0 = r * f + run.first, n = run.end - run.first;
        if (drop_row) {
          for (index_t j = 0; j < n; ++j) {
            R h = Activation::f(widen(pre[i0 + j]));
            if (Gated) h *= widen(lin[i0 + j]);
            hidden[i0 + j] = convert<T>(h * keep[j]);
          }
        } else {
          for (index_t j = 0; j < n; ++j) {
            R h = Activation::f(widen(pre[i0 + j]));
            if (Gated) h *= widen(lin[i0 + j]);
            hidden[i0 + j] = convert<T>(h);
          }
        }
        return;
      }
      for (index_t j = run.first; j < run.end; ++j) {
        const index_t i = r * f + j;
        R p = widen(pre[i]);
        if (b_in) {
          p += widen(b_in[e * f + j]);
          pre[i] = convert<T>(p);
          p = widen(pre[i]);  // backward sees exactly the stored value
        }
        R h = Activation::f(p);
        if (Gated) {
          R l = widen(lin[i]);
          if (b_up) {
            l += widen(b_up[e * f + j]);
            lin[i] = convert<T>(l);
            l = widen(lin[i]);
          }
          h *= l;
        }
        if (scale) h *= widen(scale[e * f + j]);
        if (drop_row) h *= keep[j - run.first];
        hidden[i] = convert<T>(h);
      }
    });

    detail::expert_gemm(sp, rows, op::none, E, d, f, R(1), a.hidden, f, w.w_out, f * d, d, R(0), a.out, d);
    if (c.bias) {
      const T* b_out = w.b_out;
      T* out = a.out;
      const index_t druns = (d + width - 1) / width;
      sp.parallel_for(rows.rows_bound * druns, [=] MOE_LAMBDA(index_t run_index) {
        const detail::column_run run(run_index, druns, width, d);
        const int e = row_expert[run.row];
        if (e < 0) return;
        for (index_t j = run.first; j < run.end; ++j)
          out[run.row * d + j] = convert<T>(widen(out[run.row * d + j]) + widen(b_out[e * d + j]));
      });
    }
  }

  // From dout (∂L/∂out per row): accumulates the parameter gradients into g and writes dxp. Null
  // tensors of g are not computed (W_up and b_up go with W_in and b_in): with all of g null (frozen
  // experts) only dxp is, and the backward costs two of its GEMMs instead of four (three of six
  // when gated).
  template <class Space, class T>
  static void backward(const Space& sp, const config& c, const expert_shape& s, const ffn_tensors<const T>& w,
                       const ffn_tensors<acc_t<T>>& g, const row_map& rows, const T* xp,
                       const ffn_activations<T>& a, const T* dout, T* dxp, bool training,
                       const rng_stream& dropout_rng) {
    using R = acc_t<T>;
    const index_t d = s.d_model, f = s.d_ff;
    const int E = s.experts;
    const int key_first = s.first_expert, key_E = s.total_experts ? s.total_experts : s.experts;
    const int* off = rows.expert_offsets;
    // ∂L/∂hidden = dout · W_outᵀ;  ∂L/∂W_out += hiddenᵀ · dout
    detail::expert_gemm(sp, rows, op::transpose, E, f, d, R(1), dout, d, w.w_out, f * d, d, R(0), a.dhidden, f);
    if (g.w_out) detail::expert_gemm_tn(sp, rows, E, f, d, R(1), a.hidden, f, dout, d, R(1), g.w_out, f * d, d);
    if (c.bias && g.b_out) detail::expert_column_sums(sp, E, off, d, dout, g.b_out);

    const bool drop = training && c.dropout > 0.0f;
    const float rate = c.dropout;
    const int* row_expert = rows.row_expert;
    const int* row_token = rows.row_token;
    const T* scale = c.multiplicative_bias ? w.scale : nullptr;
    const T *pre = a.pre, *lin = a.lin;
    T *dh = a.dhidden, *dlin = a.dlin;
    const rng_stream rng = dropout_rng;
    const dropout_draws draws = dropout_draws::at_rate(rate);
    const R kept = draws.template kept_scale<R>();

    if (scale && g.scale) {
      // ∂L/∂m_e[j] = Σ_{rows r of e} ∂L/∂hidden[r, j] · core[r, j] · drop[r, j]
      R* dscale = g.scale;
      sp.parallel_for(index_t(E) * f, [=] MOE_LAMBDA(index_t i) {
        const int e = int(i / f);
        const index_t j = i - index_t(e) * f;
        R sum = 0;
        for (index_t r = off[e]; r < off[e + 1]; ++r) {
          R core = Activation::f(widen(pre[r * f + j]));
          if (Gated) core *= widen(lin[r * f + j]);
          if (drop && row_token[r] >= 0)
            core *= dropout_scale<R>(rng, draws, kept, row_token[r], key_first + e, key_E, f, j);
          sum += widen(dh[r * f + j]) * core;
        }
        dscale[i] += sum;
      });
    }

    // ∂L/∂pre (in place over dhidden) and ∂L/∂lin; runs of columns as in forward.
    const bool plain = !scale;
    constexpr index_t width = detail::elementwise_columns<Space>();
    const index_t runs = (f + width - 1) / width;
    sp.parallel_for(rows.rows_bound * runs, [=] MOE_LAMBDA(index_t run_index) {
      const detail::column_run run(run_index, runs, width, f);
      const index_t r = run.row;
      const int e = row_expert[r];
      if (e < 0) return;
      const bool drop_row = drop && row_token[r] >= 0;
      R keep[width];
      if (drop_row) dropout_factors(rng, rate, kept, row_token[r], key_first + e, key_E, f, run.first, run.end, keep);
      if (plain) {
        // Activation values first, then the products: separate loops vectorise (GCC leaves the
        // fused loop scalar, with a branch per element for ReLU's derivative). Same arithmetic.
        // f and f' stay in one loop, where the compiler shares their common subexpressions (the
        // exponential of GELU and SiLU).
        // With dropout, ∂L/∂core = ∂L/∂hidden · keep (a loop of its own: no branch in either).
        R act[width], dact[width];
        const index_t i0 = r * f + run.first, n = run.end - run.first;
        if (Gated) {
          for (index_t j = 0; j < n; ++j) {
            const R p = widen(pre[i0 + j]);
            act[j] = Activation::f(p);
            dact[j] = Activation::df(p);
          }
          if (drop_row) {
            for (index_t j = 0; j < n; ++j) {
              const R dcore = widen(dh[i0 + j]) * keep[j], l = widen(lin[i0 + j]);
              dlin[i0 + j] = convert<T>(dcore * act[j]);
              dh[i0 + j] = convert<T>(dcore * l * dact[j]);
            }
          } else {
            for (index_t j = 0; j < n; ++j) {
              const R dcore = widen(dh[i0 + j]), l = widen(lin[i0 + j]);
              dlin[i0 + j] = convert<T>(dcore * act[j]);
              dh[i0 + j] = convert<T>(dcore * l * dact[j]);
            }
          }
        } else {
          for (index_t j = 0; j < n; ++j) dact[j] = Activation::df(widen(pre[i0 + j]));
          if (drop_row)
            for (index_t j = 0; j < n; ++j) dh[i0 + j] = convert<T>(widen(dh[i0 + j]) * keep[j] * dact[j]);
          else
            for (index_t j = 0; j < n; ++j) dh[i0 + j] = convert<T>(widen(dh[i0 + j]) * dact[j]);
        }
        return;
      }
      for (index_t j = run.first; j < run.end; ++j) {
        const index_t i = r * f + j;
        R dcore = widen(dh[i]);
        if (scale) dcore *= widen(scale[e * f + j]);
        if (drop_row) dcore *= keep[j - run.first];
        const R p = widen(pre[i]);
        if (Gated) {
          const R l = widen(lin[i]);
          dlin[i] = convert<T>(dcore * Activation::f(p));
          dh[i] = convert<T>(dcore * l * Activation::df(p));
        } else {
          dh[i] = convert<T>(dcore * Activation::df(p));
        }
      }
    });
    if (c.bias && g.b_in) {
      detail::expert_column_sums(sp, E, off, f, a.dhidden, g.b_in);
      if constexpr (Gated) detail::expert_column_sums(sp, E, off, f, a.dlin, g.b_up);
    }
    // ∂L/∂W_in += xpᵀ · ∂pre;  ∂L/∂xp = ∂pre · W_inᵀ (+ ∂lin · W_upᵀ)
    if (g.w_in) {
      detail::expert_gemm_tn(sp, rows, E, d, f, R(1), xp, d, a.dhidden, f, R(1), g.w_in, d * f, f);
      if constexpr (Gated) detail::expert_gemm_tn(sp, rows, E, d, f, R(1), xp, d, a.dlin, f, R(1), g.w_up, d * f, f);
    }
    detail::expert_gemm(sp, rows, op::transpose, E, d, f, R(1), a.dhidden, f, w.w_in, d * f, f, R(0), dxp, d);
    if constexpr (Gated)
      detail::expert_gemm(sp, rows, op::transpose, E, d, f, R(1), a.dlin, f, w.w_up, d * f, f, R(1), dxp, d);
  }
};

using relu_ffn = ffn<activation::relu>;
using gelu_ffn = ffn<activation::gelu>;
using silu_ffn = ffn<activation::silu>;
using reglu_ffn = ffn<activation::relu, true>;
using geglu_ffn = ffn<activation::gelu, true>;
using swiglu_ffn = ffn<activation::silu, true>;

}  // namespace moe
