// moe/dispatch/rows.hpp — the pieces dispatchers share: where each kept (token, expert) pair goes
// in the expert-contiguous row buffer, and the gather/scatter between tokens and rows.
//
// Two row layouts:
//   packed: kept pairs only, expert-major, then group, then slot; rows of expert e are
//           [offsets[e], offsets[e+1]) with no holes (sorted dispatch; MegaBlocks/Megatron style).
//   padded: every segment owns C rows: row = (e·G + g)·C + slot, empty slots are zero rows
//           ([E, G·C, d], GShard's dispatched tensor; the padded and one_hot dispatchers).
// Combining is a gather per token over its kept pairs in choice order (a CSR list built here), so
// no floating-point atomics are needed and the result is the same bits on every run.
#pragma once

#include <cstdint>

#include "moe/core/config.hpp"
#include "moe/core/numeric.hpp"
#include "moe/core/policy.hpp"
#include "moe/core/workspace.hpp"
#include "moe/experts/ffn.hpp"
#include "moe/routing/plan.hpp"

namespace moe {

// Row bookkeeping of one call (workspace).
struct row_state {
  row_map rows;
  int* pair_row = nullptr;         // [P] row of a kept pair, -1 otherwise
  int* segment_kept = nullptr;     // [E·G] kept pairs per segment
  int* segment_rows = nullptr;     // [E·G + 1] first row of each segment (packed layout)
  int* token_count = nullptr;      // [T] kept pairs per token
  int* token_offsets = nullptr;    // [T + 1]
  int* token_pairs = nullptr;      // [P] kept pairs of each token, in choice order (CSR)

