// Must not compile: an expert FFN of the user's own with a forward and no backward (here moe::ffn's
// backward hidden). Expected: "the expert FFN does not satisfy moe::expert_ffn".
#include <moe/moe.hpp>

struct forward_only_ffn : moe::relu_ffn {
  static void backward() = delete;
};

using rejected = moe::layer<float, moe::top_k, forward_only_ffn>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
