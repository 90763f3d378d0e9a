// moe-train --device cuda --ranks R with 16-bit MoE layers (--precision bf16|fp16): the
// instantiations of run_ranks for the bf16 and fp16 presets, in a translation unit of their own so
// that they compile in parallel with the float32 ones (moe_train_cuda_ranks.cu). The fp16 loss scale
// stays the same on every rank: an overflow on one makes the gradient norm, summed over ranks,
// non-finite on all, and all skip the update.
#include "trainer/run_cuda_ranks.hpp"

namespace trainer {

int train_cuda_ranks_low_precision(const options& o, const std::vector<moe::nccl_communicator>& comms,
                                   const std::vector<cudaStream_t>& streams) {
  namespace mp = moe::presets;
  using moe::bfloat16;
  using moe::cuda;
  using moe::float16;
  const bool bf16 = o.precision == "bf16";
  switch (o.kind) {
    case preset::dense: break;  // the parser refuses 16-bit precision for the dense preset
    case preset::switch_transformer:
      return bf16 ? run_ranks<mp::switch_transformer<bfloat16, cuda>, moe::relu_ffn>(o, comms, streams)
                  : run_ranks<mp::switch_transformer<float16, cuda>, moe::relu_ffn>(o, comms, streams);
    case preset::glam:
      return bf16 ? run_ranks<mp::glam<bfloat16, cuda>, moe::geglu_ffn>(o, comms, streams)
                  : run_ranks<mp::glam<float16, cuda>, moe::geglu_ffn>(o, comms, streams);
    case preset::st_moe:
      return bf16 ? run_ranks<mp::st_moe<bfloat16, cuda>, moe::geglu_ffn>(o, comms, streams)
                  : run_ranks<mp::st_moe<float16, cuda>, moe::geglu_ffn>(o, comms, streams);
  }
  return 2;
}

}  // namespace trainer
