// Positive control for the compile_fail cases: built the same way, and it must compile. Expert
// choice with capacity_factor and only the router z-loss is the valid neighbour of the rejected
// expert_choice compositions; a harness that fails every build cannot pass this.
#include <moe/moe.hpp>

using accepted = moe::layer<float, moe::expert_choice, moe::capacity_factor, moe::losses<moe::router_z_loss>>;
static_assert(sizeof(accepted) > 0);  // completing the type runs the layer's static_asserts
static_assert(accepted::num_losses == 1);

// Constructing a config and asking for a capacity instantiates more than the class body.
int control_capacity() {
  accepted::config cfg{};
  cfg.d_model = 8;
  cfg.d_ff = 16;
  cfg.num_experts = 4;
  return accepted(cfg).capacity(64, true);
}
