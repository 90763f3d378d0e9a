// Must not compile: a router of the user's own that selects experts but has no select_backward (the
// gates would carry no gradient to the router). Expected: "the router does not satisfy moe::router_policy".
#include <moe/moe.hpp>

struct forward_only_router : moe::top_k {
  static void select_backward() = delete;
};

using rejected = moe::layer<float, forward_only_router>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
