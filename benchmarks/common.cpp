// benchmarks/common.cpp — data, reference timings and the dense FFN baseline (see common.hpp).
#include "common.hpp"

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>

namespace moe_bench {

bench_sizes& sizes() {
  static bench_sizes s;
  return s;
}

std::vector<float> random_values(std::size_t n, std::uint64_t seed, float lo, float hi) {
  std::mt19937_64 gen(seed);
  std::vector<float> v(n);
  for (auto& x : v) {
    const std::uint64_t bits = gen();
    const float m = lo + (hi - lo) * float(bits >> 40) / 16777216.0f;
    x = (bits & 1u) ? m : -m;
  }
  return v;
}

namespace {

// x of one token: routing columns first, then filler.
void fill_token(std::vector<float>& x, const routed_inputs& in, int t, std::mt19937_64& gen) {
  std::uniform_real_distribution<float> small(0.1f, 0.5f), big(0.1f, 1.0f);
  std::bernoulli_distribution sign(0.5);
  float* row = x.data() + std::size_t(t) * std::size_t(in.d);
  for (int j = 0; j < in.d; ++j) {
    const float m = j < in.experts ? small(gen) : big(gen);
    row[j] = sign(gen) ? m : -m;
  }
  row[in.first[std::size_t(t)]] = 4.0f;
  if (in.k == 2) row[in.second[std::size_t(t)]] = 3.0f;
}

}  // namespace

routed_inputs make_routed_inputs(int tokens, int d, int experts, int k, skew s, std::uint64_t seed) {
  if (d < experts) throw std::invalid_argument("make_routed_inputs: d_model must be >= experts");
  if (k < 1 || k > 2 || (k == 2 && experts < 2)) throw std::invalid_argument("make_routed_inputs: k must be 1 or 2");
  routed_inputs in;
  in.tokens = tokens;
  in.d = d;
  in.experts = experts;
  in.k = k;
  in.first.resize(std::size_t(tokens));
  if (k == 2) in.second.resize(std::size_t(tokens));
  std::mt19937_64 gen(seed);
  if (s == skew::uniform) {
    // Round j hands expert e one first choice and expert (e + 1 + j mod (E−1)) mod E one second
    // choice: both maps are bijections within a round, so every expert gets T/E of each. Token
    // order is shuffled so that an expert's tokens are spread over the batch.
    std::vector<int> order(static_cast<std::size_t>(tokens));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), gen);
    for (int i = 0; i < tokens; ++i) {
      const int t = order[std::size_t(i)], e = i % experts, j = i / experts;
      in.first[std::size_t(t)] = e;
      if (k == 2) in.second[std::size_t(t)] = (e + 1 + j % (experts - 1)) % experts;
    }
  } else {
    std::vector<double> w(static_cast<std::size_t>(experts));
    for (int e = 0; e < experts; ++e) w[std::size_t(e)] = 1.0 / double(e + 1);
    std::discrete_distribution<int> zipf(w.begin(), w.end());
    for (int t = 0; t < tokens; ++t) {
      in.first[std::size_t(t)] = zipf(gen);
      if (k == 2) {
        int e2;
        do e2 = zipf(gen);
        while (e2 == in.first[std::size_t(t)]);
        in.second[std::size_t(t)] = e2;
      }
    }
  }
  // W_r = [I_E; 0] + noise in ±[1e-4, 1e-3]: logits = x[t, :E] + O(0.01).
  in.w_router = random_values(std::size_t(d) * std::size_t(experts), seed + 1, 1e-4f, 1e-3f);
  for (int e = 0; e < experts; ++e) in.w_router[std::size_t(e) * std::size_t(experts) + std::size_t(e)] += 1.0f;
  in.x = rerandomized_x(in, seed + 2);
  return in;
}

std::vector<float> rerandomized_x(const routed_inputs& in, std::uint64_t seed) {
  std::vector<float> x(std::size_t(in.tokens) * std::size_t(in.d));
  std::mt19937_64 gen(seed);
  for (int t = 0; t < in.tokens; ++t) fill_token(x, in, t, gen);
  return x;
}

moe::routing_shape one_group_shape(int tokens, int experts, int pairs_per_token, int capacity, index_t d_model) {
  moe::routing_shape s;
  s.tokens = tokens;
  s.experts = experts;
  s.groups = 1;
  s.group_tokens = tokens;
  s.pairs_per_token = pairs_per_token;
  s.capacity = capacity;
  s.d_model = d_model;
  s.total_tokens = tokens;
  s.total_groups = 1;
  return s;
}

