// Must not compile: an expert activation of the user's own with f and no df (backward needs the
// derivative). Expected: "the activation does not satisfy moe::expert_activation".
#include <moe/moe.hpp>

struct no_derivative {
  static constexpr const char* name = "no_derivative";
  template <class R>
  static R f(R x) {
    return x * x;
  }
};

using rejected = moe::layer<float, moe::top_k, moe::ffn<no_derivative>>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
