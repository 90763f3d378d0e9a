// Must not compile: a dispatcher of the user's own that has no combine_backward (every step of a
// layer must have its backward). Expected: "the dispatcher does not satisfy moe::dispatcher".
#include <moe/moe.hpp>

struct forward_only_dispatch {
  using policy_kind = moe::dispatch_kind;
  static constexpr const char* name = "forward_only";
  static constexpr bool needs_static_capacity = false;
  using base = moe::sorted_dispatch;
  using state = base::state;
  template <class T, class R>
  static void carve(moe::workspace_carver& w, const moe::routing_shape& s, state& st) {
    base::carve<T, R>(w, s, st);
  }
  template <class T, class Space, class R>
  static void assign(const Space& sp, const moe::routing_plan<R>& plan, state& st) {
    base::assign<T>(sp, plan, st);
  }
  template <class Space, class T, class R>
  static void dispatch(const Space& sp, const moe::routing_plan<R>& plan, const state& st, const T* x, T* xp) {
    base::dispatch(sp, plan, st, x, xp);
  }
  template <class Space, class T, class R>
  static void combine(const Space& sp, const moe::routing_plan<R>& plan, const state& st, const T* out, T* y) {
    base::combine(sp, plan, st, out, y);
  }
  template <class Space, class T, class R>
  static void dispatch_backward(const Space& sp, const moe::routing_plan<R>& plan, const state& st, const T* dxp,
                                R* dx_acc) {
    base::dispatch_backward(sp, plan, st, dxp, dx_acc);
  }
};

using rejected = moe::layer<float, moe::top_k, forward_only_dispatch>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
