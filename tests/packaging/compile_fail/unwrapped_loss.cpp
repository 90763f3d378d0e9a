// Must not compile: an auxiliary loss given directly instead of inside moe::losses<...>.
// Expected: "wrap auxiliary losses in moe::losses<...>".
#include <moe/moe.hpp>

using rejected = moe::layer<float, moe::top_k, moe::load_balancing>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
