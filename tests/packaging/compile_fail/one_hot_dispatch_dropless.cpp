// Must not compile: one_hot_dispatch builds dense [T, E, C] tensors, and dropless has no static
// capacity C. Expected: "padded_dispatch and one_hot_dispatch need a static capacity".
#include <moe/moe.hpp>

using rejected = moe::layer<float, moe::top_k, moe::dropless, moe::one_hot_dispatch>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
