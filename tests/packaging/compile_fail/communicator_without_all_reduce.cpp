// Must not compile: a communicator of the user's own that exchanges tokens but cannot all-reduce
// (the replicated router's gradients are summed over ranks). Expected: "Comm must satisfy
// moe::communicator".
#include <moe/moe.hpp>

struct no_all_reduce : moe::in_process_communicator {
  using moe::in_process_communicator::in_process_communicator;
  void all_reduce_sum() = delete;  // hides both of the base's overloads
};

using rejected = moe::expert_parallel<float, no_all_reduce>;
static_assert(sizeof(rejected) > 0);  // completing the type runs the layer's static_asserts
