// moe/capacity/capacity_factor.hpp — a fixed number of slots per expert per routing group.
//
// C = max(minimum, min(S, round(capacity_factor · S / E)))   (× k when scale_by_k)
// for a group of S tokens and E experts (Switch Transformer eq. 3; GShard; Mesh-TF
// `_top_2_gating`: min(group_size, int(group_size · CF / E)), then max(·, 4)). The factor has a
// training and an evaluation value (Switch and ST-MoE: 1.25 train, 2.0 eval).
//
// Proposals beyond C are dropped: the layer outputs zero for that (token, expert) pair and the
// residual connection carries the token. Order of filling (drop_order):
//   position: all first choices in token order, then all second choices, … (Mesh-TF, GShard);
//   bpr:      batch-prioritised routing (Riquelme et al. 2021, V-MoE): tokens ordered by their
//             top-1 router probability, highest first (ties to the lower position), first choices
//             of all tokens before second choices. ST-MoE lists it as an option.
// Expert-choice routing always fills by its own scores; `order` must stay `position` there.
#pragma once

#include <algorithm>
#include <cmath>

#include "moe/core/error.hpp"
#include "moe/core/policy.hpp"

namespace moe {

// How C·S/E is turned into an integer.
enum class capacity_rounding {
  floor,             // Mesh-TF, Switch, GShard: int(x)
  nearest,           // flaxformer: Python round(x), ties to even
  ceil_multiple_of_4 // ceil(x) rounded up to a multiple of 4 (praxis; friendly to tiled kernels)
};

enum class drop_order { position, bpr };

inline const char* to_string(drop_order o) { return o == drop_order::position ? "position" : "bpr"; }

struct capacity_factor {
  using policy_kind = capacity_kind;
  static constexpr const char* name = "capacity_factor";
  // Shapes are static: C is known on the host before any routing happens.
  static constexpr bool static_capacity = true;

  struct config {
    double train = 1.25;
    double eval = 2.0;
    capacity_rounding rounding = capacity_rounding::floor;
    int minimum = 4;          // Mesh-TF and flaxformer use 4
    bool scale_by_k = false;  // multiply by the pairs per token (some codes do, for top-2)
    drop_order order = drop_order::position;
    bool operator==(const config&) const = default;
  };

  static void check(const config& c, bool token_choice) {
    require(c.train > 0.0 && std::isfinite(c.train), "capacity_factor.train", "factor=", c.train, " must be > 0");
    require(c.eval > 0.0 && std::isfinite(c.eval), "capacity_factor.eval", "factor=", c.eval, " must be > 0");
    require(c.minimum >= 0, "capacity_factor.minimum", "minimum=", c.minimum, " must be >= 0");
    require(token_choice || c.order == drop_order::position, "capacity_factor.order",
            "order=bpr has no meaning for expert_choice routing (experts pick tokens by score); use position");
  }

  // Slots per expert per group of `group_tokens` tokens.
  static int capacity(const config& c, bool training, int group_tokens, int num_experts, int pairs_per_token) {
    const double factor = training ? c.train : c.eval;
    double x = factor * double(group_tokens) / double(num_experts);
    if (c.scale_by_k) x *= double(pairs_per_token);
    double rounded = 0;
    switch (c.rounding) {
      case capacity_rounding::floor: rounded = std::floor(x); break;
      case capacity_rounding::nearest: rounded = std::nearbyint(x); break;
      case capacity_rounding::ceil_multiple_of_4: rounded = std::ceil(std::ceil(x) / 4.0) * 4.0; break;
    }
    const double capped = std::min(double(group_tokens), rounded);
    return int(std::max(double(c.minimum), capped));
  }

  static drop_order order(const config& c) { return c.order; }
};

}  // namespace moe
