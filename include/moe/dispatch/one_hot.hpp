// moe/dispatch/one_hot.hpp — one-hot dispatch, the historical reference (GShard Algorithm 1;
// Mesh-TF and flaxformer): per routing group, a dense dispatch tensor D[S, E, C] (1 where token s
// takes slot c of expert e) and a combine tensor D·gate, applied with dense contractions:
//   expert inputs  X[e, g, c] = Σ_s D[g, s, e, c] · x[g, s]        ("gsec,gsd->egcd")
//   output         y[g, s]    = Σ_{e,c} combine[g, s, e, c] · out[e, g, c]
// Here each contraction is a sequence of GEMMs over the [S, E·C] matrices. It costs O(T·E·C·d) and
// T·E·C memory, and is kept to check the faster dispatchers against and to benchmark them.
#pragma once

#include "moe/core/numeric.hpp"
#include "moe/core/op.hpp"
#include "moe/core/policy.hpp"
#include "moe/dispatch/rows.hpp"

namespace moe {

struct one_hot_dispatch {
  using policy_kind = dispatch_kind;
  static constexpr const char* name = "one_hot";
  static constexpr bool needs_static_capacity = true;

  struct state {
    row_state rows;       // padded layout: row (e·G + g)·C + c
    void* dispatch = nullptr;  // [T, E·C] of T: the dispatch tensor, group g in rows g·S…
    void* combine = nullptr;   // [T, E·C] of T: dispatch · gate
    void* dcombine = nullptr;  // [T, E·C] of R: ∂L/∂combine
    void* y_acc = nullptr;     // [T, d] of R
  };

  static index_t rows_bound(const routing_shape& s) { return index_t(s.segments()) * s.capacity; }

  template <class T, class R>
  static void carve(workspace_carver& w, const routing_shape& s, state& st) {
    row_state::carve(w, s, rows_bound(s), st.rows);
    const index_t cells = index_t(s.tokens) * s.experts * s.capacity;
    st.dispatch = w.take<T>(cells);
    st.combine = w.take<T>(cells);
    st.dcombine = w.take<R>(cells);
    st.y_acc = w.take<R>(index_t(s.tokens) * s.d_model);
  }

  template <class T, class Space, class R>
  static void assign(const Space& sp, const routing_plan<R>& plan, state& st) {
    detail::assign_rows(sp, plan, st.rows, /*padded=*/true);
    const routing_shape s = plan.shape;
    const index_t EC = index_t(s.experts) * s.capacity;
    T* D = static_cast<T*>(st.dispatch);
    T* Cb = static_cast<T*>(st.combine);
    sp.fill_zero(D, sizeof(T) * std::size_t(s.tokens * EC));
    sp.fill_zero(Cb, sizeof(T) * std::size_t(s.tokens * EC));
    const int K = s.pairs_per_token, C = s.capacity;
    const int* slot = plan.pair_slot;
    const int* expert = plan.pair_expert;
    const R* gate = plan.pair_gate;
    sp.parallel_for(s.pairs(), [=] MOE_LAMBDA(index_t p) {
      if (slot[p] < 0) return;
      const index_t cell = (p / K) * EC + index_t(expert[p]) * C + slot[p];
      D[cell] = T(1.0f);
      Cb[cell] = convert<T>(gate[p]);
    });
  }

  template <class Space, class T, class R>
  static void dispatch(const Space& sp, const routing_plan<R>& plan, const state& st, const T* x, T* xp) {
    const routing_shape s = plan.shape;
    const index_t S = s.group_tokens, C = s.capacity, EC = index_t(s.experts) * C, d = s.d_model;
    const T* D = static_cast<const T*>(st.dispatch);
    for (int g = 0; g < s.groups; ++g)
      for (int e = 0; e < s.experts; ++e)
        sp.gemm(op::transpose, op::none, C, d, S, acc_t<T>(1), D + g * S * EC + e * C, EC, x + g * S * d, d,
                acc_t<T>(0), xp + (index_t(e) * s.groups + g) * C * d, d);
  }

  template <class Space, class T, class R>
  static void combine(const Space& sp, const routing_plan<R>& plan, const state& st, const T* out, T* y) {
    const routing_shape s = plan.shape;
    const index_t S = s.group_tokens, C = s.capacity, EC = index_t(s.experts) * C, d = s.d_model;
    const T* Cb = static_cast<const T*>(st.combine);
    R* acc = static_cast<R*>(st.y_acc);
    for (int g = 0; g < s.groups; ++g)
      for (int e = 0; e < s.experts; ++e)
        sp.gemm(op::none, op::none, S, d, C, R(1), Cb + g * S * EC + e * C, EC,
                out + (index_t(e) * s.groups + g) * C * d, d, R(e == 0 ? 0 : 1), acc + g * S * d, d);
    sp.parallel_for(index_t(s.tokens) * d, [=] MOE_LAMBDA(index_t i) { y[i] = convert<T>(acc[i]); });
  }

  template <class Space, class T, class R>
  static void combine_backward(const Space& sp, const routing_plan<R>& plan, const state& st, const T* out,
                               const T* dy, R* dgate, T* dout) {
    const routing_shape s = plan.shape;
    const index_t S = s.group_tokens, C = s.capacity, EC = index_t(s.experts) * C, d = s.d_model;
    const T* Cb = static_cast<const T*>(st.combine);
    R* dCb = static_cast<R*>(st.dcombine);
    for (int g = 0; g < s.groups; ++g)
      for (int e = 0; e < s.experts; ++e) {
        const index_t block = (index_t(e) * s.groups + g) * C * d;
        // ∂L/∂combine[g, :, e, :] = dy_g · out_blockᵀ;  ∂L/∂out_block = combine[g, :, e, :]ᵀ · dy_g
        sp.gemm(op::none, op::transpose, S, C, d, R(1), dy + g * S * d, d, out + block, d, R(0),
                dCb + g * S * EC + e * C, EC);
        sp.gemm(op::transpose, op::none, C, d, S, acc_t<T>(1), Cb + g * S * EC + e * C, EC, dy + g * S * d, d,
                acc_t<T>(0), dout + block, d);
      }
    const int K = s.pairs_per_token;
    const int* slot = plan.pair_slot;
    const int* expert = plan.pair_expert;
    const index_t Cc = C;
    sp.parallel_for(s.pairs(), [=] MOE_LAMBDA(index_t p) {
      dgate[p] = slot[p] < 0 ? R(0) : dCb[(p / K) * EC + index_t(expert[p]) * Cc + slot[p]];
    });
  }

  template <class Space, class T, class R>
  static void dispatch_backward(const Space& sp, const routing_plan<R>& plan, const state& st, const T* dxp,
                                R* dx_acc) {
    const routing_shape s = plan.shape;
    const index_t S = s.group_tokens, C = s.capacity, EC = index_t(s.experts) * C, d = s.d_model;
    const T* D = static_cast<const T*>(st.dispatch);
    for (int g = 0; g < s.groups; ++g)
      for (int e = 0; e < s.experts; ++e)
        sp.gemm(op::none, op::none, S, d, C, R(1), D + g * S * EC + e * C, EC,
                dxp + (index_t(e) * s.groups + g) * C * d, d, R(e == 0 ? 0 : 1), dx_acc + g * S * d, d);
  }
};

}  // namespace moe
