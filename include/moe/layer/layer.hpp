// moe/layer/layer.hpp — a trainable Mixture-of-Experts layer composed from policies.
//
//   using my_moe = moe::layer<float,                          // activation / expert weight type
//                             moe::top_k,                     // router
//                             moe::capacity_factor,           // capacity
//                             moe::losses<moe::load_balancing, moe::router_z_loss>,
//                             moe::geglu_ffn,                 // expert FFN
//                             moe::sorted_dispatch,           // dispatcher
//                             moe::host>;                     // execution space
//
// Policies come in any order; a kind left out takes its default (top_k, capacity_factor, no losses,
// relu_ffn, sorted_dispatch, host). Runtime sizes and coefficients live in `config`.
//
//   x[T, d] ─► router ─► capacity ─► dispatch ─► experts ─► combine ─► y[T, d]
//
// forward() writes y, keeps what backward needs in the workspace and records the routing
// statistics; backward() takes ∂L/∂y, writes ∂L/∂x and accumulates the parameter gradients,
// including those of the auxiliary losses (whose value the statistics report: add it to the loss).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/capacity/capacity_factor.hpp"
#include "moe/capacity/concepts.hpp"
#include "moe/capacity/dropless.hpp"
#include "moe/core/buffer.hpp"
#include "moe/core/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/execution_space.hpp"
#include "moe/core/numeric.hpp"
#include "moe/core/policy.hpp"
#include "moe/core/rng.hpp"
#include "moe/core/tensor.hpp"
#include "moe/core/workspace.hpp"
#include "moe/dispatch/concepts.hpp"
#include "moe/dispatch/one_hot.hpp"
#include "moe/dispatch/padded.hpp"
#include "moe/dispatch/sorted.hpp"
#include "moe/experts/concepts.hpp"
#include "moe/experts/ffn.hpp"
#include "moe/host/space.hpp"
#include "moe/layer/statistics.hpp"
#include "moe/losses/loss_set.hpp"
#include "moe/routing/concepts.hpp"
#include "moe/routing/expert_choice.hpp"
#include "moe/routing/plan.hpp"
#include "moe/routing/route.hpp"
#include "moe/routing/top_k.hpp"

