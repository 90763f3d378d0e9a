// examples/trainer/model.hpp — a decoder-only transformer whose FFNs are dense or moe::layer MoE
// layers, with a hand-written backward pass.
//
//   x₀ = tok_emb[token] + pos_emb[position]
//   per block:  x ← x + W_o · attention(RMSNorm(x) · W_qkv)        (causal, multi-head)
//               x ← x + FFN(RMSNorm(x))   for each FFN sublayer (dense, or a MoE layer)
//   logits = RMSNorm(x) · tok_embᵀ  (tied), loss = mean cross-entropy + Σ MoE auxiliary losses
//
// With --dropout p (recipe.dropout), training drops out where T5 and the Switch Transformer do:
// x₀, the attention probabilities, each sublayer's output before its residual add (attention, dense
// FFN, MoE layer), the dense FFNs' hidden units and the final norm's output. The experts' hidden
// units have their own rate (--expert-dropout, inside the library's layer).
//
// Templated on the element type (float to train, double for the finite-difference test), the
// execution space, the library preset the MoE layers come from (moe::presets::switch_transformer,
// glam or st_moe; the dense model builds none) and the dense FFN policy (ReLU or GEGLU: the
// library's moe::ffn, run as a single "expert" over all tokens).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <moe/moe.hpp>

#include "layout.hpp"
#include "ops.hpp"

namespace trainer {

// Random stream of the model's dropout masks (the corpus uses user + 1 … user + 3).
inline constexpr auto model_dropout_stream = moe::rng_purpose(std::uint32_t(moe::rng_purpose::user) + 4);

// One trainable tensor and its gradient (space memory).
template <class T>
struct param_view {
  std::string name;
  T* value = nullptr;
  T* grad = nullptr;
  int rank = 1;
  index_t shape[3] = {0, 0, 0};
  bool matrix = false;  // weight decay applies (not to norm gains)
  // Expert tensors of an expert-parallel layer hold experts [first, first + shape[0]) of
  // `global_leading`: the rest live on other ranks (checkpoints store whole tensors).
  bool sharded = false;
  index_t first = 0;
  index_t global_leading = 0;
  index_t size() const {
    index_t n = 1;
    for (int i = 0; i < rank; ++i) n *= shape[i];
    return n;
  }
};

// Routing summary of one MoE layer for one step (host values).
struct moe_step_stats {
  moe::routing_statistics stats;
  int block = 0;
};

template <class T, class Space, class MoePreset, class DenseFFN, class MoeLayer = typename MoePreset::layer>
class model {
  static_assert(std::is_same_v<typename MoeLayer::compute_type, T>,
                "the trainer keeps one element type for all parameters (float, or double for tests)");

 public:
  // The MoE layers may store their activations and expert weights in 16 bits (--precision bf16):
  // their inputs and outputs are converted at the layer boundary, and the optimiser updates float
  // master copies of their 16-bit parameters (commit_parameters() rounds them into the layers).
  using moe_element = typename MoeLayer::element_type;
  static constexpr bool low_precision_moe = !std::is_same_v<moe_element, T>;
  // float16 MoE layers (--precision fp16) need loss scaling: the gradient entering a layer is
  // multiplied by loss_scale() before it is rounded to 16 bits (float16's exponent range would flush
  // most of it to zero), the layer's input gradient and parameter gradients are divided by it after.
  // Dynamic, as in mixed-precision practice (PyTorch's GradScaler defaults): start at 2^16, halve
  // and skip the update when a gradient is not finite, double after 2000 updates without overflow.
  static constexpr bool loss_scaled = std::is_same_v<moe_element, moe::float16>;
  static constexpr double initial_loss_scale = 65536.0;
  static constexpr int loss_scale_growth_interval = 2000;

  using moe_factory = std::function<std::unique_ptr<MoeLayer>(const typename MoeLayer::config&)>;

