// moe-train on moe::cuda with 16-bit MoE layers (--precision bf16|fp16): float32 master weights in
// the optimiser, dynamic loss scaling for fp16 (examples/trainer/model.hpp).
#include "trainer/run_cuda.hpp"

namespace trainer {

int train_cuda_low_precision(const options& o, const moe::cuda& space) {
  namespace mp = moe::presets;
  using moe::bfloat16;
  using moe::cuda;
  using moe::float16;
  const bool bf16 = o.precision == "bf16";
  switch (o.kind) {
    case preset::dense: break;  // the parser refuses 16-bit precision for the dense preset
    case preset::switch_transformer:
      return bf16 ? run_on<mp::switch_transformer<bfloat16, cuda>, moe::relu_ffn>(o, space)
                  : run_on<mp::switch_transformer<float16, cuda>, moe::relu_ffn>(o, space);
    case preset::glam:
      return bf16 ? run_on<mp::glam<bfloat16, cuda>, moe::geglu_ffn>(o, space)
                  : run_on<mp::glam<float16, cuda>, moe::geglu_ffn>(o, space);
    case preset::st_moe:
      return bf16 ? run_on<mp::st_moe<bfloat16, cuda>, moe::geglu_ffn>(o, space)
                  : run_on<mp::st_moe<float16, cuda>, moe::geglu_ffn>(o, space);
  }
  return 2;
}

}  // namespace trainer
