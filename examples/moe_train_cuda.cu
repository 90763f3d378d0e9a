// moe-train's CUDA half: the same trainer (examples/trainer/run.hpp) on moe::cuda, one GPU, float32
// parameters and activations. Its own translation unit, compiled by nvcc, so that the host half
// stays plain C++.
#include <cuda_runtime_api.h>

#include <cstdio>

#include <moe/cuda.cuh>

#include "trainer/run.hpp"
#include "trainer/train_cuda.hpp"

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

template <class Preset, class DenseFFN>
int run_on(const options& o, const moe::cuda& space) {
  return run_rank<model<float, moe::cuda, Preset, DenseFFN>>(o, space, rank_context{});
}

}  // namespace

int train_cuda(const options& o) {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices < 1) {
    std::fprintf(stderr, "moe-train: --device cuda: no usable CUDA device (cudaGetDeviceCount: %s, %d devices)\n",
                 status == cudaSuccess ? "ok" : cudaGetErrorName(status), devices);
    return exit_no_device;
  }
  owned_stream stream;
  int code = 0;
  {
    const moe::cuda space(stream.s);
    switch (o.kind) {
      case preset::dense:  // builds no MoE layer: the preset type only completes the template
      case preset::switch_transformer: code = run_on<moe::presets::switch_transformer<float, moe::cuda>, moe::relu_ffn>(o, space); break;
      case preset::glam: code = run_on<moe::presets::glam<float, moe::cuda>, moe::geglu_ffn>(o, space); break;
      case preset::st_moe: code = run_on<moe::presets::st_moe<float, moe::cuda>, moe::geglu_ffn>(o, space); break;
    }
    space.synchronize();
  }
  return code;
}

}  // namespace trainer
