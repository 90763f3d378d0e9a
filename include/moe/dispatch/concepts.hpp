// moe/dispatch/concepts.hpp — what a dispatcher provides.
#pragma once

#include <concepts>

#include "moe/core/policy.hpp"
#include "moe/core/workspace.hpp"
#include "moe/dispatch/rows.hpp"
#include "moe/host/space.hpp"
#include "moe/routing/plan.hpp"

namespace moe {

// A dispatcher moves the kept (token, expert) pairs' rows into the expert FFN's row layout and the
// FFN's outputs back, weighted by the gates; its backward is the reverse. Its `state` holds the
// workspace pieces it carves, and a `rows` member (moe::row_state) describing the row layout the
// expert FFN computes over (the layer's statistics read it too). `needs_static_capacity` says that
// its layout has C slots per expert and routing group, so dropless routing cannot use it.
// The steps are templates on the space and element types; the concept checks them for float on the
// host, where every dispatcher must work (the host space is the reference).
template <class D>
concept dispatcher =
    policy_of_kind<D, dispatch_kind> && std::default_initializable<typename D::state> &&
    requires(workspace_carver& w, const routing_shape& s, typename D::state& st, const typename D::state& cst,
             const host& sp, const routing_plan<float>& plan, const float* in, float* out, float* grad) {
      { D::name } -> std::convertible_to<const char*>;
      { D::needs_static_capacity } -> std::convertible_to<bool>;
      { st.rows } -> std::convertible_to<row_state&>;
      D::template carve<float, float>(w, s, st);  // <element, compute>
      D::template assign<float>(sp, plan, st);    // the row layout from the plan's kept pairs
      D::dispatch(sp, plan, cst, in, out);        // x -> rows
      D::combine(sp, plan, cst, in, out);         // expert outputs -> y (gate-weighted)
      D::combine_backward(sp, plan, cst, in, in, grad, out);  // (outputs, dy) -> (∂L/∂gate, ∂L/∂outputs)
      D::dispatch_backward(sp, plan, cst, in, grad);          // ∂L/∂rows -> ∂L/∂x (accumulated)
    };

}  // namespace moe
