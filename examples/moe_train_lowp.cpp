// moe-train with 16-bit MoE layers on the host (--precision bf16|fp16): the instantiations of the
// trainer for the bf16 and fp16 presets, in a translation unit of their own so that they compile in
// parallel with the float32 ones (moe_train.cpp).
#include <moe/moe.hpp>

#include "trainer/run.hpp"
#include "trainer/train_cuda.hpp"

namespace trainer {

int train_host_low_precision(const options& o) {
  return with_low_precision_preset<moe::host>(
      o, [&]<class Preset, class DenseFFN>() { return train<Preset, DenseFFN>(o); });
}

}  // namespace trainer
