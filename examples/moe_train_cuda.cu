// moe-train's CUDA half: the same trainer (examples/trainer/run.hpp) on moe::cuda, one GPU: float32,
// or (--precision bf16) bf16 MoE layers with float32 master weights. Its own translation unit, compiled by nvcc, so that the host half
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
    const bool bf16 = o.precision == "bf16";  // the parser rejects bf16 for the dense preset
    using moe::bfloat16;
    using moe::cuda;
    namespace mp = moe::presets;
    switch (o.kind) {
      case preset::dense:  // builds no MoE layer: the preset type only completes the template
        code = run_on<mp::switch_transformer<float, cuda>, moe::relu_ffn>(o, space);
        break;
      case preset::switch_transformer:
        code = bf16 ? run_on<mp::switch_transformer<bfloat16, cuda>, moe::relu_ffn>(o, space)
                    : run_on<mp::switch_transformer<float, cuda>, moe::relu_ffn>(o, space);
        break;
      case preset::glam:
        code = bf16 ? run_on<mp::glam<bfloat16, cuda>, moe::geglu_ffn>(o, space)
                    : run_on<mp::glam<float, cuda>, moe::geglu_ffn>(o, space);
        break;
      case preset::st_moe:
        code = bf16 ? run_on<mp::st_moe<bfloat16, cuda>, moe::geglu_ffn>(o, space)
                    : run_on<mp::st_moe<float, cuda>, moe::geglu_ffn>(o, space);
        break;
    }
    space.synchronize();
  }
  return code;
}

}  // namespace trainer
