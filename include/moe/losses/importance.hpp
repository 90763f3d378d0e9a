// moe/losses/importance.hpp — the importance loss of Shazeer et al. 2017 (§4, eq. 6–7).
//
// Importance_e = Σ_t gate[t, e] over a group (the gates of the active (token, e) pairs, before
// capacity), L_imp = CV(Importance)² = Var / (Mean² + 1e-10) (population variance, as tensor2tensor's
// cv_squared), per group and averaged over groups.
#pragma once

#include "moe/core/config.hpp"
#include "moe/core/policy.hpp"
#include "moe/losses/loss_inputs.hpp"

namespace moe {

struct importance {
  using policy_kind = loss_kind;
  static constexpr const char* name = "importance";
  static constexpr bool needs_token_choice = true;
  static constexpr bool has_prob_grad = false, has_logit_grad = false, has_gate_grad = true;
  static constexpr double epsilon = 1e-10;

  struct config {
    double weight = 1e-2;  // w_importance (Shazeer et al. 2017 used 0.1 at their scale)
    bool operator==(const config&) const = default;
  };
  struct named_config {
    config importance;
  };
  MOE_HOST_DEVICE static const config& from(const named_config& n) { return n.importance; }

  template <class R>
  MOE_HOST_DEVICE static void moments(const loss_inputs<R>& in, int g, R* mean, R* var) {
    const R* imp = in.gate_sum + g * in.experts;
    R m = 0;
    for (int e = 0; e < in.experts; ++e) m += imp[e];
    m /= R(in.experts);
    R v = 0;
    for (int e = 0; e < in.experts; ++e) v += (imp[e] - m) * (imp[e] - m);
    *mean = m;
    *var = v / R(in.experts);
  }

  template <class R>
  MOE_HOST_DEVICE static R value(const config&, const loss_inputs<R>& in) {
    R total = 0;
    for (int g = 0; g < in.groups; ++g) {
      R m, v;
      moments(in, g, &m, &v);
      total += v / (m * m + R(epsilon));
    }
    return total / R(in.total_groups);
  }

  // ∂L/∂gate of every active pair (t ∈ g, e): ∂L/∂Importance_e of group g.
  template <class R>
  MOE_HOST_DEVICE static R gate_grad(const config&, const loss_inputs<R>& in, int g, int e) {
    R m, v;
    moments(in, g, &m, &v);
    const R denom = m * m + R(epsilon);
    const R E = R(in.experts);
    const R x = in.gate_sum[g * in.experts + e];
    return (R(2) * (x - m) / E / denom - v * R(2) * m / E / (denom * denom)) / R(in.total_groups);
  }
};

}  // namespace moe
