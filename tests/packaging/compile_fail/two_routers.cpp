// Must not compile: two policies of one kind (two routers). Expected: "more than one router given".
#include <moe/moe.hpp>

using rejected = moe::layer<float, moe::top_k, moe::expert_choice>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