  // `make_moe` builds each MoE layer from its config (an expert-parallel layer needs its
  // communicator); by default MoeLayer(config, space).
  model(const model_config& cfg, const Space& space = Space{}, moe_factory make_moe = {})
      : cfg_(cfg), space_(space), blocks_spec_(make_layout(cfg)), make_moe_(std::move(make_moe)) {
    if constexpr (std::is_constructible_v<MoeLayer, const typename MoeLayer::config&, const Space&>) {
      if (!make_moe_)
        make_moe_ = [this](const typename MoeLayer::config& c) { return std::make_unique<MoeLayer>(c, space_); };
    }
    moe::require(bool(make_moe_) || cfg.kind == preset::dense, "model", "no way to build the MoE layers given");
    moe::require(cfg.d_model % cfg.heads == 0, "--heads", cfg.heads, " does not divide --d-model ", cfg.d_model);
    dropout_ = cfg.recipe.dropout.value_or(0.0f);
    moe::require(dropout_ >= 0.0f && dropout_ < 1.0f, "--dropout", "rate=", dropout_, " must be in [0, 1)");
    dense_cfg_.dropout = dropout_;
    build_parameters();
  }

  // This process's share of the global batch starts at sequence `first` (a data-parallel rank:
  // rank · B): dropout masks are keyed by global positions, so R ranks drop what one process would.
  void set_first_sequence(int first) {
    moe::require(first >= 0, "set_first_sequence", "first=", first, " must be >= 0");
    first_sequence_ = first;
    act_batch_ = 0;  // the dense FFN's row map carries the global token ids: rebuild it
  }

  const model_config& config() const { return cfg_; }
  const Space& space() const { return space_; }
  const std::vector<block_spec>& layout() const { return blocks_spec_; }

  // Every trainable tensor: the dense ones, then each MoE layer's.
  std::vector<param_view<T>> parameters() {
    std::vector<param_view<T>> all = dense_params_;
    std::size_t next_master = 0;
    for (std::size_t i = 0; i < moe_layers_.size(); ++i) {
      moe_layers_[i]->for_each_parameter([&](const auto& p) {
        param_view<T> v;
        v.name = "moe" + std::to_string(moe_block_[i]) + "." + p.name;
        using stored = std::remove_cv_t<std::remove_pointer_t<decltype(p.value)>>;
        if constexpr (std::is_same_v<stored, T>) v.value = p.value;
        else v.value = masters_[next_master++].master;  // the optimiser works on the float master
        v.grad = p.grad;
        v.rank = p.rank;
        for (int r = 0; r < 3; ++r) v.shape[r] = p.shape[r];
        v.matrix = p.rank >= 2;
        const auto& layer = *moe_layers_[i];
        if (v.name.find(".experts.") != std::string::npos && layer.local_experts() < layer.get_config().num_experts) {
          v.sharded = true;
          v.first = layer.first_expert();
          v.global_leading = layer.get_config().num_experts;
        }
        all.push_back(v);
      });
    }
    return all;
  }

  void zero_grad() {
    space_.fill_zero(grads_.data(), grads_.bytes());
    for (auto& l : moe_layers_) l->zero_grad();
  }

  double loss_scale() const { return loss_scale_; }
  int loss_scale_good_steps() const { return good_steps_; }
  void set_loss_scale(double scale, int good_steps) {
    moe::require(scale > 0 && std::isfinite(scale), "loss_scale", "scale=", scale, " must be finite and > 0");
    loss_scale_ = scale;
    good_steps_ = good_steps;
  }
  // After an update (finite gradients) or a skipped one (overflow): the dynamic loss-scale rule.
  void update_loss_scale(bool overflow) {
    if (!loss_scaled) return;
    if (overflow) {
      loss_scale_ = std::max(1.0, loss_scale_ / 2);
      good_steps_ = 0;
    } else if (++good_steps_ >= loss_scale_growth_interval) {
      loss_scale_ = std::min(loss_scale_ * 2, 16777216.0);
      good_steps_ = 0;
    }
  }

  // Rounds the float master weights into the MoE layers' 16-bit storage (after every optimiser
  // update and after restoring a checkpoint); nothing to do when the layers are float.
  void commit_parameters() {
    for (const master_copy& m : masters_) convert_into(space_, m.master, m.size, m.stored);
  }

