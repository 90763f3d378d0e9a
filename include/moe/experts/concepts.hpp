// moe/experts/concepts.hpp — what an expert FFN provides.
#pragma once

#include <concepts>

#include "moe/core/policy.hpp"
#include "moe/core/rng.hpp"
#include "moe/core/workspace.hpp"
#include "moe/experts/ffn.hpp"
#include "moe/host/space.hpp"

namespace moe {

// An expert FFN computes each expert's rows (the dispatcher's row layout, moe::row_map) forward and
// backward. Its parameters are the layer's moe::ffn_tensors (W_in, W_up when `gated`, W_out and
// their biases): the layer owns, initialises, names and checkpoints them, which is why the config
// carries the fields the layer reads (bias, multiplicative_bias, init_scale). moe::ffn<Activation,
// Gated> is the one provided, and a new activation (docs/policies.md) is the usual extension; a
// struct of one's own must match ffn's members. The concept checks them for float on the host.
template <class F>
concept expert_ffn =
    policy_of_kind<F, expert_kind> && std::default_initializable<typename F::config> &&
    requires(const typename F::config& c, workspace_carver& w, const expert_shape& s, ffn_activations<float>& a,
             const host& sp, const ffn_tensors<const float>& weights, const ffn_tensors<float>& grads,
             const row_map& rows, const float* in, float* out, const rng_stream& rng) {
      { F::name } -> std::convertible_to<const char*>;
      { F::gated } -> std::convertible_to<bool>;
      { c.bias } -> std::convertible_to<bool>;
      { c.multiplicative_bias } -> std::convertible_to<bool>;
      { c.init_scale } -> std::convertible_to<float>;
      F::check(c);
      F::template carve<float>(w, s, index_t(0), a);
      F::forward(sp, c, s, weights, rows, in, a, true, rng);
      F::backward(sp, c, s, weights, grads, rows, in, a, in, out, true, rng);
    };

}  // namespace moe
