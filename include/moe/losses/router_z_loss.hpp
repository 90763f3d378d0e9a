// moe/losses/router_z_loss.hpp — the ST-MoE router z-loss (Zoph et al. 2022, eq. 5).
//
// L_z = (1/T) Σ_t (log Σ_j exp(h_tj))²  over the final router logits h; it keeps logits small,
// which removed the training divergences of ST-MoE's stability study at no quality cost.
// ∂L_z/∂h_tj = (2/T) · lse_t · p_tj. (Averaging per group and then over equal groups is the same.)
#pragma once

#include "moe/core/config.hpp"
#include "moe/core/policy.hpp"
#include "moe/losses/loss_inputs.hpp"

namespace moe {

struct router_z_loss {
  using policy_kind = loss_kind;
  static constexpr const char* name = "router_z_loss";
  static constexpr bool needs_token_choice = false;
  static constexpr bool has_prob_grad = false, has_logit_grad = true, has_gate_grad = false;

  struct config {
    double weight = 1e-3;  // c_z (ST-MoE: 1e-3)
    bool operator==(const config&) const = default;
  };
  struct named_config {
    config router_z_loss;
  };
  MOE_HOST_DEVICE static const config& from(const named_config& n) { return n.router_z_loss; }

  template <class R>
  MOE_HOST_DEVICE static R value(const config&, const loss_inputs<R>& in) {
    R total = 0;
    for (int g = 0; g < in.groups; ++g) total += in.lse_sq_sum[g];
    return total / R(in.total_tokens);
  }

  // ∂L/∂h[t, e].
  template <class R>
  MOE_HOST_DEVICE static R logit_grad(const config&, const loss_inputs<R>& in, index_t t, int e) {
    return R(2) * in.lse[t] * in.probs[t * in.experts + e] / R(in.total_tokens);
  }
};

}  // namespace moe
