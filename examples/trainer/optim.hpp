// examples/trainer/optim.hpp — AdamW and Adafactor, the learning-rate schedules, and gradient
// clipping by global norm, written against an execution space.
//
// AdamW (Loshchilov & Hutter 2019): bias-corrected moments, decoupled weight decay on matrices.
// Adafactor (Shazeer & Stern 2018, as configured for T5 and the Switch Transformer): no first
// moment; the second moment of every matrix is factored into row and column sums (per expert for
// [E, a, b] expert tensors), decay β₂ₜ = 1 − t^−0.8, ε₁ = 1e-30, update clipping at RMS 1; an
// explicit learning rate (no relative step, no parameter scaling).
#pragma once

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <moe/moe.hpp>

#include "model.hpp"

namespace trainer {

enum class optimizer_kind { adamw, adafactor };
enum class schedule_kind { inverse_sqrt, cosine };

struct optim_config {
  optimizer_kind kind = optimizer_kind::adamw;
  double lr = 3e-3;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;  // AdamW
  double weight_decay = 0.01;                      // AdamW, matrices only
  double clip = 1.0;                               // global gradient norm; 0 = off
  schedule_kind schedule = schedule_kind::inverse_sqrt;
  int warmup = 50;
  int total_steps = 1000;  // the cosine schedule decays to 10% of lr at this step
};

// Learning rate at step t (1-based): linear warm-up, then inverse square root or cosine.
inline double learning_rate(const optim_config& c, int t) {
  const double w = std::max(1, c.warmup);
  if (t <= c.warmup) return c.lr * double(t) / w;
  if (c.schedule == schedule_kind::inverse_sqrt) return c.lr * std::sqrt(w / double(t));
  const double progress = std::min(1.0, double(t - c.warmup) / std::max(1.0, double(c.total_steps - c.warmup)));
  return c.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(3.141592653589793 * progress)));
}

// One named optimiser state tensor (for checkpoints). For a tensor of experts it holds
// `components` blocks (AdamW: m then v), each made of `leading` equal per-expert chunks, so a
// checkpoint can store the state of all experts and a run with another number of ranks can take
// its own experts' chunks back.
template <class T>
struct state_view {
  std::string name;
  T* data;
  index_t size;
  int components = 1;
  index_t leading = 0;  // experts in this tensor (0: not an expert tensor)
  bool sharded = false;
  index_t first = 0, global_leading = 0;
};

template <class T, class Space>
class optimizer {
 public:
  // `sum_over_ranks` (expert parallelism): adds a value over all ranks; the squared norms of the
  // sharded expert gradients go through it (replicated gradients are the same on every rank).
  optimizer(const optim_config& c, std::vector<param_view<T>> params, const Space& space,
            std::function<double(double)> sum_over_ranks = {})
      : cfg_(c), params_(std::move(params)), space_(space), sum_over_ranks_(std::move(sum_over_ranks)) {
    index_t total = 0, largest = 1;
    for (const auto& p : params_) {
      layout l;
      l.offset = total;
      const bool experts = is_expert_tensor(p);
      l.clip_slices = experts ? p.shape[0] : 1;
      if (c.kind == optimizer_kind::adamw) {
        l.size = 2 * p.size();  // m, v
      } else if (p.rank == 3 || (p.rank == 2 && !experts)) {
        // Factored: per slice (per expert for [E, a, b]) row sums + column sums.
        l.slices = p.rank == 3 ? p.shape[0] : 1;
        l.rows = p.shape[p.rank - 2];
        l.cols = p.shape[p.rank - 1];
        l.size = l.slices * (l.rows + l.cols);
      } else {
        l.size = p.size();  // vectors, and per-expert vectors [E, f]: unfactored
      }
      total += l.size;
      largest = std::max(largest, p.size());
      layouts_.push_back(l);
    }
    state_ = moe::buffer<Space>(space_, sizeof(T) * std::size_t(std::max<index_t>(total, 1)));
    space_.fill_zero(state_.data(), state_.bytes());
    scratch_ = moe::buffer<Space>(space_, sizeof(T) * std::size_t(largest));
    squares_ = moe::buffer<Space>(space_, sizeof(T) * std::size_t(largest));
    norms_ = moe::buffer<Space>(space_, sizeof(T) * std::size_t(params_.size()));
    for (const auto& l : layouts_) max_slices_ = std::max({max_slices_, l.slices, l.clip_slices});
    totals_ = moe::buffer<Space>(space_, sizeof(T) * std::size_t(2 * max_slices_ + 1));
  }

