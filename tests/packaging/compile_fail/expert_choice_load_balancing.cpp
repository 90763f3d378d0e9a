// Must not compile: the load-balancing loss needs token-choice routing; expert choice is balanced
// by construction. Expected: "load_balancing and importance need token-choice routing".
#include <moe/moe.hpp>

using rejected = moe::layer<float, moe::expert_choice, moe::losses<moe::load_balancing>>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
