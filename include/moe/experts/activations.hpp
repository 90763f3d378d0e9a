// moe/experts/activations.hpp — element-wise activations of the expert FFN, with derivatives.
#pragma once

#include <cmath>
#include <concepts>

#include "moe/core/config.hpp"
#include "moe/core/math.hpp"

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
  MOE_ALWAYS_INLINE static R f(R x) {
    return x > R(0) ? x : R(0);
  }
  template <class R>
  MOE_ALWAYS_INLINE static R df(R x) {
    return x > R(0) ? R(1) : R(0);
  }
};

// GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). This is the GELU of
// Mesh-TF, T5 v1.1 / flaxformer (jax.nn.gelu's default) and hence of GLaM's and ST-MoE's GEGLU.
// Evaluated as x·σ(u), u = 2√(2/π)·(x + 0.044715·x³), since 0.5·(1 + tanh(y)) = σ(2y): the same
// function, with one exponential (moe::logistic: vectorisable in float, no overflow) and no
// cancellation in 1 + tanh for negative x:
//   f = x·σ(u),  f' = σ(u) + x·σ(u)·(1 − σ(u))·u'(x),  u'(x) = 2√(2/π)·(1 + 3·0.044715·x²).
struct gelu {
  static constexpr const char* name = "gelu";
  template <class R>
  MOE_ALWAYS_INLINE static R f(R x) {
    return x * logistic(u(x)).s;
  }
  template <class R>
  MOE_ALWAYS_INLINE static R df(R x) {
    const logistic_values<R> l = logistic(u(x));
    return l.s + x * l.ds * R(2 * 0.7978845608028654) * (R(1) + R(3 * 0.044715) * x * x);
  }

 private:
  template <class R>
  MOE_ALWAYS_INLINE static R u(R x) {
    return R(2 * 0.7978845608028654) * (x + R(0.044715) * x * x * x);
  }
};

// GELU with the exact Gaussian CDF: 0.5·x·(1 + erf(x/√2)) (PyTorch's default nn.GELU()).
struct gelu_exact {
  static constexpr const char* name = "gelu_exact";
  template <class R>
  MOE_ALWAYS_INLINE static R f(R x) {
    return R(0.5) * x * (R(1) + std::erf(x * R(0.7071067811865476)));
  }
  template <class R>
  MOE_ALWAYS_INLINE static R df(R x) {
    const R cdf = R(0.5) * (R(1) + std::erf(x * R(0.7071067811865476)));
    const R pdf = std::exp(R(-0.5) * x * x) * R(0.3989422804014327);
    return cdf + x * pdf;
  }
};

// SiLU / swish: x·σ(x) (the activation of SwiGLU); f' = σ(x) + x·σ(x)·(1 − σ(x)).
struct silu {
  static constexpr const char* name = "silu";
  template <class R>
  MOE_ALWAYS_INLINE static R f(R x) {
    return x * logistic(x).s;
  }
  template <class R>
  MOE_ALWAYS_INLINE static R df(R x) {
    const logistic_values<R> l = logistic(x);
    return l.s + x * l.ds;
  }
};

}  // namespace moe::activation
