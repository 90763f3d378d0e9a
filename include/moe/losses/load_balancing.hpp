// moe/losses/load_balancing.hpp — the Switch Transformer load-balancing loss.
//
// L_B = E · Σ_i f_i · P_i  per routing group, averaged over groups (Switch eq. 4–6; GShard's
// auxiliary loss; flaxformer `load_balancing_loss`), where
//   f_i = fraction of the group's tokens whose choice is expert i (no gradient),
//   P_i = mean router probability of expert i over the group.
// f counts either only first choices (Switch, Mesh-TF top-2) or any of the k choices (flaxformer
// counts every selected expert: then Σ_i f_i = k). Counts are taken before capacity drops.
// The minimum, E·Σ f_i P_i = 1, is reached at uniform routing (for first-choice counts).
#pragma once

#include "moe/core/config.hpp"
#include "moe/core/policy.hpp"
#include "moe/losses/loss_inputs.hpp"

namespace moe {

enum class load_balancing_count { first_choice, any_choice };

struct load_balancing {
  using policy_kind = loss_kind;
  static constexpr const char* name = "load_balancing";
  static constexpr bool needs_token_choice = true;  // expert choice is balanced by construction
  static constexpr bool has_prob_grad = true, has_logit_grad = false, has_gate_grad = false;

  struct config {
    double weight = 1e-2;  // α (Switch: 1e-2)
    load_balancing_count count = load_balancing_count::first_choice;
    bool operator==(const config&) const = default;
  };
  struct named_config {
    config load_balancing;
  };
  MOE_HOST_DEVICE static const config& from(const named_config& n) { return n.load_balancing; }

  template <class R>
  MOE_HOST_DEVICE static const R* counts(const config& c, const loss_inputs<R>& in) {
    return c.count == load_balancing_count::first_choice ? in.first_count : in.choice_count;
  }

  template <class R>
  MOE_HOST_DEVICE static R value(const config& c, const loss_inputs<R>& in) {
    const R* f = counts(c, in);
    R total = 0;
    for (int g = 0; g < in.groups; ++g) {
      R s = 0;
      for (int e = 0; e < in.experts; ++e) s += f[g * in.experts + e] * in.prob_sum[g * in.experts + e];
      total += s * R(in.experts) / (R(in.group_tokens) * R(in.group_tokens));
    }
    return total / R(in.total_groups);
  }

  // ∂L/∂p[t, e] for every token t of group g.
  template <class R>
  MOE_HOST_DEVICE static R prob_grad(const config& c, const loss_inputs<R>& in, int g, int e) {
    const R f = counts(c, in)[g * in.experts + e] / R(in.group_tokens);
    return R(in.experts) * f / (R(in.group_tokens) * R(in.total_groups));
  }
};

}  // namespace moe
