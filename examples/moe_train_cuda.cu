// moe-train's CUDA half: the same trainer (examples/trainer/run.hpp) on moe::cuda, one GPU, float32
// (16-bit MoE layers: moe_train_cuda_lowp.cu, which compiles in parallel). Compiled by nvcc in
// translation units of their own, so that the host half stays plain C++.
#include <cuda_runtime_api.h>

#include <cstdio>

#include <moe/cuda.cuh>

#include "trainer/run_cuda.hpp"

namespace trainer {

namespace {

// A non-blocking stream that outlives the space and the model built on it.
struct owned_stream {
  cudaStream_t s = nullptr;
  owned_stream() { moe::cuda_detail::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~owned_stream() { cudaStreamDestroy(s); }
  owned_stream(const owned_stream&) = delete;
  owned_stream& operator=(const owned_stream&) = delete;
};

}  // namespace

int train_cuda(const options& o) {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices < 1) {
    std::fprintf(stderr, "moe-train: --device cuda: no usable CUDA device (cudaGetDeviceCount: %s, %d devices)\n",
                 status == cudaSuccess ? "ok" : cudaGetErrorName(status), devices);
    return exit_no_device;
  }
  if (o.ranks > 1) {
#if defined(MOE_TRAIN_NCCL)
    return train_cuda_ranks(o, devices);  // moe_train_cuda_ranks.cu
#else
    std::fprintf(stderr, "moe-train: --ranks %d with --device cuda: this build has no NCCL\n", o.ranks);
    return 2;
#endif
  }
  owned_stream stream;
  int code = 0;
  {
    const moe::cuda space(stream.s, space_options(o));
    code = o.precision != "fp32"
               ? train_cuda_low_precision(o, space)  // moe_train_cuda_lowp.cu
               : with_preset<float, moe::cuda>(
                     o.kind, [&]<class Preset, class DenseFFN>() { return run_on<Preset, DenseFFN>(o, space); });
    space.synchronize();
  }
  return code;
}

}  // namespace trainer