  int steps_taken() const { return t_; }
  void set_steps_taken(int t) { t_ = t; }

  // Global L2 norm of all gradients (synchronises).
  double gradient_norm() {
    T* sq = squares_.template as<T>();
    T* norms = norms_.template as<T>();
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const T* g = params_[i].grad;
      space_.parallel_for(params_[i].size(), [=] MOE_LAMBDA(index_t j) { sq[j] = g[j] * g[j]; });
      space_.reduce_sum(sq, params_[i].size(), norms + i);
    }
    std::vector<T> host(params_.size());
    space_.copy_to_host(host.data(), norms, sizeof(T) * host.size());
    double replicated = 0, sharded = 0;
    for (std::size_t i = 0; i < params_.size(); ++i) (params_[i].sharded ? sharded : replicated) += double(host[i]);
    if (sum_over_ranks_) sharded = sum_over_ranks_(sharded);
    return std::sqrt(replicated + sharded);
  }

  // Clips, then applies one update at learning rate `lr`. Returns the pre-clipping gradient norm.
  // A non-finite norm raises moe::numeric_error, or with `skip_nonfinite` (loss-scaled float16
  // layers, whose gradients overflow now and then) returns it and leaves everything untouched.
  double step(double lr, bool skip_nonfinite = false) {
    const double norm = gradient_norm();
    if (!std::isfinite(norm)) {
      if (skip_nonfinite) return norm;
      throw moe::numeric_error("gradient norm is " + std::to_string(norm) + " at update " + std::to_string(t_ + 1));
    }
    ++t_;
    const T clip_scale = T(cfg_.clip > 0 && norm > cfg_.clip ? cfg_.clip / norm : 1.0);
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if (cfg_.kind == optimizer_kind::adamw)
        adamw_update(params_[i], layouts_[i], clip_scale, T(lr));
      else
        adafactor_update(params_[i], layouts_[i], clip_scale, T(lr));
    }
    return norm;
  }

  std::vector<state_view<T>> state() {
    std::vector<state_view<T>> out;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const auto& p = params_[i];
      state_view<T> v{"opt." + p.name, state_.template as<T>() + layouts_[i].offset, layouts_[i].size};
      v.components = cfg_.kind == optimizer_kind::adamw ? 2 : 1;
      v.leading = is_expert_tensor(p) ? p.shape[0] : 0;
      v.sharded = p.sharded;
      v.first = p.first;
      v.global_leading = p.global_leading;
      out.push_back(v);
    }
    return out;
  }

  static bool is_expert_tensor(const param_view<T>& p) { return p.name.find(".experts.") != std::string::npos; }

  // Public so that nvcc accepts the extended lambdas inside (they may not sit in private members).
  struct layout {
    index_t offset = 0, size = 0, slices = 0, rows = 0, cols = 0;
    index_t clip_slices = 1;  // Adafactor update clipping per expert (independent of the sharding)
  };

  void adamw_update(const param_view<T>& p, const layout& l, T clip_scale, T lr) {
    T* w = p.value;
    const T* g = p.grad;
    T* m = state_.template as<T>() + l.offset;
    T* v = m + p.size();
    const T b1 = T(cfg_.beta1), b2 = T(cfg_.beta2), eps = T(cfg_.eps);
    const T c1 = T(1) / T(1 - std::pow(cfg_.beta1, t_)), c2 = T(1) / T(1 - std::pow(cfg_.beta2, t_));
    const T decay = p.matrix ? T(cfg_.weight_decay) : T(0);
    space_.parallel_for(p.size(), [=] MOE_LAMBDA(index_t i) {
      const T gi = g[i] * clip_scale;
      m[i] = b1 * m[i] + (T(1) - b1) * gi;
      v[i] = b2 * v[i] + (T(1) - b2) * gi * gi;
      w[i] -= lr * ((m[i] * c1) / (std::sqrt(v[i] * c2) + eps) + decay * w[i]);
    });
  }

  void adafactor_update(const param_view<T>& p, const layout& l, T clip_scale, T lr) {
    T* w = p.value;
    const T* g = p.grad;
    T* st = state_.template as<T>() + l.offset;
    T* u = scratch_.template as<T>();
    const T beta2 = T(1 - std::pow(double(t_), -0.8));
    const T eps1 = T(1e-30);
    const index_t n = p.size();
    if (l.slices == 0) {  // unfactored
      space_.parallel_for(n, [=] MOE_LAMBDA(index_t i) {
        const T gi = g[i] * clip_scale;
        st[i] = beta2 * st[i] + (T(1) - beta2) * (gi * gi + eps1);
        u[i] = gi / std::sqrt(st[i]);
      });
    } else {
      const index_t R = l.rows, C = l.cols;
      // Row sums R_i and column sums C_j of g² + ε₁, per slice.
      space_.parallel_for(l.slices * R, [=] MOE_LAMBDA(index_t i) {
        const index_t e = i / R, r = i - e * R;
        T acc = 0;
        for (index_t c = 0; c < C; ++c) {
          const T gi = g[(e * R + r) * C + c] * clip_scale;
          acc += gi * gi + eps1;
        }
        T* row = st + e * (R + C);
        row[r] = beta2 * row[r] + (T(1) - beta2) * acc;
      });
      space_.parallel_for(l.slices * C, [=] MOE_LAMBDA(index_t i) {
        const index_t e = i / C, c = i - e * C;
        T acc = 0;
        for (index_t r = 0; r < R; ++r) {
          const T gi = g[(e * R + r) * C + c] * clip_scale;
          acc += gi * gi + eps1;
        }
        T* col = st + e * (R + C) + R;
        col[c] = beta2 * col[c] + (T(1) - beta2) * acc;
      });
      // V̂_rc = R_r C_c / Σ_r R_r ; u = g / sqrt(V̂)
      T* row_total = totals_.template as<T>();
      space_.parallel_for(l.slices, [=] MOE_LAMBDA(index_t e) {
        const T* row = st + e * (R + C);
        T acc = 0;
        for (index_t q = 0; q < R; ++q) acc += row[q];
        row_total[e] = acc;
      });
      space_.parallel_for(n, [=] MOE_LAMBDA(index_t i) {
        const index_t e = i / (R * C), rc = i - e * R * C, r = rc / C, c = rc - r * C;
        const T* row = st + e * (R + C);
        const T vhat = row[r] * row[R + c] / row_total[e];
        u[i] = g[i] * clip_scale / std::sqrt(vhat);
      });
    }
    // Update clipping (threshold 1): u /= max(1, RMS(u)), per expert for expert tensors.
    const index_t slices = l.clip_slices, per = n / slices;
    T* sq_sum = totals_.template as<T>() + max_slices_;
    space_.parallel_for(slices, [=] MOE_LAMBDA(index_t e) {
      T acc = 0;
      for (index_t i = e * per; i < (e + 1) * per; ++i) acc += u[i] * u[i];
      sq_sum[e] = acc;
    });
    space_.parallel_for(n, [=] MOE_LAMBDA(index_t i) {
      const T rms = std::sqrt(sq_sum[i / per] / T(per));
      w[i] -= lr * u[i] / (rms > T(1) ? rms : T(1));
    });
  }

 private:
  optim_config cfg_;
  std::vector<param_view<T>> params_;
  Space space_;
  std::function<double(double)> sum_over_ranks_;
  std::vector<layout> layouts_;
  moe::buffer<Space> state_, scratch_, squares_, norms_, totals_;
  index_t max_slices_ = 0;
  int t_ = 0;
};

}  // namespace trainer