namespace moe {

// Per-call settings of forward().
struct step_context {
  bool training = true;    // jitter, noise, expert dropout and the training capacity factor
  std::uint32_t step = 0;  // keys the random streams: the same step draws the same numbers
};

// One named parameter tensor of a layer and its gradient.
template <class P, class G>
struct parameter_ref {
  const char* name;
  P* value;
  G* grad;
  int rank;
  index_t shape[3];
  index_t size() const {
    index_t n = 1;
    for (int i = 0; i < rank; ++i) n *= shape[i];
    return n;
  }
};

// Which parameter groups of a MoE layer backward computes gradients for; the others are frozen (as
// PyTorch's requires_grad = False): their weight-gradient GEMMs are skipped and their gradients are
// left as they are (zero after zero_grad()). ∂L/∂x is computed either way. Fine-tuning recipes
// freeze groups: ST-MoE's fine-tuning study updates all, only the non-MoE or only the MoE parameters.
// moe::expert_parallel: every rank must freeze the same groups (the router's gradient exchange is
// skipped when it is frozen).
struct trainable_parameters {
  bool router = true;   // router.w (and router.w_noise)
  bool experts = true;  // every experts.* tensor
};

namespace detail {

template <class P>
inline constexpr bool is_layer_policy = policy_of_kind<P, router_kind> || policy_of_kind<P, capacity_kind> ||
                                        policy_of_kind<P, loss_set_kind> || policy_of_kind<P, expert_kind> ||
                                        policy_of_kind<P, dispatch_kind> || execution_space<P>;

template <class Default, class... Ps>
struct find_space {
  using type = Default;
};
template <class Default, class P, class... Ps>
struct find_space<Default, P, Ps...> {
  using type = std::conditional_t<execution_space<P>, P, typename find_space<Default, Ps...>::type>;
};

template <class... Ps>
inline constexpr int count_spaces = (0 + ... + int(execution_space<Ps>));

// Parameter initialisation: element i of a tensor from its own Philox counter (tensor id in the high
// bits). `first` is the index of data[0] in the whole tensor, so a rank holding a slice of the
// experts initialises exactly the values a single layer holding them all would. A parallel index
// is a run of elements (the space's elementwise run) whose first draws are generated together
// (rng_stream::bits_n); the few rejected ones are redrawn by truncated_normal_from.
template <class Space, class P>
void fill_truncated_normal(const Space& sp, P* data, index_t n, float stddev, rng_stream s, std::uint64_t tensor_id,
                           index_t first = 0) {
  constexpr index_t run = elementwise_columns<Space>();
  s.step = 0;  // attempt 0 is drawn here; truncated_normal_from's redraws advance the step
  sp.parallel_for((n + run - 1) / run, [=] MOE_LAMBDA(index_t k) {
    const index_t i0 = k * run, count = n - i0 < run ? n - i0 : run;
    const std::uint64_t index0 = (tensor_id << 40) | std::uint64_t(first + i0);
    philox4x32 blocks[run];
    s.bits_n(index0, std::uint64_t(count), blocks);
    for (index_t j = 0; j < count; ++j) {
      const float z = truncated_normal_from(s, index0 + std::uint64_t(j), stddev, normal_from_block(blocks[j]));
      data[i0 + j] = convert<P>(z);
    }
  });
}
template <class Space, class P>
void fill_value(const Space& sp, P* data, index_t n, float v) {
  sp.parallel_for(n, [=] MOE_LAMBDA(index_t i) { data[i] = convert<P>(v); });
}

// Number of fixed entries of the statistics buffer after the losses: entropy, top-1 probability,
// logit max, logit rms, routed pairs, dropped pairs, tokens without expert, mean lse²; then routed
// and kept pairs per expert.
inline constexpr int stat_fixed = 8;

// Reduces the routing arrays of one call into `out` (space memory): per-token sums with the
// space's reductions (deterministic order), per-expert counts over the groups one thread per
// expert, then one small pass for the totals (integers held exactly in doubles: order-free).
template <int NumLosses, class Space, class R>
void reduce_statistics(const Space& sp, const routing_plan<R>& plan, const row_state& rows, double* out) {
  const routing_shape s = plan.shape;
  const int E = s.experts, G = s.groups, T_ = s.tokens, C = s.capacity;
  const int* token_count = rows.token_count;
  R* unrouted = plan.unrouted;
  sp.parallel_for(T_, [=] MOE_LAMBDA(index_t t) { unrouted[t] = token_count[t] == 0 ? R(1) : R(0); });
  R* sums = plan.stat_sums;
  sp.reduce_sum(plan.entropy, T_, sums + 0);
  sp.reduce_sum(plan.top1, T_, sums + 1);
  sp.reduce_max(plan.logit_absmax, T_, R(0), sums + 2);
  sp.reduce_sum(plan.logit_sumsq, T_, sums + 3);
  sp.reduce_sum(plan.unrouted, T_, sums + 4);
  sp.reduce_sum(plan.lse_sq_sum, G, sums + 5);
  const R* loss_values = plan.loss_values;
  const int* seg_count = plan.segment_count;
  double* q = out + 1 + NumLosses;
  // Routed and kept pairs per expert, one thread per expert (over its groups), then the totals.
  sp.parallel_for(E, [=] MOE_LAMBDA(index_t e) {
    double r = 0, k = 0;
    for (int g = 0; g < G; ++g) {
      const int c = seg_count[e * G + g];
      r += c;
      k += c < C ? c : C;
    }
    q[stat_fixed + e] = r;
    q[stat_fixed + E + e] = k;
  });
  sp.parallel_for(1, [=] MOE_LAMBDA(index_t) {
    out[0] = double(loss_values[NumLosses]);
    for (int i = 0; i < NumLosses; ++i) out[1 + i] = double(loss_values[i]);
    q[0] = double(sums[0]) / T_;
    q[1] = double(sums[1]) / T_;
    q[2] = double(sums[2]);
    q[3] = std::sqrt(double(sums[3]) / (double(T_) * E));
    double routed = 0, kept_total = 0;
    for (int e = 0; e < E; ++e) {
      routed += q[stat_fixed + e];
      kept_total += q[stat_fixed + E + e];
    }
    q[4] = routed;
    q[5] = routed - kept_total;
    q[6] = double(sums[4]);
    q[7] = double(sums[5]) / T_;
  });
}

// The policies, configuration and parameters of a MoE layer, and the routing steps that do not
// depend on where the experts live. moe::layer runs all experts locally; moe::expert_parallel
// (moe/parallel/expert_parallel.hpp) holds a slice of them and exchanges tokens with other ranks.
template <class T, class... Policies>
class layer_core {
  static_assert(is_element_v<T>, "moe::layer<T, ...>: T must be float, double, moe::bfloat16 or moe::float16");
  static_assert((is_layer_policy<Policies> && ...),
                "moe::layer<T, ...>: every argument after T must be a router (top_k, expert_choice), a capacity "
                "policy (capacity_factor, dropless), moe::losses<...>, an expert FFN (relu_ffn, geglu_ffn, ...), "
                "a dispatcher (sorted_dispatch, padded_dispatch, one_hot_dispatch) or an execution space; "
                "wrap auxiliary losses in moe::losses<...>");
  static_assert(count_of_kind<router_kind, Policies...> <= 1, "moe::layer: more than one router given");
  static_assert(count_of_kind<capacity_kind, Policies...> <= 1, "moe::layer: more than one capacity policy given");
  static_assert(count_of_kind<loss_set_kind, Policies...> <= 1,
                "moe::layer: more than one moe::losses<...> given; list every loss in one moe::losses<...>");
  static_assert(count_of_kind<expert_kind, Policies...> <= 1, "moe::layer: more than one expert FFN given");
  static_assert(count_of_kind<dispatch_kind, Policies...> <= 1, "moe::layer: more than one dispatcher given");
  static_assert(count_spaces<Policies...> <= 1, "moe::layer: more than one execution space given");

