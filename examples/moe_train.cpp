// moe-train — the reference trainer: a small decoder-only language model whose FFNs follow a
// preset's layout (dense, Switch Transformer, GLaM or ST-MoE), trained end to end on the host or,
// in builds with CUDA, on one GPU (--device cuda: moe_train_cuda.cu). See examples/trainer/ and
// `moe-train --help`.
#include <cstdio>
#include <exception>
#include <string>

#include <moe/moe.hpp>

#include "trainer/checkpoint.hpp"
#include "trainer/cli.hpp"
#include "trainer/run.hpp"
#include "trainer/train_cuda.hpp"

namespace {

int train_preset(const trainer::options& o) {
  using namespace trainer;
  if (o.precision != "fp32") return train_host_low_precision(o);  // moe_train_lowp.cpp
  switch (o.kind) {
    case preset::dense:  // builds no MoE layer: the preset type only completes the template
      return train<moe::presets::switch_transformer<float>, moe::relu_ffn>(o);
    case preset::switch_transformer: return train<moe::presets::switch_transformer<float>, moe::relu_ffn>(o);
    case preset::glam: return train<moe::presets::glam<float>, moe::geglu_ffn>(o);
    case preset::st_moe: return train<moe::presets::st_moe<float>, moe::geglu_ffn>(o);
  }
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  trainer::options o;
  try {
    o = trainer::parse_options(argc, argv);
  } catch (const trainer::usage_error& e) {
    if (std::string(e.what()) == "help") {
      std::fputs(trainer::usage_text, stdout);
      return 0;
    }
    std::fprintf(stderr, "moe-train: %s\n", e.what());
    return 2;
  }
  try {
    if (o.device == "cuda") {
#if defined(MOE_TRAIN_CUDA)
      return trainer::train_cuda(o);
#else
      std::fprintf(stderr, "moe-train: --device cuda: this build has no CUDA (configure with nvcc on PATH); use "
                           "--device host\n");
      return 2;
#endif
    }
    return train_preset(o);
  } catch (const trainer::checkpoint_error& e) {
    std::fprintf(stderr, "moe-train: %s\n", e.what());
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-train: %s\n", e.what());
    return 1;
  }
}
