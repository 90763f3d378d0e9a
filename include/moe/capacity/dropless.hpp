// moe/capacity/dropless.hpp — no capacity limit: every proposal is computed (MegaBlocks, Gale et
// al. 2022; Megatron-Core's dropless mode). Buffers are sized by the upper bound S·k rows, so no
// host synchronisation is needed to size them; the number of rows each expert receives varies.
#pragma once

#include "moe/core/policy.hpp"
#include "moe/capacity/capacity_factor.hpp"

namespace moe {

struct dropless {
  using policy_kind = capacity_kind;
  static constexpr const char* name = "dropless";
  static constexpr bool static_capacity = false;

  struct config {
    bool operator==(const config&) const = default;
  };

  static void check(const config&, bool) {}

  // A token proposes itself to an expert at most once: S slots per expert always suffice.
  static int capacity(const config&, bool, int group_tokens, int, int) { return group_tokens; }
  static drop_order order(const config&) { return drop_order::position; }
};

}  // namespace moe