 public:
  using element_type = T;
  using compute_type = router_t<T>;  // the router's precision (float32, or double for T = double)
  using grad_type = acc_t<T>;        // gradients of the expert weights
  using router_type = policy_or_default<router_kind, top_k, Policies...>;
  using capacity_type = policy_or_default<capacity_kind, capacity_factor, Policies...>;
  using loss_set_type = policy_or_default<loss_set_kind, losses<>, Policies...>;
  using expert_type = policy_or_default<expert_kind, relu_ffn, Policies...>;
  using dispatch_type = policy_or_default<dispatch_kind, sorted_dispatch, Policies...>;
  using space_type = typename find_space<host, Policies...>::type;

  static_assert(router_policy<router_type>, "moe::layer: the router does not satisfy moe::router_policy");
  static_assert(capacity_policy<capacity_type>,
                "moe::layer: the capacity policy does not satisfy moe::capacity_policy");
  static_assert(expert_ffn<expert_type>, "moe::layer: the expert FFN does not satisfy moe::expert_ffn");
  static_assert(dispatcher<dispatch_type>, "moe::layer: the dispatcher does not satisfy moe::dispatcher");
  static_assert(!(dispatch_type::needs_static_capacity && !capacity_type::static_capacity),
                "moe::layer: padded_dispatch and one_hot_dispatch need a static capacity; use capacity_factor, or "
                "use sorted_dispatch for dropless routing");
  static_assert(router_type::token_choice || capacity_type::static_capacity,
                "moe::layer: expert_choice needs capacity_factor (each expert picks C tokens); dropless has no C");
  static_assert(router_type::token_choice || !loss_set_type::needs_token_choice,
                "moe::layer: load_balancing and importance need token-choice routing (top_k); expert_choice is "
                "balanced by construction, so use moe::losses<moe::router_z_loss> or no losses");

  using R = compute_type;
  static constexpr int num_losses = loss_set_type::count;

  struct config {
    int d_model = 0;
    int d_ff = 0;
    int num_experts = 0;
    int group_size = 0;          // tokens per routing group; 0 = the tokens of one call form one group
    std::uint64_t seed = 0;      // parameter initialisation and every random stream
    std::uint32_t layer_id = 0;  // separates the random streams of layers sharing a seed (< 2^24)
    typename router_type::config router{};
    typename capacity_type::config capacity{};
    typename loss_set_type::config losses{};
    typename expert_type::config expert{};
  };

  // Holds the router and experts [first_expert, first_expert + local_experts) of cfg.num_experts.
  layer_core(const config& cfg, const space_type& space, int first_expert, int local_experts)
      : cfg_(cfg), space_(space), first_expert_(first_expert), local_experts_(local_experts) {
    check_config(cfg_);
    allocate_parameters();
    init_parameters();
  }

  const config& get_config() const { return cfg_; }
  const space_type& space() const { return space_; }
  // The experts this object holds: [first_expert(), first_expert() + local_experts()).
  int first_expert() const { return first_expert_; }
  int local_experts() const { return local_experts_; }

  // Slots per expert per routing group for a call of `tokens` tokens.
  int capacity(index_t tokens, bool training) const {
    const int S = group_tokens(tokens);
    const int k_scale = router_type::token_choice ? pairs_per_token() : 1;
    return capacity_type::capacity(cfg_.capacity, training, S, cfg_.num_experts, k_scale);
  }

  // Sets every gradient to zero (backward accumulates).
  void zero_grad() {
    space_.fill_zero(router_grad_block_.data(), router_grad_block_.bytes());
    space_.fill_zero(expert_grad_block_.data(), expert_grad_block_.bytes());
  }

  void set_trainable(trainable_parameters t) { trainable_ = t; }
  trainable_parameters trainable() const { return trainable_; }

