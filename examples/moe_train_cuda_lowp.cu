// moe-train on moe::cuda with 16-bit MoE layers (--precision bf16|fp16): float32 master weights in
// the optimiser, dynamic loss scaling for fp16 (examples/trainer/model.hpp).
#include "trainer/run_cuda.hpp"

namespace trainer {

int train_cuda_low_precision(const options& o, const moe::cuda& space) {
  return with_low_precision_preset<moe::cuda>(
      o, [&]<class Preset, class DenseFFN>() { return run_on<Preset, DenseFFN>(o, space); });
}

}  // namespace trainer