  // Forward over a batch of B sequences of S tokens: inputs [B·S] and targets [B·S] in space
  // memory. Returns the mean cross-entropy over these tokens (host value; synchronises) and keeps
  // activations for backward. The backward is that of Σ cross-entropy / loss_tokens (default B·S;
  // a data-parallel rank passes the global token count so that the ranks' gradients add up).
  double forward(const int* tokens, const int* targets, int B, bool training, std::uint32_t step,
                 index_t loss_tokens = 0) {
    const index_t S = cfg_.seq, N = index_t(B) * S, d = cfg_.d_model, V = cfg_.vocab;
    const index_t H = cfg_.heads, dh = d / H;
    ensure_activations(B);
    tokens_ = tokens;
    const auto& sp = space_;
    drop_ = training && dropout_ > 0.0f;
    drop_step_ = step;
    embed_forward(sp, tokens, p_.tok_emb, p_.pos_emb, N, S, d, act_.x0);
    if (drop_) apply_dropout(sp, mask(site_embedding, d), act_.x0, N * d, act_.x0);
    const T* x = act_.x0;
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      block& b = blocks_[l];
      b.x_in = x;
      rmsnorm_forward(sp, x, b.g_attn, N, d, b.h_attn, b.rinv_attn);
      sp.gemm(moe::op::none, moe::op::none, N, 3 * d, d, T(1), b.h_attn, d, b.w_qkv, 3 * d, T(0), b.qkv, 3 * d);
      attention_forward(sp, b.qkv, B, S, H, dh, b.probs, b.attn_out, mask(site(l, site_attention_probs), H * S),
                        b.probs_dropped);
      sp.copy(b.x_mid, x, sizeof(T) * std::size_t(N * d));
      if (drop_) {  // x_mid = x + dropout(attn_out · W_o)  (act_.dattn is free until backward)
        sp.gemm(moe::op::none, moe::op::none, N, d, d, T(1), b.attn_out, d, b.w_o, d, T(0), act_.dattn, d);
        apply_dropout(sp, mask(site(l, site_attention_out), d), act_.dattn, N * d, act_.dattn);
        add_into(sp, act_.dattn, N * d, b.x_mid);
      } else {
        sp.gemm(moe::op::none, moe::op::none, N, d, d, T(1), b.attn_out, d, b.w_o, d, T(1), b.x_mid, d);
      }
      x = b.x_mid;
      for (std::size_t i = 0; i < b.ffns.size(); ++i) {
        sublayer& s = b.ffns[i];
        s.x_in = x;
        rmsnorm_forward(sp, x, s.g, N, d, s.h, s.rinv);
        if (s.moe) {
          if constexpr (low_precision_moe) {
            convert_into(sp, s.h, N * d, s.h_moe);
            s.moe->forward({training, step}, {s.h_moe, N, d}, {s.y_moe, N, d});
            convert_into(sp, s.y_moe, N * d, s.y);
          } else {
            s.moe->forward({training, step}, {s.h, N, d}, {s.y, N, d});
          }
        } else {
          DenseFFN::forward(sp, dense_cfg_, {1, d, s.d_ff}, const_view(s.w), dense_rows_, s.h, s.act, drop_,
                            hidden_stream(l, i));
          sp.copy(s.y, s.act.out, sizeof(T) * std::size_t(N * d));
        }
        if (drop_) apply_dropout(sp, mask(site(l, site_ffn_out + 2 * int(i)), d), s.y, N * d, s.y);
        sp.copy(s.x_out, x, sizeof(T) * std::size_t(N * d));
        add_into(sp, s.y, N * d, s.x_out);
        x = s.x_out;
      }
    }
    act_.x_last = x;
    rmsnorm_forward(sp, x, p_.g_final, N, d, act_.h_final, act_.rinv_final);
    if (drop_) apply_dropout(sp, mask(site_final, d), act_.h_final, N * d, act_.h_final);
    sp.gemm(moe::op::none, moe::op::transpose, N, V, d, T(1), act_.h_final, d, p_.tok_emb, d, T(0), act_.logits, V);
    cross_entropy(sp, act_.logits, targets, N, V, loss_tokens > 0 ? loss_tokens : N, act_.token_loss);
    sp.reduce_sum(act_.token_loss, N, act_.scalar);
    T loss = 0;
    sp.copy_to_host(&loss, act_.scalar, sizeof(T));
    return double(loss) / double(N);
  }