int capacity_for(double cf, int tokens, int experts) {
  moe::capacity_factor::config c;
  c.train = cf;
  return moe::capacity_factor::capacity(c, true, tokens, experts, 1);
}

std::vector<int> expert_loads(const routed_inputs& in) {
  std::vector<int> load(std::size_t(in.experts), 0);
  for (int e : in.first) ++load[std::size_t(e)];
  for (int e : in.second) ++load[std::size_t(e)];
  return load;
}

void parallel_copy(void* dst, const void* src, std::size_t bytes) {
  // 256 pieces: parallel_for runs loops below 64 indices serially.
  constexpr index_t pieces = 256;
  const std::size_t piece = (bytes + pieces - 1) / pieces;
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  space().parallel_for(pieces, [=](index_t i) {
    const std::size_t b = std::size_t(i) * piece;
    if (b < bytes) std::memcpy(d + b, s + b, std::min(piece, bytes - b));
  });
}

double copy_seconds(std::size_t bytes) {
  std::vector<float> src = random_values((bytes + 3) / 4, 7);
  std::vector<float> dst(src.size(), 1.0f);  // touched: no page faults in the timing
  return median_seconds([&] { parallel_copy(dst.data(), src.data(), bytes); }, 5, 2);
}

void set_load_counters(benchmark::State& st, const std::vector<std::int64_t>& routed, double dropped) {
  double total = 0, top = 0;
  for (auto r : routed) total += double(r), top = std::max(top, double(r));
  st.counters["load_max"] = total > 0 ? top / (total / double(routed.size())) : 0.0;
  st.counters["dropped"] = dropped;
}

// ---- dense FFN --------------------------------------------------------------------------------------

dense_ffn::dense_ffn(const dense_shape& s) : s_(s) {
  const std::size_t df = std::size_t(s.d) * std::size_t(s.f), tf = std::size_t(s.tokens) * std::size_t(s.f);
  auto scaled = [](const std::vector<float>& v, float scale) {
    host_vector out(v.begin(), v.end());
    for (auto& x : out) x *= scale;
    return out;
  };
  w_in_ = scaled(random_values(df, 11), 1.0f / std::sqrt(float(s.d)));
  w_out_ = scaled(random_values(df, 12), 1.0f / std::sqrt(float(s.f)));
  g_in_.assign(df, 0.0f);
  g_out_.assign(df, 0.0f);
  if (s.gated) {
    w_up_ = scaled(random_values(df, 13), 1.0f / std::sqrt(float(s.d)));
    g_up_.assign(df, 0.0f);
    lin_.assign(tf, 0.0f);
    dlin_.assign(tf, 0.0f);
  }
  pre_.assign(tf, 0.0f);
  hidden_.assign(tf, 0.0f);
  dh_.assign(tf, 0.0f);
}

double dense_ffn::forward_flops() const {
  return 2.0 * s_.tokens * double(s_.d) * s_.f * (s_.gated ? 3 : 2);
}

namespace {

// The element-wise parts of the dense FFN, one row per parallel_for index. The backward evaluates
// the activation (and its derivative) into a small buffer first and multiplies in a second loop:
// both loops vectorise (a fused loop with ReLU's derivative compiles to a branch per element).
template <class Act, bool Gated>
void activation_forward(index_t T, index_t f, const float* pre, const float* lin, float* hidden) {
  space().parallel_for(T, [=](index_t t) {
    for (index_t j = t * f; j < (t + 1) * f; ++j) {
      float h = Act::f(pre[j]);
      if constexpr (Gated) h *= lin[j];
      hidden[j] = h;
    }
  });
}

template <class Act, bool Gated>
void activation_backward(index_t T, index_t f, const float* pre, const float* lin, float* dh, float* dlin) {
  space().parallel_for(T, [=](index_t t) {
    constexpr index_t block = 256;
    float act[block], dact[block];
    for (index_t j0 = t * f; j0 < (t + 1) * f; j0 += block) {
      const index_t n = std::min(block, (t + 1) * f - j0);
      if constexpr (Gated) {
        for (index_t j = 0; j < n; ++j) {  // one loop: GELU's f and f' share their tanh
          act[j] = Act::f(pre[j0 + j]);
          dact[j] = Act::df(pre[j0 + j]);
        }
        for (index_t j = 0; j < n; ++j) {
          const float g = dh[j0 + j];
          dlin[j0 + j] = g * act[j];
          dh[j0 + j] = g * lin[j0 + j] * dact[j];
        }
      } else {
        for (index_t j = 0; j < n; ++j) dact[j] = Act::df(pre[j0 + j]);
        for (index_t j = 0; j < n; ++j) dh[j0 + j] *= dact[j];
      }
    }
  });
}

}  // namespace

