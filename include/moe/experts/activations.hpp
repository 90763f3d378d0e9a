// moe/experts/activations.hpp — element-wise activations of the expert FFN, with derivatives.
#pragma once

#include <cmath>
#include <concepts>

#include "moe/core/config.hpp"

namespace moe {

// What moe::ffn<Act> calls: a name and f, df as templates on the compute type (float here; the
// layer also instantiates them for double, and for the CUDA space as MOE_HOST_DEVICE functions).
template <class A>
concept expert_activation = requires(float x) {
  { A::name } -> std::convertible_to<const char*>;
  { A::template f<float>(x) } -> std::convertible_to<float>;
  { A::template df<float>(x) } -> std::convertible_to<float>;
};

}  // namespace moe

namespace moe::activation {

// max(0, x): the Switch Transformer's experts (T5 v1.0 FFN).
struct relu {
  static constexpr const char* name = "relu";
  template <class R>
  MOE_HOST_DEVICE static R f(R x) {
    return x > R(0) ? x : R(0);
  }
  template <class R>
  MOE_HOST_DEVICE static R df(R x) {
    return x > R(0) ? R(1) : R(0);
  }
};

// GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). This is the GELU of
// Mesh-TF, T5 v1.1 / flaxformer (jax.nn.gelu's default) and hence of GLaM's and ST-MoE's GEGLU.
struct gelu {
  static constexpr const char* name = "gelu";
  template <class R>
  MOE_HOST_DEVICE static R f(R x) {
    const R k = R(0.7978845608028654);  // √(2/π)
    return R(0.5) * x * (R(1) + std::tanh(k * (x + R(0.044715) * x * x * x)));
  }
  template <class R>
  MOE_HOST_DEVICE static R df(R x) {
    const R k = R(0.7978845608028654);
    const R t = std::tanh(k * (x + R(0.044715) * x * x * x));
    return R(0.5) * (R(1) + t) + R(0.5) * x * (R(1) - t * t) * k * (R(1) + R(3 * 0.044715) * x * x);
  }
};

// GELU with the exact Gaussian CDF: 0.5·x·(1 + erf(x/√2)) (PyTorch's default nn.GELU()).
struct gelu_exact {
  static constexpr const char* name = "gelu_exact";
  template <class R>
  MOE_HOST_DEVICE static R f(R x) {
    return R(0.5) * x * (R(1) + std::erf(x * R(0.7071067811865476)));
  }
  template <class R>
  MOE_HOST_DEVICE static R df(R x) {
    const R cdf = R(0.5) * (R(1) + std::erf(x * R(0.7071067811865476)));
    const R pdf = std::exp(R(-0.5) * x * x) * R(0.3989422804014327);
    return cdf + x * pdf;
  }
};

// SiLU / swish: x·σ(x) (the activation of SwiGLU).
struct silu {
  static constexpr const char* name = "silu";
  template <class R>
  MOE_HOST_DEVICE static R f(R x) {
    return x / (R(1) + std::exp(-x));
  }
  template <class R>
  MOE_HOST_DEVICE static R df(R x) {
    const R s = R(1) / (R(1) + std::exp(-x));
    return s * (R(1) + x * (R(1) - s));
  }
};

}  // namespace moe::activation
