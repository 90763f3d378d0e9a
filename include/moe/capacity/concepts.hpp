// moe/capacity/concepts.hpp — what a capacity policy provides.
#pragma once

#include <concepts>

#include "moe/capacity/capacity_factor.hpp"
#include "moe/core/policy.hpp"

namespace moe {

// A capacity policy says how many slots each expert has per routing group, and in which order
// proposals fill them. `static_capacity` is false when nothing is ever dropped (rows vary).
template <class P>
concept capacity_policy = policy_of_kind<P, capacity_kind> && std::default_initializable<typename P::config> &&
                          requires(const typename P::config& c) {
                            { P::name } -> std::convertible_to<const char*>;
                            { P::static_capacity } -> std::convertible_to<bool>;
                            P::check(c, true);
                            { P::capacity(c, true, 1, 1, 1) } -> std::same_as<int>;
                            { P::order(c) } -> std::same_as<drop_order>;
                          };

}  // namespace moe
