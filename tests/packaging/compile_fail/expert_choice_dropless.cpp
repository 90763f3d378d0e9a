// Must not compile: each expert picks its C best tokens, so expert choice needs a capacity; dropless
// has none. Expected: "expert_choice needs capacity_factor".
#include <moe/moe.hpp>

using rejected = moe::layer<float, moe::expert_choice, moe::dropless>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
