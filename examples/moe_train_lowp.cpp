// moe-train with 16-bit MoE layers on the host (--precision bf16|fp16): the instantiations of the
// trainer for the bf16 and fp16 presets, in a translation unit of their own so that they compile in
// parallel with the float32 ones (moe_train.cpp).
#include <moe/moe.hpp>

#include "trainer/run.hpp"
#include "trainer/train_cuda.hpp"

namespace trainer {

int train_host_low_precision(const options& o) {
  namespace mp = moe::presets;
  using moe::bfloat16;
  using moe::float16;
  const bool bf16 = o.precision == "bf16";
  switch (o.kind) {
    case preset::dense: break;  // the parser refuses 16-bit precision for the dense preset
    case preset::switch_transformer:
      return bf16 ? train<mp::switch_transformer<bfloat16>, moe::relu_ffn>(o)
                  : train<mp::switch_transformer<float16>, moe::relu_ffn>(o);
    case preset::glam:
      return bf16 ? train<mp::glam<bfloat16>, moe::geglu_ffn>(o) : train<mp::glam<float16>, moe::geglu_ffn>(o);
    case preset::st_moe:
      return bf16 ? train<mp::st_moe<bfloat16>, moe::geglu_ffn>(o) : train<mp::st_moe<float16>, moe::geglu_ffn>(o);
  }
  return 2;
}

}  // namespace trainer