  static void carve(workspace_carver& w, const routing_shape& s, index_t rows_bound, row_state& st) {
    const index_t P = s.pairs(), SEG = s.segments();
    st.rows.rows_bound = rows_bound;
    st.rows.expert_offsets = w.take<int>(s.experts + 1);
    st.rows.row_pair = w.take<int>(rows_bound);
    st.rows.row_token = w.take<int>(rows_bound);
    st.rows.row_expert = w.take<int>(rows_bound);
    st.pair_row = w.take<int>(P);
    st.segment_kept = w.take<int>(SEG);
    st.segment_rows = w.take<int>(SEG + 1);
    st.token_count = w.take<int>(s.tokens);
    st.token_offsets = w.take<int>(s.tokens + 1);
    st.token_pairs = w.take<int>(P);
  }
};

namespace detail {

// Fills pair_row, the row map and the per-token CSR of kept pairs from the slots of the plan.
template <class Space, class R>
void assign_rows(const Space& sp, const routing_plan<R>& plan, row_state& st, bool padded) {
  const routing_shape s = plan.shape;
  const int E = s.experts, G = s.groups, C = s.capacity, K = s.pairs_per_token, SEG = s.segments();
  const int* seg_count = plan.segment_count;
  int* kept = st.segment_kept;
  int* seg_rows = st.segment_rows;
  int* expert_offsets = st.rows.expert_offsets;
  sp.parallel_for(SEG, [=] MOE_LAMBDA(index_t i) { kept[i] = seg_count[i] < C ? seg_count[i] : C; });
  if (padded) {
    sp.parallel_for(SEG + 1, [=] MOE_LAMBDA(index_t i) { seg_rows[i] = int(i) * C; });
  } else {
    sp.offsets_from_counts(kept, seg_rows, SEG);
  }
  sp.parallel_for(E + 1, [=] MOE_LAMBDA(index_t e) { expert_offsets[e] = seg_rows[e * G]; });

  int* row_pair = st.rows.row_pair;
  int* row_token = st.rows.row_token;
  int* row_expert = st.rows.row_expert;
  const index_t rows_per_expert = index_t(G) * C;
  st.rows.uniform_rows = padded ? rows_per_expert : 0;
  sp.parallel_for(st.rows.rows_bound, [=] MOE_LAMBDA(index_t r) {
    row_pair[r] = -1;
    row_token[r] = -1;
    // Padded rows always belong to their expert (empty ones compute on zeros); packed rows past
    // the last kept pair belong to nobody.
    row_expert[r] = padded ? int(r / rows_per_expert) : -1;
  });

  const int* pair_slot = plan.pair_slot;
  const int* pair_segment = plan.pair_segment;
  const int* pair_expert = plan.pair_expert;
  int* pair_row = st.pair_row;
  sp.parallel_for(s.pairs(), [=] MOE_LAMBDA(index_t p) {
    const int slot = pair_slot[p];
    if (slot < 0) {
      pair_row[p] = -1;
      return;
    }
    const int r = seg_rows[pair_segment[p]] + slot;
    pair_row[p] = r;
    row_pair[r] = int(p);
    row_token[r] = int(p / K);
    row_expert[r] = pair_expert[p];
  });

  // Per-token list of kept pairs, in choice order.
  int* token_count = st.token_count;
  int* token_offsets = st.token_offsets;
  int* token_pairs = st.token_pairs;
  sp.parallel_for(s.tokens, [=] MOE_LAMBDA(index_t t) {
    int n = 0;
    for (int j = 0; j < K; ++j) n += pair_row[t * K + j] >= 0;
    token_count[t] = n;
  });
  sp.offsets_from_counts(token_count, token_offsets, s.tokens);
  sp.parallel_for(s.tokens, [=] MOE_LAMBDA(index_t t) {
    int o = token_offsets[t];
    for (int j = 0; j < K; ++j)
      if (pair_row[t * K + j] >= 0) token_pairs[o++] = int(t * K + j);
  });
}

// Element-wise loops below take runs of columns of one row per body (elementwise_columns, ffn.hpp);
// sums over a token's pairs keep their order (choice order) for every element, whatever the run.
// A space that declares row_kernels (moe::cuda: 16-byte vector accesses, moe/cuda/rows.cuh) runs
// these gathers with its own kernels instead: the same sums over a token's pairs in the same order;
// the gate-gradient dot products (combine backward) are summed in a warp's fixed tree instead of
// left to right, so they differ from the host's in the last bits (deterministic either way).
// The generic loops after each hook's `return` are still compiled for such a space (they are not
// in an `else`: nvcc's extended lambdas may not first capture inside `if constexpr`).
template <class Space>
concept has_row_kernels = requires { Space::row_kernels; };

// xp[r] = x[token of r] (zero for empty rows).
template <class Space, class T>
void gather_rows(const Space& sp, const row_state& st, index_t d, const T* x, T* xp) {
  if constexpr (has_row_kernels<Space>) {
    sp.gather_rows(st.rows.rows_bound, d, st.rows.row_token, st.rows.row_expert, st.rows.row_pair,
                   static_cast<const acc_t<T>*>(nullptr), x, xp);
    return;
  }
  const int* row_token = st.rows.row_token;
  const int* row_expert = st.rows.row_expert;
  constexpr index_t width = elementwise_columns<Space>();
  const index_t runs = (d + width - 1) / width;
  sp.parallel_for(st.rows.rows_bound * runs, [=] MOE_LAMBDA(index_t run_index) {
    const column_run run(run_index, runs, width, d);
    const index_t r = run.row;
    if (row_expert[r] < 0) return;
    const int t = row_token[r];
    T* dst = xp + r * d;
    if (t >= 0) {
      const T* src = x + index_t(t) * d;
      for (index_t j = run.first; j < run.end; ++j) dst[j] = src[j];
    } else {
      for (index_t j = run.first; j < run.end; ++j) dst[j] = T(0.0f);
    }
  });
}

// y[t] = Σ_{kept pairs p of t} gate[p] · out[row(p)]  (choice order; zero when all dropped).
template <class Space, class T, class R>
void combine_rows(const Space& sp, const row_state& st, int tokens, index_t d, const R* gate, const T* out, T* y) {
  if constexpr (has_row_kernels<Space>) {
    sp.combine_rows(index_t(tokens), d, st.token_offsets, st.token_pairs, st.pair_row, gate, out, y);
    return;
  }
  const int* off = st.token_offsets;
  const int* pairs = st.token_pairs;
  const int* pair_row = st.pair_row;
  constexpr index_t width = elementwise_columns<Space>();
  const index_t runs = (d + width - 1) / width;
  sp.parallel_for(index_t(tokens) * runs, [=] MOE_LAMBDA(index_t run_index) {
    const column_run run(run_index, runs, width, d);
    const index_t t = run.row, n = run.end - run.first;
    R acc[width];
    for (index_t j = 0; j < n; ++j) acc[j] = 0;
    for (int q = off[t]; q < off[t + 1]; ++q) {
      const int p = pairs[q];
      const R g = gate[p];
      const T* o = out + index_t(pair_row[p]) * d + run.first;
      for (index_t j = 0; j < n; ++j) acc[j] += g * R(widen(o[j]));
    }
    T* yt = y + t * d + run.first;
    for (index_t j = 0; j < n; ++j) yt[j] = convert<T>(acc[j]);
  });
}

// dgate[p] = <dy[t], out[row(p)]> for kept pairs (0 otherwise); dout[r] = gate · dy[t] (0 if empty).
template <class Space, class T, class R>
void combine_rows_backward(const Space& sp, const routing_plan<R>& plan, const row_state& st, const T* out,
                           const T* dy, R* dgate, T* dout) {
  const index_t d = plan.shape.d_model;
  const int K = plan.shape.pairs_per_token;
  if constexpr (has_row_kernels<Space>) {
    sp.pair_row_dots(plan.shape.pairs(), K, d, st.pair_row, dy, out, dgate);
    // dout[r] = gate[pair of r] · dy[token of r]: a gather scaled by the pair's gate.
    sp.gather_rows(st.rows.rows_bound, d, st.rows.row_token, st.rows.row_expert, st.rows.row_pair, plan.pair_gate,
                   dy, dout);
    return;
  }
  const int* pair_row = st.pair_row;
  sp.parallel_for(plan.shape.pairs(), [=] MOE_LAMBDA(index_t p) {
    const int r = pair_row[p];
    R acc = 0;
    if (r >= 0) {
      const T* dyt = dy + (p / K) * d;
      const T* o = out + index_t(r) * d;
      for (index_t j = 0; j < d; ++j) acc += R(widen(dyt[j])) * R(widen(o[j]));
    }
    dgate[p] = acc;
  });
  const int* row_pair = st.rows.row_pair;
  const int* row_expert = st.rows.row_expert;
  const R* gate = plan.pair_gate;
  constexpr index_t width = elementwise_columns<Space>();
  const index_t runs = (d + width - 1) / width;
  sp.parallel_for(st.rows.rows_bound * runs, [=] MOE_LAMBDA(index_t run_index) {
    const column_run run(run_index, runs, width, d);
    const index_t r = run.row;
    if (row_expert[r] < 0) return;
    const int p = row_pair[r];
    T* dst = dout + r * d;
    if (p >= 0) {
      const R g = gate[p];
      const T* src = dy + (p / K) * d;
      for (index_t j = run.first; j < run.end; ++j) dst[j] = convert<T>(g * R(widen(src[j])));
    } else {
      for (index_t j = run.first; j < run.end; ++j) dst[j] = T(0.0f);
    }
  });
}

// dx_acc[t] = Σ_{kept pairs p of t} dxp[row(p)]  (overwrites).
template <class Space, class T, class R>
void gather_rows_backward(const Space& sp, const row_state& st, int tokens, index_t d, const T* dxp, R* dx_acc) {
  if constexpr (has_row_kernels<Space>) {
    sp.combine_rows(index_t(tokens), d, st.token_offsets, st.token_pairs, st.pair_row, static_cast<const R*>(nullptr),
                    dxp, dx_acc);
    return;
  }
  const int* off = st.token_offsets;
  const int* pairs = st.token_pairs;
  const int* pair_row = st.pair_row;
  constexpr index_t width = elementwise_columns<Space>();
  const index_t runs = (d + width - 1) / width;
  sp.parallel_for(index_t(tokens) * runs, [=] MOE_LAMBDA(index_t run_index) {
    const column_run run(run_index, runs, width, d);
    const index_t t = run.row, n = run.end - run.first;
    R* acc = dx_acc + t * d + run.first;
    for (index_t j = 0; j < n; ++j) acc[j] = 0;
    for (int q = off[t]; q < off[t + 1]; ++q) {
      const T* src = dxp + index_t(pair_row[pairs[q]]) * d + run.first;
      for (index_t j = 0; j < n; ++j) acc[j] += R(widen(src[j]));
    }
  });
}

}  // namespace detail
}  // namespace moe

