// moe/core/policy.hpp — policy kinds, and finding a policy of a given kind in a list.
//
// A layer is `moe::layer<T, Policies...>`: the policies may come in any order and each names its
// kind through a nested `policy_kind` tag. Kinds left out take their defaults.
#pragma once

#include <type_traits>

namespace moe {

// The kinds of policy a layer is composed of (DESIGN.md §2).
struct router_kind {};
struct capacity_kind {};
struct loss_kind {};        // one auxiliary loss
struct loss_set_kind {};    // moe::losses<...>, the set a layer uses
struct expert_kind {};
struct dispatch_kind {};

template <class P, class Kind>
concept policy_of_kind = requires { typename P::policy_kind; } && std::is_same_v<typename P::policy_kind, Kind>;

namespace detail {

template <class Kind, class... Ps>
inline constexpr int count_of_kind = (0 + ... + int(policy_of_kind<Ps, Kind>));

template <class Kind, class Default, class... Ps>
struct find_policy {
  using type = Default;
};
template <class Kind, class Default, class P, class... Ps>
struct find_policy<Kind, Default, P, Ps...> {
  using type = std::conditional_t<policy_of_kind<P, Kind>, P, typename find_policy<Kind, Default, Ps...>::type>;
};

}  // namespace detail

// The policy of kind Kind among Ps, or Default when none is given.
template <class Kind, class Default, class... Ps>
using policy_or_default = typename detail::find_policy<Kind, Default, Ps...>::type;

}  // namespace moe