  // Calls f(parameter_ref<P, G>) for each parameter tensor: the router's (P = G = compute_type) and
  // the experts' (P = T, G = grad_type; the local experts only). Pointers are in the space's memory.
  template <class F>
  void for_each_parameter(F&& f) {
    const index_t d = cfg_.d_model, ff = cfg_.d_ff, E = cfg_.num_experts, L = local_experts_;
    f(parameter_ref<R, R>{"router.w", w_router_, g_router_, 2, {d, E, 0}});
    if (cfg_.router.learned_noise) f(parameter_ref<R, R>{"router.w_noise", w_noise_, g_noise_, 2, {d, E, 0}});
    const ffn_tensors<T>& w = experts_;
    const ffn_tensors<grad_type>& g = expert_grads_;
    f(parameter_ref<T, grad_type>{"experts.w_in", w.w_in, g.w_in, 3, {L, d, ff}});
    if (w.w_up) f(parameter_ref<T, grad_type>{"experts.w_up", w.w_up, g.w_up, 3, {L, d, ff}});
    f(parameter_ref<T, grad_type>{"experts.w_out", w.w_out, g.w_out, 3, {L, ff, d}});
    if (w.b_in) f(parameter_ref<T, grad_type>{"experts.b_in", w.b_in, g.b_in, 2, {L, ff, 0}});
    if (w.b_up) f(parameter_ref<T, grad_type>{"experts.b_up", w.b_up, g.b_up, 2, {L, ff, 0}});
    if (w.b_out) f(parameter_ref<T, grad_type>{"experts.b_out", w.b_out, g.b_out, 2, {L, d, 0}});
    if (w.scale) f(parameter_ref<T, grad_type>{"experts.scale", w.scale, g.scale, 2, {L, ff, 0}});
  }

  index_t parameter_count() {
    index_t n = 0;
    for_each_parameter([&](const auto& p) { n += p.size(); });
    return n;
  }

  // Direct views of the parameters and gradients (space memory).
  matrix_view<R> router_weights() { return {w_router_, cfg_.d_model, cfg_.num_experts}; }
  matrix_view<R> router_weight_grads() { return {g_router_, cfg_.d_model, cfg_.num_experts}; }
  const ffn_tensors<T>& expert_weights() { return experts_; }
  const ffn_tensors<grad_type>& expert_grads() { return expert_grads_; }

  // ---- building blocks of forward/backward (used by moe::layer and moe::expert_parallel) ------
  int pairs_per_token() const { return router_type::pairs_per_token(cfg_.router, cfg_.num_experts); }

  int group_tokens(index_t tokens) const {
    if (cfg_.group_size == 0) return int(tokens);
    require(tokens % cfg_.group_size == 0, "group_size", cfg_.group_size, " does not divide the ", tokens,
            " tokens of this call");
    return cfg_.group_size;
  }

  // The shape of a call of `tokens` tokens on one rank of `ranks` (rank's tokens start at
  // rank·tokens in the global batch).
  routing_shape shape_for(index_t tokens, bool training, int rank = 0, int ranks = 1) const {
    require(tokens >= 1 && tokens <= index_t(1) << 30, "forward", "tokens=", tokens, " must be in [1, 2^30]");
    routing_shape s;
    s.tokens = int(tokens);
    s.experts = cfg_.num_experts;
    s.group_tokens = group_tokens(tokens);
    s.groups = int(tokens / s.group_tokens);
    s.pairs_per_token = pairs_per_token();
    s.capacity = capacity(tokens, training);
    s.d_model = cfg_.d_model;
    s.total_tokens = tokens * ranks;
    s.total_groups = s.groups * ranks;
    s.token_base = tokens * rank;
    require(s.capacity >= 1, "capacity", "0 slots per expert for a group of ", s.group_tokens, " tokens and ",
            s.experts, " experts (", training ? "train" : "eval",
            " factor too small); raise the capacity factor or its minimum");
    require(s.pairs() < (index_t(1) << 31), "forward", "tokens x pairs per token = ", s.pairs(),
            " exceeds 2^31; split the call");
    return s;
  }

  void check_io(matrix_view<const T> x, matrix_view<T> y) const {
    const index_t tokens = x.extent[0];
    require(tokens >= 1, "forward", "x has ", tokens, " rows (tokens); at least 1 is needed");
    require(x.extent[1] == cfg_.d_model, "forward", "x has ", x.extent[1], " columns, expected d_model=", cfg_.d_model);
    require(y.extent[0] == tokens && y.extent[1] == cfg_.d_model, "forward", "y is [", y.extent[0], ", ",
            y.extent[1], "], expected [", tokens, ", ", cfg_.d_model, "] like x");
    require(x.data != nullptr && y.data != nullptr, "forward", "x and y must not be null");
  }

  void check_grad_io(index_t tokens, matrix_view<const T> dy, matrix_view<T> dx, double aux_loss_scale) const {
    require(dy.extent[0] == tokens && dy.extent[1] == cfg_.d_model, "backward", "dy is [", dy.extent[0], ", ",
            dy.extent[1], "], expected [", tokens, ", ", cfg_.d_model, "] like the forward's x");
    require(dx.extent[0] == tokens && dx.extent[1] == cfg_.d_model, "backward", "dx is [", dx.extent[0], ", ",
            dx.extent[1], "], expected [", tokens, ", ", cfg_.d_model, "]");
    require(std::isfinite(aux_loss_scale), "backward", "aux_loss_scale=", aux_loss_scale, " must be finite");
  }

