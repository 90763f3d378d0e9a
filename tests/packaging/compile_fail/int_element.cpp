// Must not compile: int is not an element type. Expected: "T must be float, double, ...".
#include <moe/moe.hpp>

using rejected = moe::layer<int>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