  // Backward of mean cross-entropy + Σ aux losses; accumulates into the gradients. Uses the dropout
  // masks of the latest forward (training or not, and its step).
  void backward(const int* by_token, const int* token_offsets, int B) {
    const index_t S = cfg_.seq, N = index_t(B) * S, d = cfg_.d_model, V = cfg_.vocab;
    const index_t H = cfg_.heads, dh = d / H;
    const auto& sp = space_;
    // Frozen groups' gradients are not computed (null targets, skipped GEMMs): they stay zero.
    const bool embedding_trains = !(frozen_ & group_embedding);
    auto norm_grad = [&](T* dg) { return (frozen_ & group_norms) ? nullptr : dg; };
    // logits = h_final · tok_embᵀ (act_.logits now holds ∂L/∂logits)
    sp.gemm(moe::op::none, moe::op::none, N, d, V, T(1), act_.logits, V, p_.tok_emb, d, T(0), act_.dh, d);
    if (embedding_trains)
      sp.gemm(moe::op::transpose, moe::op::none, V, d, N, T(1), act_.logits, V, act_.h_final, d, T(1), g_.tok_emb,
              d);
    if (drop_) apply_dropout(sp, mask(site_final, d), act_.dh, N * d, act_.dh);
    sp.fill_zero(act_.dx, sizeof(T) * std::size_t(N * d));
    rmsnorm_backward(sp, act_.x_last, p_.g_final, act_.rinv_final, act_.dh, N, d, act_.dx, norm_grad(g_.g_final));
    for (std::size_t l = blocks_.size(); l-- > 0;) {
      block& b = blocks_[l];
      for (std::size_t i = b.ffns.size(); i-- > 0;) {
        sublayer& s = b.ffns[i];
        // x_out = x_in + dropout(FFN(RMSNorm(x_in))): dx passes through and gains the FFN branch,
        // whose output gradient is dx through the mask (in act_.dattn, free until the attention).
        const T* dy = act_.dx;
        if (drop_) {
          apply_dropout(sp, mask(site(l, site_ffn_out + 2 * int(i)), d), act_.dx, N * d, act_.dattn);
          dy = act_.dattn;
        }
        if (s.moe) {
          if constexpr (low_precision_moe) {
            // ∂L/∂y · scale into 16 bits; the layer's own auxiliary-loss gradients get the same scale.
            const T scale = T(loss_scale_), unscale = T(1.0 / loss_scale_);
            scale_into(sp, dy, N * d, scale, act_.dy_moe);
            s.moe->backward({act_.dy_moe, N, d}, {act_.dx_moe, N, d}, loss_scale_);
            scale_into(sp, act_.dx_moe, N * d, unscale, act_.dh);
            if (loss_scaled)  // its parameter gradients hold scale × the true ones (zeroed every step)
              s.moe->for_each_parameter([&](const auto& p) {
                index_t n = 1;
                for (int r = 0; r < p.rank; ++r) n *= p.shape[r];
                scale_in_place(sp, p.grad, n, unscale);
              });
          } else {
            s.moe->backward({dy, N, d}, {act_.dh, N, d});
          }
        } else {
          DenseFFN::backward(sp, dense_cfg_, {1, d, s.d_ff}, const_view(s.w),
                             (frozen_ & group_dense_ffn) ? decltype(s.dw){} : s.dw, dense_rows_, s.h, s.act, dy,
                             act_.dh, drop_, hidden_stream(l, i));
        }
        rmsnorm_backward(sp, s.x_in, s.g, s.rinv, act_.dh, N, d, act_.dx, norm_grad(s.dg));
      }
      // x_mid = x_in + dropout(attn_out · W_o)  (the branch's gradient in act_.dh, free until dqkv's)
      const T* dbranch = act_.dx;
      if (drop_) {
        apply_dropout(sp, mask(site(l, site_attention_out), d), act_.dx, N * d, act_.dh);
        dbranch = act_.dh;
      }
      sp.gemm(moe::op::none, moe::op::transpose, N, d, d, T(1), dbranch, d, b.w_o, d, T(0), act_.dattn, d);
      const bool attention_trains = !(frozen_ & group_attention);
      if (attention_trains)
        sp.gemm(moe::op::transpose, moe::op::none, d, d, N, T(1), b.attn_out, d, dbranch, d, T(1), b.dw_o, d);
      attention_backward(sp, b.qkv, b.probs, act_.dattn, B, S, H, dh, act_.dscores, act_.dqkv,
                         mask(site(l, site_attention_probs), H * S), b.probs_dropped);
      sp.gemm(moe::op::none, moe::op::transpose, N, d, 3 * d, T(1), act_.dqkv, 3 * d, b.w_qkv, 3 * d, T(0), act_.dh, d);
      if (attention_trains)
        sp.gemm(moe::op::transpose, moe::op::none, d, 3 * d, N, T(1), b.h_attn, d, act_.dqkv, 3 * d, T(1), b.dw_qkv,
                3 * d);
      rmsnorm_backward(sp, b.x_in, b.g_attn, b.rinv_attn, act_.dh, N, d, act_.dx, norm_grad(b.dg_attn));
    }
    if (!embedding_trains) return;  // ∂L/∂x0 feeds only the embeddings' gradients
    if (drop_) apply_dropout(sp, mask(site_embedding, d), act_.dx, N * d, act_.dx);
    embed_backward(sp, by_token, token_offsets, act_.dx, N, S, d, V, g_.tok_emb, g_.pos_emb);
  }