  void carve_routing(workspace_carver& w, const routing_shape& s, routing_plan<R>& plan) const {
    const bool bpr = router_type::token_choice && capacity_type::order(cfg_.capacity) == drop_order::bpr;
    routing_plan<R>::template carve<space_type>(
        w, s,
        {.learned_noise = cfg_.router.learned_noise,
         .rounded_weights = cfg_.router.precision == router_precision::bfloat16,
         .bpr = bpr,
         .num_losses = num_losses},
        plan);
  }

  // Router, auxiliary-loss summary and capacity: everything up to the slots of the proposals.
  void route(const step_context& ctx, const T* x, const routing_plan<R>& plan) const {
    const router_streams rng = router_streams::make(cfg_.seed, cfg_.layer_id, ctx.step);
    const R* w_noise = cfg_.router.learned_noise ? w_noise_ : nullptr;
    router_forward<router_type>(space_, cfg_.router, plan, x, w_router_, w_noise, ctx.training, rng);
    routing_summary<router_type, loss_set_type>(space_, cfg_.losses, plan);
    assign_slots<router_type>(space_, plan, capacity_type::order(cfg_.capacity));
  }

  // From plan.dgate and plan.dx_acc: writes dx and the per-group router weight gradients
  // (plan.router_partials / noise_partials; the caller accumulates them).
  void route_backward(const routing_plan<R>& plan, T* dx, bool training, std::uint32_t step, R aux_scale) const {
    const router_streams rng = router_streams::make(cfg_.seed, cfg_.layer_id, step);
    router_backward<router_type, loss_set_type>(space_, cfg_.router, cfg_.losses, plan, w_router_,
                                                cfg_.router.learned_noise ? w_noise_ : nullptr, dx, training, rng,
                                                aux_scale, trainable_.router);
  }

  // grad(W_r) += Σ_g partial_g over `groups` partials in order (and W_noise); nothing when the
  // router is frozen (route_backward computed no partials).
  void accumulate_router_grads(const R* partials, const R* noise_partials, int groups) {
    if (!trainable_.router) return;
    const index_t n = index_t(cfg_.d_model) * cfg_.num_experts;
    accumulate_in_order(space_, partials, groups, n, g_router_);
    if (cfg_.router.learned_noise) accumulate_in_order(space_, noise_partials, groups, n, g_noise_);
  }

  expert_shape local_expert_shape() const {
    expert_shape s;
    s.experts = local_experts_;
    s.d_model = cfg_.d_model;
    s.d_ff = cfg_.d_ff;
    s.first_expert = first_expert_;
    s.total_experts = cfg_.num_experts;
    return s;
  }

  rng_stream dropout_stream(std::uint32_t step) const {
    return rng_stream{cfg_.seed, rng_purpose::expert_dropout, cfg_.layer_id, step};
  }

  ffn_tensors<const T> const_experts() const {
    const ffn_tensors<T>& w = experts_;
    return {w.w_in, w.w_up, w.w_out, w.b_in, w.b_up, w.b_out, w.scale};
  }
  const ffn_tensors<grad_type>& expert_grad_tensors() const { return expert_grads_; }
  // The gradients expert backward computes into: none (null tensors) when the experts are frozen.
  ffn_tensors<grad_type> expert_grads_to_compute() const {
    return trainable_.experts ? expert_grads_ : ffn_tensors<grad_type>{};
  }

  static constexpr int stat_fixed = detail::stat_fixed;
  int stats_size() const { return 1 + num_losses + stat_fixed + 2 * cfg_.num_experts; }

  // Decodes a statistics buffer (host copy) of a call of `tokens` tokens in `groups` groups.
  routing_statistics decode_statistics(const double* s, index_t tokens, int groups, int capacity,
                                       bool training) const {
    routing_statistics out;
    const int E = cfg_.num_experts, nl = num_losses;
    out.tokens = int(tokens);
    out.experts = E;
    out.groups = groups;
    out.capacity = capacity;
    out.training = training;
    out.aux_loss = s[0];
    for (int i = 0; i < nl; ++i) out.losses.emplace_back(loss_set_type::names[i], s[1 + i]);
    const double* q = s + 1 + nl;
    out.router_entropy = q[0];
    out.mean_top1_probability = q[1];
    out.router_logit_max = q[2];
    out.router_logit_rms = q[3];
    out.routed_pairs = std::int64_t(q[4]);
    out.dropped_pairs = std::int64_t(q[5]);
    out.tokens_without_expert = std::int64_t(q[6]);
    out.router_z = q[7];
    for (int e = 0; e < E; ++e) {
      out.routed_per_expert.push_back(std::int64_t(q[stat_fixed + e]));
      out.kept_per_expert.push_back(std::int64_t(q[stat_fixed + E + e]));
    }
    if (router_type::token_choice)
      out.dropped_fraction = out.routed_pairs ? double(out.dropped_pairs) / double(out.routed_pairs) : 0.0;
    else
      out.dropped_fraction = out.tokens ? double(out.tokens_without_expert) / double(out.tokens) : 0.0;
    return out;
  }

