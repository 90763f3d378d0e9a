// moe/losses/loss_set.hpp — the auxiliary losses a layer adds, each with its own weight.
//
//   moe::losses<moe::load_balancing, moe::router_z_loss>
//
// Total auxiliary loss = Σ weight_i · L_i; each loss's gradient enters the router (through the
// probabilities, the logits or the gates). Configure weights by name:
//   cfg.losses.load_balancing.weight = 1e-2;  cfg.losses.router_z_loss.weight = 1e-3;
#pragma once

#include <concepts>
#include <type_traits>

#include "moe/core/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/policy.hpp"
#include "moe/losses/loss_inputs.hpp"

namespace moe {

// One auxiliary loss: a value from the routing summary and gradient hooks it declares.
template <class L>
concept aux_loss = policy_of_kind<L, loss_kind> && std::default_initializable<typename L::config> &&
                   requires(const typename L::named_config& n, const loss_inputs<float>& in) {
                     { L::name } -> std::convertible_to<const char*>;
                     { L::needs_token_choice } -> std::convertible_to<bool>;
                     { L::has_prob_grad } -> std::convertible_to<bool>;
                     { L::has_logit_grad } -> std::convertible_to<bool>;
                     { L::has_gate_grad } -> std::convertible_to<bool>;
                     { L::from(n) } -> std::same_as<const typename L::config&>;
                     { L::template value<float>(L::from(n), in) } -> std::same_as<float>;
                     { L::from(n).weight } -> std::convertible_to<double>;
                   } &&
                   // Each gradient hook the loss declares, callable as the routing backward calls it
                   // (a declared hook that is missing would otherwise fail deep inside route.hpp).
                   (!L::has_prob_grad || requires(const typename L::config& c, const loss_inputs<float>& in) {
                     { L::template prob_grad<float>(c, in, 0, 0) } -> std::convertible_to<float>;
                   }) &&
                   (!L::has_logit_grad || requires(const typename L::config& c, const loss_inputs<float>& in) {
                     { L::template logit_grad<float>(c, in, index_t(0), 0) } -> std::convertible_to<float>;
                   }) &&
                   (!L::has_gate_grad || requires(const typename L::config& c, const loss_inputs<float>& in) {
                     { L::template gate_grad<float>(c, in, 0, 0) } -> std::convertible_to<float>;
                   });

// Checked with a static_assert rather than a constraint on Ls, so that the message names the
// concept the way moe::layer's checks of the other policy kinds do.
template <class... Ls>
struct losses {
  static_assert((aux_loss<Ls> && ...),
                "moe::losses<...>: a loss does not satisfy moe::aux_loss (docs/policies.md lists its members)");
  using policy_kind = loss_set_kind;
  static constexpr int count = int(sizeof...(Ls));
  static_assert(((detail::count_of_kind<loss_kind, Ls> == 1) && ...));

  // One named member per loss: cfg.load_balancing, cfg.router_z_loss, …
  struct config : Ls::named_config... {
    // Each loss's settings compared (a loss config without == makes the set's incomparable).
    friend bool operator==(const config& a, const config& b)
      requires(std::equality_comparable<typename Ls::config> && ...)
    {
      return (true && ... && (Ls::from(a) == Ls::from(b)));
    }
  };

  static constexpr bool needs_token_choice = (false || ... || Ls::needs_token_choice);
  static constexpr bool has_prob_grad = (false || ... || Ls::has_prob_grad);
  static constexpr bool has_logit_grad = (false || ... || Ls::has_logit_grad);
  static constexpr bool has_gate_grad = (false || ... || Ls::has_gate_grad);

  template <class L>
  static constexpr bool contains = (false || ... || std::is_same_v<L, Ls>);

  static constexpr const char* names[count + 1] = {Ls::name..., nullptr};

  static void check(const config& c) {
    (require(Ls::from(c).weight >= 0.0, "losses", Ls::name, ".weight=", Ls::from(c).weight, " must be >= 0"),
     ...);
  }

  // values[i] = L_i (unweighted); returns Σ weight_i · L_i.
  template <class R>
  MOE_HOST_DEVICE static R values([[maybe_unused]] const config& c, [[maybe_unused]] const loss_inputs<R>& in,
                                  [[maybe_unused]] R* values) {
    R total = 0;
    int i = 0;
    (((values[i] = Ls::template value<R>(Ls::from(c), in)), total += R(Ls::from(c).weight) * values[i], ++i), ...);
    (void)i;
    return total;
  }

  // Σ weight_i ∂L_i/∂p[t, e] for the tokens of group g (each hook is constant over the group).
  template <class R>
  MOE_HOST_DEVICE static R prob_grad([[maybe_unused]] const config& c, [[maybe_unused]] const loss_inputs<R>& in,
                               [[maybe_unused]] int g, [[maybe_unused]] int e) {
    R d = 0;
    ((d += prob_grad_one<Ls>(c, in, g, e)), ...);
    return d;
  }
  template <class R>
  MOE_HOST_DEVICE static R logit_grad([[maybe_unused]] const config& c, [[maybe_unused]] const loss_inputs<R>& in,
                               [[maybe_unused]] index_t t, [[maybe_unused]] int e) {
    R d = 0;
    ((d += logit_grad_one<Ls>(c, in, t, e)), ...);
    return d;
  }
  template <class R>
  MOE_HOST_DEVICE static R gate_grad([[maybe_unused]] const config& c, [[maybe_unused]] const loss_inputs<R>& in,
                               [[maybe_unused]] int g, [[maybe_unused]] int e) {
    R d = 0;
    ((d += gate_grad_one<Ls>(c, in, g, e)), ...);
    return d;
  }

 private:
  template <class L, class R>
  MOE_HOST_DEVICE static R prob_grad_one(const config& c, const loss_inputs<R>& in, int g, int e) {
    if constexpr (L::has_prob_grad) return R(L::from(c).weight) * L::template prob_grad<R>(L::from(c), in, g, e);
    else return R(0);
  }
  template <class L, class R>
  MOE_HOST_DEVICE static R logit_grad_one(const config& c, const loss_inputs<R>& in, index_t t, int e) {
    if constexpr (L::has_logit_grad) return R(L::from(c).weight) * L::template logit_grad<R>(L::from(c), in, t, e);
    else return R(0);
  }
  template <class L, class R>
  MOE_HOST_DEVICE static R gate_grad_one(const config& c, const loss_inputs<R>& in, int g, int e) {
    if constexpr (L::has_gate_grad) return R(L::from(c).weight) * L::template gate_grad<R>(L::from(c), in, g, e);
    else return R(0);
  }
};

}  // namespace moe
