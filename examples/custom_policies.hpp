// examples/custom_policies.hpp — two policies written outside the library, the way a user writes
// them: an expert activation and an auxiliary loss. docs/policies.md walks through them (it shows
// the code between the markers verbatim; tests/CMakeLists.txt checks that it does), the example
// program custom_policies.cpp trains a layer built with them, and tests/custom_policies_test.cpp
// checks their gradients by finite differences and their value by hand.
#pragma once

#include <cmath>

#include <moe/moe.hpp>

namespace example {

// [policies-begin]
// Squared ReLU, max(0, x)² (So et al. 2021, "Primer"). An activation is a struct with a name and
// f, df templated on the compute type; MOE_HOST_DEVICE makes it callable in CUDA kernels too.
struct squared_relu {
  static constexpr const char* name = "squared_relu";
  template <class R>
  MOE_HOST_DEVICE static R f(R x) {
    return x > R(0) ? x * x : R(0);
  }
  template <class R>
  MOE_HOST_DEVICE static R df(R x) {
    return x > R(0) ? R(2) * x : R(0);
  }
};
using squared_relu_ffn = moe::ffn<squared_relu>;  // moe::ffn<squared_relu, true>: its GLU form

// An auxiliary loss on the soft assignment alone: the KL divergence from the uniform distribution
// to each routing group's mean router probability P̄_ge = (1/S) Σ_{t ∈ g} p[t, e],
//   L = (1/G) Σ_g Σ_e (1/E) · log((1/E) / P̄_ge),
// zero when every expert receives the same mean probability. It reads the per-group probability
// sums the layer reduces once for every loss (loss_inputs::prob_sum = S · P̄) and declares its
// gradient as ∂L/∂p[t, e], one value for all tokens t of group g: −1 / (G · E · prob_sum[g, e]).
struct mean_probability_kl {
  using policy_kind = moe::loss_kind;
  static constexpr const char* name = "mean_probability_kl";  // its name in statistics().losses
  static constexpr bool needs_token_choice = false;  // it reads probabilities only: any router
  static constexpr bool has_prob_grad = true, has_logit_grad = false, has_gate_grad = false;

  struct config {
    double weight = 1e-2;
    bool operator==(const config&) const = default;  // expert-parallel ranks compare configs with it
  };
  struct named_config {  // the member users set: cfg.losses.mean_probability_kl.weight
    config mean_probability_kl;
  };
  MOE_HOST_DEVICE static const config& from(const named_config& n) { return n.mean_probability_kl; }

  // Unweighted; the layer multiplies by the weight. Divided by total_groups (not groups): under
  // expert parallelism each rank holds some of the groups and adds its part of the mean.
  template <class R>
  MOE_HOST_DEVICE static R value(const config&, const moe::loss_inputs<R>& in) {
    const R E = R(in.experts), S = R(in.group_tokens);
    R total = 0;
    for (int g = 0; g < in.groups; ++g)
      for (int e = 0; e < in.experts; ++e) total -= std::log(E * in.prob_sum[g * in.experts + e] / S) / E;
    return total / R(in.total_groups);
  }
  template <class R>
  MOE_HOST_DEVICE static R prob_grad(const config&, const moe::loss_inputs<R>& in, int g, int e) {
    return R(-1) / (R(in.total_groups) * R(in.experts) * in.prob_sum[g * in.experts + e]);
  }
};
// [policies-end]

}  // namespace example
