// moe/moe.hpp — everything that compiles with a plain C++20 compiler (no CUDA toolkit needed).
//
// Mixture-of-Experts layers that train, composed at compile time from policies:
//   routers       moe::top_k, moe::expert_choice
//   capacity      moe::capacity_factor, moe::dropless
//   aux losses    moe::losses<moe::load_balancing, moe::router_z_loss, moe::importance>
//   experts       moe::ffn<activation, gated>: relu_ffn, gelu_ffn, silu_ffn, reglu_ffn, geglu_ffn, swiglu_ffn
//   dispatch      moe::sorted_dispatch, moe::padded_dispatch, moe::one_hot_dispatch
//   space         moe::host (moe::cuda in <moe/cuda.cuh>)
//   layer         moe::layer<T, policies...>
//   parallelism   moe::expert_parallel<T, communicator, policies...>, moe::in_process_communicator
//                 (moe::nccl_communicator in <moe/parallel/nccl.cuh>)
//   presets       moe::presets::switch_transformer, glam, st_moe
#pragma once

#include "moe/core/buffer.hpp"
#include "moe/core/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/execution_space.hpp"
#include "moe/core/math.hpp"
#include "moe/core/numeric.hpp"
#include "moe/core/op.hpp"
#include "moe/core/policy.hpp"
#include "moe/core/rng.hpp"
#include "moe/core/tensor.hpp"
#include "moe/core/workspace.hpp"
#include "moe/host/space.hpp"
#include "moe/host/blas_kernels.hpp"
#include "moe/host/huge_pages.hpp"
#include "moe/routing/top_k.hpp"
#include "moe/routing/expert_choice.hpp"
#include "moe/capacity/capacity_factor.hpp"
#include "moe/capacity/dropless.hpp"
#include "moe/losses/load_balancing.hpp"
#include "moe/losses/router_z_loss.hpp"
#include "moe/losses/importance.hpp"
#include "moe/losses/loss_set.hpp"
#include "moe/experts/activations.hpp"
#include "moe/experts/ffn.hpp"
#include "moe/dispatch/sorted.hpp"
#include "moe/dispatch/padded.hpp"
#include "moe/dispatch/one_hot.hpp"
#include "moe/layer/statistics.hpp"
#include "moe/layer/layer.hpp"
#include "moe/parallel/communicator.hpp"
#include "moe/parallel/in_process.hpp"
#include "moe/parallel/expert_parallel.hpp"
#include "moe/presets/switch_transformer.hpp"
#include "moe/presets/glam.hpp"
#include "moe/presets/st_moe.hpp"