  // The MoE layers in block order, and the block each belongs to.
  const std::vector<std::unique_ptr<MoeLayer>>& moe_layers() const { return moe_layers_; }
  const std::vector<int>& moe_blocks() const { return moe_block_; }

  // Parameter groups (param_group bits) held fixed: the optimiser leaves them out (run.hpp), and
  // backward computes no gradient of a frozen group (they stay zero): the weight-gradient GEMMs of
  // frozen experts, routers, dense FFNs, attention and the tied embedding are skipped, and so are the
  // gains' column sums and the embeddings' scatter.
  void set_frozen(unsigned groups) {
    frozen_ = groups;
    for (auto& l : moe_layers_)
      l->set_trainable({.router = !(groups & group_router), .experts = !(groups & group_experts)});
  }

  // Σ weighted auxiliary losses of the latest forward (synchronises).
  double aux_loss() const {
    double a = 0;
    for (const auto& l : moe_layers_) a += l->statistics().aux_loss;
    return a;
  }

  // ---- implementation steps -------------------------------------------------------------------
  // Public only because nvcc's extended lambdas (the parallel_for bodies) may not be defined in
  // private or protected member functions; not part of the model's interface.
  void init_tensor(const param_view<T>& v, float stddev, std::uint32_t id) {
    T* data = v.value;
    if (stddev == 0) {
      space_.parallel_for(v.size(), [=] MOE_LAMBDA(index_t i) { data[i] = T(1); });
      return;
    }
    // Philox stream keyed by (seed, tensor): the same values on every space.
    const moe::rng_stream s{cfg_.seed, moe::rng_purpose::user, id, 0};
    space_.parallel_for(v.size(),
                        [=] MOE_LAMBDA(index_t i) { data[i] = T(moe::truncated_normal(s, std::uint64_t(i), stddev)); });
  }

  void ensure_activations(int B) {
    if (B == act_batch_) return;
    const index_t S = cfg_.seq, N = index_t(B) * S, d = cfg_.d_model, V = cfg_.vocab, H = cfg_.heads;
    moe::workspace_carver measure;
    carve_activations(measure, N, B, S, d, V, H);
    act_buffer_ = moe::buffer<Space>(space_, measure.bytes());
    moe::workspace_carver w(act_buffer_.data(), act_buffer_.bytes());
    carve_activations(w, N, B, S, d, V, H);
    // The dense FFN runs as one expert over all N rows.
    rows_buffer_ = moe::buffer<Space>(space_, sizeof(int) * std::size_t(2 + 4 * N) + 1024);
    int* r = rows_buffer_.template as<int>();
    dense_rows_.rows_bound = N;
    dense_rows_.expert_offsets = r;
    dense_rows_.row_pair = r + 2;
    dense_rows_.row_token = r + 2 + N;
    dense_rows_.row_expert = r + 2 + 2 * N;
    int* off = r;
    int *rp = dense_rows_.row_pair, *rt = dense_rows_.row_token, *re = dense_rows_.row_expert;
    const int n = int(N);
    const int first_token = first_sequence_ * int(S);  // row_token keys the hidden units' dropout
    space_.parallel_for(N, [=] MOE_LAMBDA(index_t i) {
      rp[i] = int(i);
      rt[i] = first_token + int(i);
      re[i] = 0;
      if (i == 0) {
        off[0] = 0;
        off[1] = n;
      }
    });
    act_batch_ = B;
  }