  // The per-pair decisions of a routing plan, copied to the host.
  routing_decisions decisions(const routing_plan<R>& plan) const {
    const routing_shape& s = plan.shape;
    const std::size_t P = std::size_t(s.pairs());
    routing_decisions out;
    out.tokens = s.tokens;
    out.pairs_per_token = s.pairs_per_token;
    out.expert.resize(P);
    out.active.resize(P);
    out.slot.resize(P);
    std::vector<R> gate(P);
    space_.synchronize();
    space_.copy_to_host(out.expert.data(), plan.pair_expert, P * sizeof(int));
    space_.copy_to_host(out.active.data(), plan.pair_active, P);
    space_.copy_to_host(out.slot.data(), plan.pair_slot, P * sizeof(int));
    space_.copy_to_host(gate.data(), plan.pair_gate, P * sizeof(R));
    out.gate.assign(gate.begin(), gate.end());
    return out;
  }

 protected:
  static void check_config(const config& c) {
    require(c.d_model >= 1, "d_model", "d_model=", c.d_model, " must be at least 1");
    require(c.d_ff >= 1, "d_ff", "d_ff=", c.d_ff, " must be at least 1");
    require(c.num_experts >= 1, "num_experts", "E=", c.num_experts, " must be at least 1");
    require(c.num_experts <= (1 << 20), "num_experts", "E=", c.num_experts, " exceeds 2^20");
    require(c.group_size >= 0, "group_size", "group_size=", c.group_size, " must be >= 0 (0 = one group per call)");
    require(c.layer_id < (1u << 24), "layer_id", "layer_id=", c.layer_id, " must be below 2^24");
    router_type::check(c.router, c.num_experts);
    capacity_type::check(c.capacity, router_type::token_choice);
    loss_set_type::check(c.losses);
    expert_type::check(c.expert);
  }

  // Parameter blocks: router (R) with gradients (R); local experts (T) with gradients (grad_type).
  template <class P>
  static void carve_experts(workspace_carver& w, const config& c, index_t E, ffn_tensors<P>& t) {
    const index_t d = c.d_model, ff = c.d_ff;
    t.w_in = w.take<P>(E * d * ff);
    t.w_up = expert_type::gated ? w.take<P>(E * d * ff) : nullptr;
    t.w_out = w.take<P>(E * ff * d);
    t.b_in = c.expert.bias ? w.take<P>(E * ff) : nullptr;
    t.b_up = c.expert.bias && expert_type::gated ? w.take<P>(E * ff) : nullptr;
    t.b_out = c.expert.bias ? w.take<P>(E * d) : nullptr;
    t.scale = c.expert.multiplicative_bias ? w.take<P>(E * ff) : nullptr;
  }
  static void carve_router(workspace_carver& w, const config& c, R*& weights, R*& noise) {
    const index_t n = index_t(c.d_model) * c.num_experts;
    weights = w.take<R>(n);
    noise = c.router.learned_noise ? w.take<R>(n) : nullptr;
  }

  void allocate_parameters() {
    R *a = nullptr, *b = nullptr;
    workspace_carver size_router;
    carve_router(size_router, cfg_, a, b);
    router_block_ = buffer<space_type>(space_, size_router.bytes());
    router_grad_block_ = buffer<space_type>(space_, size_router.bytes());
    workspace_carver wr(router_block_.data(), router_block_.bytes());
    workspace_carver gr(router_grad_block_.data(), router_grad_block_.bytes());
    carve_router(wr, cfg_, w_router_, w_noise_);
    carve_router(gr, cfg_, g_router_, g_noise_);

    ffn_tensors<T> tmp_t;
    ffn_tensors<grad_type> tmp_g;
    workspace_carver size_t_, size_g;
    carve_experts(size_t_, cfg_, local_experts_, tmp_t);
    carve_experts(size_g, cfg_, local_experts_, tmp_g);
    expert_block_ = buffer<space_type>(space_, size_t_.bytes());
    expert_grad_block_ = buffer<space_type>(space_, size_g.bytes());
    workspace_carver we(expert_block_.data(), expert_block_.bytes());
    workspace_carver ge(expert_grad_block_.data(), expert_grad_block_.bytes());
    carve_experts(we, cfg_, local_experts_, experts_);
    carve_experts(ge, cfg_, local_experts_, expert_grads_);
    zero_grad();
  }

