// moe-train --device cuda --ranks R with 16-bit MoE layers (--precision bf16|fp16): the
// instantiations of run_ranks for the bf16 and fp16 presets, in a translation unit of their own so
// that they compile in parallel with the float32 ones (moe_train_cuda_ranks.cu). The fp16 loss scale
// stays the same on every rank: an overflow on one makes the gradient norm, summed over ranks,
// non-finite on all, and all skip the update.
#include "trainer/run_cuda_ranks.hpp"

namespace trainer {

int train_cuda_ranks_low_precision(const options& o, const std::vector<moe::nccl_communicator>& comms,
                                   const std::vector<cudaStream_t>& streams) {
  return with_low_precision_preset<moe::cuda>(
      o, [&]<class Preset, class DenseFFN>() { return run_ranks<Preset, DenseFFN>(o, comms, streams); });
}

}  // namespace trainer