void dense_ffn::forward(const float* x, float* y) {
  using moe::op;
  const moe::host& sp = space();
  const index_t T = s_.tokens, d = s_.d, f = s_.f;
  sp.gemm(op::none, op::none, T, f, d, 1.0f, x, d, w_in_.data(), f, 0.0f, pre_.data(), f);
  if (s_.gated) sp.gemm(op::none, op::none, T, f, d, 1.0f, x, d, w_up_.data(), f, 0.0f, lin_.data(), f);
  if (s_.gated && s_.gelu)
    activation_forward<moe::activation::gelu, true>(T, f, pre_.data(), lin_.data(), hidden_.data());
  else if (s_.gated)
    activation_forward<moe::activation::relu, true>(T, f, pre_.data(), lin_.data(), hidden_.data());
  else if (s_.gelu)
    activation_forward<moe::activation::gelu, false>(T, f, pre_.data(), nullptr, hidden_.data());
  else
    activation_forward<moe::activation::relu, false>(T, f, pre_.data(), nullptr, hidden_.data());
  sp.gemm(op::none, op::none, T, d, f, 1.0f, hidden_.data(), f, w_out_.data(), d, 0.0f, y, d);
}

void dense_ffn::backward(const float* x, const float* dy, float* dx) {
  using moe::op;
  const moe::host& sp = space();
  const index_t T = s_.tokens, d = s_.d, f = s_.f;
  float* dh = dh_.data();
  float* dl = dlin_.data();
  // ∂hidden = dy·W_outᵀ;  ∂W_out += hiddenᵀ·dy
  sp.gemm(op::none, op::transpose, T, f, d, 1.0f, dy, d, w_out_.data(), d, 0.0f, dh, f);
  sp.gemm(op::transpose, op::none, f, d, T, 1.0f, hidden_.data(), f, dy, d, 1.0f, g_out_.data(), d);
  // ∂pre (in place) and ∂lin
  if (s_.gated && s_.gelu)
    activation_backward<moe::activation::gelu, true>(T, f, pre_.data(), lin_.data(), dh, dl);
  else if (s_.gated)
    activation_backward<moe::activation::relu, true>(T, f, pre_.data(), lin_.data(), dh, dl);
  else if (s_.gelu)
    activation_backward<moe::activation::gelu, false>(T, f, pre_.data(), nullptr, dh, nullptr);
  else
    activation_backward<moe::activation::relu, false>(T, f, pre_.data(), nullptr, dh, nullptr);
  // ∂W_in += xᵀ·∂pre;  ∂x = ∂pre·W_inᵀ (+ ∂lin·W_upᵀ)
  sp.gemm(op::transpose, op::none, d, f, T, 1.0f, x, d, dh, f, 1.0f, g_in_.data(), f);
  if (s_.gated) sp.gemm(op::transpose, op::none, d, f, T, 1.0f, x, d, dl, f, 1.0f, g_up_.data(), f);
  sp.gemm(op::none, op::transpose, T, d, f, 1.0f, dh, f, w_in_.data(), f, 0.0f, dx, d);
  if (s_.gated) sp.gemm(op::none, op::transpose, T, d, f, 1.0f, dl, f, w_up_.data(), f, 1.0f, dx, d);
}

double dense_seconds(const dense_shape& s, bool backward, int reps) {
  dense_ffn ffn(s);
  const std::size_t n = std::size_t(s.tokens) * std::size_t(s.d);
  const std::vector<float> x = random_values(n, 21), dy = random_values(n, 22);
  std::vector<float> y(n), dx(n);
  return median_seconds(
      [&] {
        ffn.forward(x.data(), y.data());
        if (backward) ffn.backward(x.data(), dy.data(), dx.data());
      },
      reps, 1);
}

}  // namespace moe_bench
