// moe-train — the reference trainer: a small decoder-only language model whose FFNs follow a
// preset's layout (dense, Switch Transformer, GLaM or ST-MoE), trained end to end on the host or,
// in builds with CUDA, on one GPU (--device cuda: moe_train_cuda.cu). See examples/trainer/ and
// `moe-train --help`.
#include <cstdio>
#include <string>

#include <moe/moe.hpp>

#include "trainer/checkpoint.hpp"
#include "trainer/cli.hpp"
#include "trainer/exit_status.hpp"
#include "trainer/run.hpp"
#include "trainer/train_cuda.hpp"

namespace {

int train_preset(const trainer::options& o) {
  using namespace trainer;
  if (o.precision != "fp32") return train_host_low_precision(o);  // moe_train_lowp.cpp
  return with_preset<float, moe::host>(o.kind,
                                       [&]<class Preset, class DenseFFN>() { return train<Preset, DenseFFN>(o); });
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
  return trainer::exit_status_of([&] {
    if (o.device == "cuda") {
#if defined(MOE_TRAIN_CUDA)
      return trainer::train_cuda(o);  // moe-train: through the CUDA module (moe_train_cuda_loader.cpp)
#else
      std::fprintf(stderr, "moe-train: --device cuda: this build has no CUDA (configure with nvcc on PATH); use "
                           "--device host\n");
      return 2;
#endif
    }
    return train_preset(o);
  });
}
