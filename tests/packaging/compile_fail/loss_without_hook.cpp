// Must not compile: an auxiliary loss of the user's own that declares a logit-gradient hook
// (has_logit_grad) and does not define it. Expected: "a loss does not satisfy moe::aux_loss".
#include <moe/moe.hpp>

struct hookless_loss : moe::router_z_loss {
  static void logit_grad() = delete;
};

using rejected = moe::layer<float, moe::top_k, moe::losses<hookless_loss>>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