namespace moe::detail {

// The dispatch steps of the two row-gather dispatchers (sorted: packed rows; padded: C rows per
// segment); they differ only in the row layout.
template <bool Padded>
struct row_dispatch {
  using policy_kind = dispatch_kind;
  static constexpr bool needs_static_capacity = Padded;

  struct state {
    row_state rows;
  };

  // Packed rows never exceed the proposals (T·K) nor the slots (E·G·C); padded rows are the slots.
  static index_t rows_bound(const routing_shape& s) {
    const index_t slots = index_t(s.segments()) * s.capacity;
    return Padded ? slots : (s.pairs() < slots ? s.pairs() : slots);
  }
  template <class T, class R>
  static void carve(workspace_carver& w, const routing_shape& s, state& st) {
    row_state::carve(w, s, rows_bound(s), st.rows);
  }
  template <class T, class Space, class R>
  static void assign(const Space& sp, const routing_plan<R>& plan, state& st) {
    assign_rows(sp, plan, st.rows, Padded);
  }
  template <class Space, class T, class R>
  static void dispatch(const Space& sp, const routing_plan<R>& plan, const state& st, const T* x, T* xp) {
    gather_rows(sp, st.rows, plan.shape.d_model, x, xp);
  }
  template <class Space, class T, class R>
  static void combine(const Space& sp, const routing_plan<R>& plan, const state& st, const T* out, T* y) {
    combine_rows(sp, st.rows, plan.shape.tokens, plan.shape.d_model, plan.pair_gate, out, y);
  }
  template <class Space, class T, class R>
  static void combine_backward(const Space& sp, const routing_plan<R>& plan, const state& st, const T* out,
                               const T* dy, R* dgate, T* dout) {
    combine_rows_backward(sp, plan, st.rows, out, dy, dgate, dout);
  }
  template <class Space, class T, class R>
  static void dispatch_backward(const Space& sp, const routing_plan<R>& plan, const state& st, const T* dxp,
                                R* dx_acc) {
    gather_rows_backward(sp, st.rows, plan.shape.tokens, plan.shape.d_model, dxp, dx_acc);
  }
};

}  // namespace moe::detail