 private:
  struct sublayer {
    bool moe_kind = false;
    int d_ff = 0;
    T *g = nullptr, *dg = nullptr;
    moe::ffn_tensors<T> w, dw;  // dense FFN only
    MoeLayer* moe = nullptr;
    // activations
    const T* x_in = nullptr;
    T *h = nullptr, *rinv = nullptr, *y = nullptr, *x_out = nullptr;
    moe_element *h_moe = nullptr, *y_moe = nullptr;  // the MoE layer's input and output (16-bit layers)
    moe::ffn_activations<T> act;
  };
  struct block {
    T *g_attn, *dg_attn, *w_qkv, *dw_qkv, *w_o, *dw_o;
    std::vector<sublayer> ffns;
    const T* x_in = nullptr;
    T *h_attn = nullptr, *rinv_attn = nullptr, *qkv = nullptr, *probs = nullptr, *attn_out = nullptr,
      *x_mid = nullptr;
    T* probs_dropped = nullptr;  // the probabilities after dropout (with --dropout only)
  };
  struct globals {
    T *tok_emb = nullptr, *pos_emb = nullptr, *g_final = nullptr;
  };
  struct activations {
    T *x0 = nullptr, *h_final = nullptr, *rinv_final = nullptr, *logits = nullptr, *token_loss = nullptr,
      *scalar = nullptr;
    const T* x_last = nullptr;
    T *dx = nullptr, *dh = nullptr, *dattn = nullptr, *dqkv = nullptr, *dscores = nullptr;
    moe_element *dy_moe = nullptr, *dx_moe = nullptr;  // a 16-bit MoE layer's output and input gradients
  };
  struct master_copy {
    moe_element* stored;  // the layer's 16-bit parameter
    T* master;            // its float master copy
    index_t size;
  };

  // Dropout sites: each has its own mask (the rng stream's layer field).
  static constexpr int site_embedding = 0, site_final = 1;
  static constexpr int site_attention_probs = 0, site_attention_out = 1, site_ffn_hidden = 2, site_ffn_out = 3;
  // Block l's site k; FFN sublayer i's sites are site_ffn_hidden + 2·i and site_ffn_out + 2·i.
  static int site(std::size_t l, int k) { return 8 * (int(l) + 1) + k; }

  // The mask of a site's activations in the latest forward: `per_position` elements per token
  // position (d; H·S for the attention probabilities), so this process's first element is
  // first_sequence · S · per_position of the global batch.
  dropout_mask mask(int s, index_t per_position) const {
    dropout_mask m;
    m.rng = moe::rng_stream{cfg_.seed, model_dropout_stream, std::uint32_t(s), drop_step_};
    m.rate = drop_ ? dropout_ : 0.0f;
    m.base = std::uint64_t(first_sequence_) * std::uint64_t(cfg_.seq) * std::uint64_t(per_position);
    return m;
  }
  // The dense FFN of block l, sublayer i: its hidden units' dropout stream (the library's FFN keys
  // each mask by token and unit).
  moe::rng_stream hidden_stream(std::size_t l, std::size_t i) const {
    return {cfg_.seed, model_dropout_stream, std::uint32_t(site(l, site_ffn_hidden + 2 * int(i))), drop_step_};
  }

  static moe::ffn_tensors<const T> const_view(const moe::ffn_tensors<T>& w) {
    return {w.w_in, w.w_up, w.w_out, w.b_in, w.b_up, w.b_out, w.scale};
  }