  // Initialisation (same values in every space and on every rank: Philox keyed by seed, layer,
  // tensor and element index in the whole [E, …] tensor):
  // W_r, W_in, W_up ~ TN(0, init_scale / d_model), W_out ~ TN(0, init_scale / d_ff) (truncated at
  // two standard deviations; Switch §2.4 / Mesh-TF), W_noise = 0 (Shazeer 2017), biases 0, scales 1.
  void init_parameters() {
    const index_t d = cfg_.d_model, ff = cfg_.d_ff, E = cfg_.num_experts, L = local_experts_, f0 = first_expert_;
    const rng_stream s{cfg_.seed, rng_purpose::init, cfg_.layer_id, 0};
    fill_truncated_normal(space_, w_router_, d * E, std::sqrt(cfg_.router.init_scale / float(d)), s, 1);
    if (w_noise_) fill_value(space_, w_noise_, d * E, 0.0f);
    const float s_in = std::sqrt(cfg_.expert.init_scale / float(d));
    const float s_out = std::sqrt(cfg_.expert.init_scale / float(ff));
    fill_truncated_normal(space_, experts_.w_in, L * d * ff, s_in, s, 2, f0 * d * ff);
    if (experts_.w_up) fill_truncated_normal(space_, experts_.w_up, L * d * ff, s_in, s, 3, f0 * d * ff);
    fill_truncated_normal(space_, experts_.w_out, L * ff * d, s_out, s, 4, f0 * ff * d);
    if (experts_.b_in) fill_value(space_, experts_.b_in, L * ff, 0.0f);
    if (experts_.b_up) fill_value(space_, experts_.b_up, L * ff, 0.0f);
    if (experts_.b_out) fill_value(space_, experts_.b_out, L * d, 0.0f);
    if (experts_.scale) fill_value(space_, experts_.scale, L * ff, 1.0f);
  }

  config cfg_;
  space_type space_;
  int first_expert_ = 0;
  int local_experts_ = 0;
  buffer<space_type> router_block_, router_grad_block_, expert_block_, expert_grad_block_;
  R *w_router_ = nullptr, *w_noise_ = nullptr, *g_router_ = nullptr, *g_noise_ = nullptr;
  ffn_tensors<T> experts_;
  ffn_tensors<grad_type> expert_grads_;
  trainable_parameters trainable_;
};

}  // namespace detail

// A MoE layer holding all its experts. See the top of this file.
template <class T, class... Policies>
class layer : public detail::layer_core<T, Policies...> {
  using core = detail::layer_core<T, Policies...>;

 public:
  using typename core::compute_type;
  using typename core::config;
  using typename core::dispatch_type;
  using typename core::element_type;
  using typename core::expert_type;
  using typename core::grad_type;
  using typename core::R;
  using typename core::space_type;

  explicit layer(const config& cfg, const space_type& space = space_type{})
      : core(cfg, space, 0, cfg.num_experts) {
    stats_ = buffer<space_type>(this->space_, sizeof(double) * std::size_t(this->stats_size()));
    this->space_.fill_zero(stats_.data(), stats_.bytes());
  }

  // Scratch bytes forward + backward need for `tokens` tokens, in training or evaluation.
  std::size_t workspace_bytes(index_t tokens) const {
    std::size_t bytes = 0;
    for (bool training : {true, false}) {
      workspace_carver w;
      call_state st;
      carve(w, this->shape_for(tokens, training), st);
      bytes = std::max(bytes, w.bytes());
    }
    return bytes;
  }

  // y = MoE(x). x and y are [tokens, d_model] in the space's memory; ws holds at least
  // workspace_bytes(tokens) and must stay untouched until backward().
  void forward(const step_context& ctx, matrix_view<const T> x, matrix_view<T> y, workspace_span ws) {
    this->check_io(x, y);
    const index_t tokens = x.extent[0];
    const routing_shape shape = this->shape_for(tokens, ctx.training);
    call_state st;
    workspace_carver w(ws.data, ws.bytes);
    carve(w, shape, st);
    last_ = {};  // a failed forward leaves nothing for backward to use

    const auto& sp = this->space_;
    this->route(ctx, x.data, st.plan);
    dispatch_type::template assign<T>(sp, st.plan, st.dispatch);
    detail::reduce_statistics<core::num_losses>(sp, st.plan, st.dispatch.rows, stats_.template as<double>());
    last_stats_ = {shape.tokens, shape.groups, shape.capacity, ctx.training};

    dispatch_type::dispatch(sp, st.plan, st.dispatch, x.data, st.xp);
    expert_type::forward(sp, this->cfg_.expert, this->local_expert_shape(), this->const_experts(),
                         st.dispatch.rows.rows, st.xp, st.act, ctx.training, this->dropout_stream(ctx.step));
    dispatch_type::combine(sp, st.plan, st.dispatch, st.act.out, y.data);

    last_ = {true, tokens, ctx.training, ctx.step, ws.data, ws.bytes};
  }

