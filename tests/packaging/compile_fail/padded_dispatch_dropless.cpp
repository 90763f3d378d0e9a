// Must not compile: padded_dispatch lays tokens out as [E, C, d], and dropless has no static
// capacity C. Expected: "padded_dispatch and one_hot_dispatch need a static capacity".
#include <moe/moe.hpp>

using rejected = moe::layer<float, moe::padded_dispatch, moe::dropless>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