  // Lays out every dense tensor in one value buffer and one gradient buffer (same offsets), and
  // creates the MoE layers.
  void build_parameters() {
    const index_t d = cfg_.d_model, V = cfg_.vocab, S = cfg_.seq;
    struct entry {
      std::string name;
      int rank;
      index_t shape[3];
      bool matrix;
      float std;  // 0: a norm gain (initialised to 1)
    };
    std::vector<entry> entries;
    // Switch §2.4: truncated normal with std sqrt(s / fan_in), s = 0.1 for the Switch preset.
    const float init_scale = init_scale_of(cfg_.kind, cfg_.recipe);
    auto tn = [&](index_t fan_in) { return std::sqrt(init_scale / float(fan_in)); };
    entries.push_back({"tok_emb", 2, {V, d, 0}, true, tn(d)});
    entries.push_back({"pos_emb", 2, {S, d, 0}, true, tn(d)});
    for (std::size_t l = 0; l < blocks_spec_.size(); ++l) {
      const std::string p = "block" + std::to_string(l) + ".";
      entries.push_back({p + "attn_norm", 1, {d, 0, 0}, false, 0});
      entries.push_back({p + "w_qkv", 2, {d, 3 * d, 0}, true, tn(d)});
      entries.push_back({p + "w_o", 2, {d, d, 0}, true, tn(d)});
      for (std::size_t i = 0; i < blocks_spec_[l].ffns.size(); ++i) {
        const ffn_spec& f = blocks_spec_[l].ffns[i];
        const std::string q = p + "ffn" + std::to_string(i) + ".";
        entries.push_back({q + "norm", 1, {d, 0, 0}, false, 0});
        if (f.moe) continue;
        entries.push_back({q + "w_in", 3, {1, d, f.d_ff}, true, tn(d)});
        if (DenseFFN::gated) entries.push_back({q + "w_up", 3, {1, d, f.d_ff}, true, tn(d)});
        entries.push_back({q + "w_out", 3, {1, f.d_ff, d}, true, tn(f.d_ff)});
      }
    }
    entries.push_back({"final_norm", 1, {d, 0, 0}, false, 0});

    index_t total = 0;
    std::vector<index_t> offset;
    for (const entry& e : entries) {
      offset.push_back(total);
      index_t n = 1;
      for (int r = 0; r < e.rank; ++r) n *= e.shape[r];
      total += n;
    }
    values_ = moe::buffer<Space>(space_, sizeof(T) * std::size_t(total));
    grads_ = moe::buffer<Space>(space_, sizeof(T) * std::size_t(total));
    for (std::size_t i = 0; i < entries.size(); ++i) {
      param_view<T> v;
      v.name = entries[i].name;
      v.value = values_.template as<T>() + offset[i];
      v.grad = grads_.template as<T>() + offset[i];
      v.rank = entries[i].rank;
      for (int r = 0; r < 3; ++r) v.shape[r] = entries[i].shape[r];
      v.matrix = entries[i].matrix;
      dense_params_.push_back(v);
      init_tensor(v, entries[i].std, std::uint32_t(i));
    }
    space_.fill_zero(grads_.data(), grads_.bytes());

    // Wire the views into blocks and sublayers (same order as the entries).
    std::size_t k = 0;
    auto next = [&]() -> param_view<T>& { return dense_params_[k++]; };
    p_.tok_emb = next().value;
    g_.tok_emb = dense_params_[0].grad;
    p_.pos_emb = next().value;
    g_.pos_emb = dense_params_[1].grad;
    blocks_.resize(blocks_spec_.size());
    for (std::size_t l = 0; l < blocks_spec_.size(); ++l) {
      block& b = blocks_[l];
      auto& gn = next();
      b.g_attn = gn.value, b.dg_attn = gn.grad;
      auto& qkv = next();
      b.w_qkv = qkv.value, b.dw_qkv = qkv.grad;
      auto& wo = next();
      b.w_o = wo.value, b.dw_o = wo.grad;
      for (std::size_t i = 0; i < blocks_spec_[l].ffns.size(); ++i) {
        const ffn_spec& f = blocks_spec_[l].ffns[i];
        sublayer s;
        s.moe_kind = f.moe;
        s.d_ff = f.d_ff;
        auto& n = next();
        s.g = n.value, s.dg = n.grad;
        if (f.moe) {
          moe_layers_.push_back(make_moe_(moe_config(f, int(l))));
          moe_block_.push_back(int(l));
          s.moe = moe_layers_.back().get();
        } else {
          auto& win = next();
          s.w.w_in = win.value, s.dw.w_in = win.grad;
          if (DenseFFN::gated) {
            auto& wup = next();
            s.w.w_up = wup.value, s.dw.w_up = wup.grad;
          }
          auto& wout = next();
          s.w.w_out = wout.value, s.dw.w_out = wout.grad;
        }
        b.ffns.push_back(s);
      }
    }
    auto& gf = next();
    p_.g_final = gf.value;
    g_.g_final = gf.grad;

    // Float masters of the MoE layers' 16-bit parameters, initialised from the layers' values
    // (widening is exact), in the order parameters() visits them.
    if constexpr (low_precision_moe) {
      index_t total_masters = 0;
      for (auto& l : moe_layers_)
        l->for_each_parameter([&](const auto& p) {
          using stored = std::remove_cv_t<std::remove_pointer_t<decltype(p.value)>>;
          if constexpr (!std::is_same_v<stored, T>) {
            index_t n = 1;
            for (int r = 0; r < p.rank; ++r) n *= p.shape[r];
            masters_.push_back({p.value, nullptr, n});
            total_masters += n;
          }
        });
      master_values_ = moe::buffer<Space>(space_, sizeof(T) * std::size_t(total_masters));
      T* next_master = master_values_.template as<T>();
      for (master_copy& m : masters_) {
        m.master = next_master;
        next_master += m.size;
        convert_into(space_, m.stored, m.size, m.master);
      }
    }
  }