  // From dy = ∂L/∂y: writes dx = ∂L/∂x and adds the parameter gradients (task loss plus
  // aux_loss_scale × the auxiliary losses). Uses the workspace of the latest forward().
  void backward(matrix_view<const T> dy, matrix_view<T> dx, workspace_span ws, double aux_loss_scale = 1.0) {
    require(last_.valid, "backward", "no forward pass recorded (call forward first)");
    require(ws.data == last_.ws_data && ws.bytes == last_.ws_bytes, "backward",
            "the workspace differs from the one the latest forward used");
    this->check_grad_io(last_.tokens, dy, dx, aux_loss_scale);
    call_state st;
    workspace_carver w(ws.data, ws.bytes);
    carve(w, this->shape_for(last_.tokens, last_.training), st);

    const auto& sp = this->space_;
    dispatch_type::combine_backward(sp, st.plan, st.dispatch, st.act.out, dy.data, st.plan.dgate, st.dout);
    expert_type::backward(sp, this->cfg_.expert, this->local_expert_shape(), this->const_experts(),
                          this->expert_grads_to_compute(), st.dispatch.rows.rows, st.xp, st.act, st.dout, st.dxp,
                          last_.training, this->dropout_stream(last_.step));
    dispatch_type::dispatch_backward(sp, st.plan, st.dispatch, st.dxp, st.plan.dx_acc);
    this->route_backward(st.plan, dx.data, last_.training, last_.step, R(aux_loss_scale));
    this->accumulate_router_grads(st.plan.router_partials, st.plan.noise_partials, st.plan.shape.groups);
  }

  // The same, with a workspace the layer owns and grows as needed.
  void forward(const step_context& ctx, matrix_view<const T> x, matrix_view<T> y) {
    this->check_io(x, y);
    own_ws_.reserve(workspace_bytes(x.extent[0]));
    forward(ctx, x, y, {own_ws_.data(), own_ws_.bytes()});
  }
  void backward(matrix_view<const T> dy, matrix_view<T> dx, double aux_loss_scale = 1.0) {
    backward(dy, dx, {own_ws_.data(), own_ws_.bytes()}, aux_loss_scale);
  }

  // Routing statistics of the latest forward (synchronises the space).
  routing_statistics statistics() const {
    std::vector<double> s(static_cast<std::size_t>(this->stats_size()));
    this->space_.synchronize();
    this->space_.copy_to_host(s.data(), stats_.data(), sizeof(double) * s.size());
    return this->decode_statistics(s.data(), last_stats_.tokens, last_stats_.groups, last_stats_.capacity,
                                   last_stats_.training);
  }

  // The routing decisions of the latest forward, read from its workspace (synchronises the space).
  routing_decisions routing() const {
    require(last_.valid, "routing", "no forward pass recorded (call forward first)");
    call_state st;
    workspace_carver w(const_cast<void*>(last_.ws_data), last_.ws_bytes);
    carve(w, this->shape_for(last_.tokens, last_.training), st);
    return this->decisions(st.plan);
  }

 private:
  struct call_state {
    routing_plan<R> plan;
    typename dispatch_type::state dispatch;
    ffn_activations<T> act;
    T* xp = nullptr;    // [rows, d] dispatched tokens
    T* dout = nullptr;  // [rows, d]
    T* dxp = nullptr;   // [rows, d]
  };
  struct last_call {
    bool valid = false;
    index_t tokens = 0;
    bool training = false;
    std::uint32_t step = 0;
    const void* ws_data = nullptr;
    std::size_t ws_bytes = 0;
  };
  struct stats_meta {
    index_t tokens = 0;
    int groups = 0;
    int capacity = 0;
    bool training = false;
  };

  void carve(workspace_carver& w, const routing_shape& s, call_state& st) const {
    this->carve_routing(w, s, st.plan);
    dispatch_type::template carve<T, R>(w, s, st.dispatch);
    const index_t rows = st.dispatch.rows.rows.rows_bound;
    expert_type::template carve<T>(w, this->local_expert_shape(), rows, st.act);
    st.xp = w.take<T>(rows * s.d_model);
    st.dout = w.take<T>(rows * s.d_model);
    st.dxp = w.take<T>(rows * s.d_model);
  }

  buffer<space_type> stats_;
  buffer<space_type> own_ws_;
  last_call last_;
  stats_meta last_stats_;
};

}  // namespace moe
