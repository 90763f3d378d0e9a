// Must not compile: a capacity policy of the user's own that says how many slots each expert has
// but not in which order proposals fill them. Expected: "the capacity policy does not satisfy
// moe::capacity_policy".
#include <moe/moe.hpp>

struct unordered_capacity {
  using policy_kind = moe::capacity_kind;
  static constexpr const char* name = "unordered";
  static constexpr bool static_capacity = true;
  struct config {
    double factor = 1.25;
  };
  static void check(const config&, bool) {}
  static int capacity(const config& c, bool, int group_tokens, int num_experts, int) {
    return int(c.factor * group_tokens / num_experts);
  }
};

using rejected = moe::layer<float, moe::top_k, unordered_capacity>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