  typename MoeLayer::config moe_config(const ffn_spec& f, int block_index) const {
    typename MoeLayer::config c = MoePreset::make_config(cfg_.d_model, f.d_ff, cfg_.experts, cfg_.seed);
    c.layer_id = std::uint32_t(block_index);
    c.group_size = cfg_.group_size;
    const recipe_overrides& r = cfg_.recipe;
    if (r.init_scale) c.router.init_scale = c.expert.init_scale = *r.init_scale;
    if (r.balance_loss) c.losses.load_balancing.weight = *r.balance_loss;
    if (r.z_loss) {
      // parse_options refuses --z-loss for presets whose loss set has no z-loss.
      if constexpr (requires { c.losses.router_z_loss.weight; }) c.losses.router_z_loss.weight = *r.z_loss;
      else moe::fail("--z-loss", "the ", preset_name(cfg_.kind), " preset's MoE layers have no router z-loss");
    }
    if (r.jitter) c.router.jitter = *r.jitter;
    if (r.capacity_factor) c.capacity.train = *r.capacity_factor;
    if (r.expert_dropout) c.expert.dropout = *r.expert_dropout;
    if (r.router_precision) c.router.precision = *r.router_precision;
    return c;
  }

  void carve_activations(moe::workspace_carver& w, index_t N, index_t B, index_t S, index_t d, index_t V, index_t H) {
    act_.x0 = w.take<T>(N * d);
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      block& b = blocks_[l];
      b.h_attn = w.take<T>(N * d);
      b.rinv_attn = w.take<T>(N);
      b.qkv = w.take<T>(N * 3 * d);
      b.probs = w.take<T>(B * H * S * S);
      if (dropout_ > 0.0f) b.probs_dropped = w.take<T>(B * H * S * S);
      b.attn_out = w.take<T>(N * d);
      b.x_mid = w.take<T>(N * d);
      for (sublayer& s : b.ffns) {
        s.h = w.take<T>(N * d);
        s.rinv = w.take<T>(N);
        s.y = w.take<T>(N * d);
        s.x_out = w.take<T>(N * d);
        if (!s.moe) DenseFFN::template carve<T>(w, {1, d, s.d_ff}, N, s.act);
        if (s.moe && low_precision_moe) {
          s.h_moe = w.take<moe_element>(N * d);
          s.y_moe = w.take<moe_element>(N * d);
        }
      }
    }
    act_.h_final = w.take<T>(N * d);
    act_.rinv_final = w.take<T>(N);
    act_.logits = w.take<T>(N * V);
    act_.token_loss = w.take<T>(N);
    act_.scalar = w.take<T>(1);
    act_.dx = w.take<T>(N * d);
    act_.dh = w.take<T>(N * d);
    act_.dattn = w.take<T>(N * d);
    act_.dqkv = w.take<T>(N * 3 * d);
    act_.dscores = w.take<T>(B * H * S * S);
    if (low_precision_moe && !moe_layers_.empty()) {
      act_.dy_moe = w.take<moe_element>(N * d);
      act_.dx_moe = w.take<moe_element>(N * d);
    }
  }

  model_config cfg_;
  Space space_;
  std::vector<block_spec> blocks_spec_;
  moe_factory make_moe_;
  moe::buffer<Space> values_, grads_, act_buffer_, rows_buffer_;
  std::vector<param_view<T>> dense_params_;
  std::vector<std::unique_ptr<MoeLayer>> moe_layers_;
  unsigned frozen_ = 0;
  float dropout_ = 0;           // --dropout (0: none)
  bool drop_ = false;           // the latest forward dropped out (training with dropout_ > 0)
  std::uint32_t drop_step_ = 0;  // and its step
  int first_sequence_ = 0;      // see set_first_sequence
  std::vector<int> moe_block_;
  std::vector<master_copy> masters_;  // 16-bit MoE parameters, in parameters() order
  moe::buffer<Space> master_values_;
  std::vector<block> blocks_;
  globals p_, g_;
  activations act_;
  typename DenseFFN::config dense_cfg_{};
  moe::row_map dense_rows_;
  const int* tokens_ = nullptr;
  int act_batch_ = 0;
  double loss_scale_ = loss_scaled ? initial_loss_scale : 1.0;
  int good_steps_ = 0;
};

}  // namespace trainer
