// The reference trainer's hand-written backward pass, checked against central finite differences in
// float64 for every preset's model: L = mean cross-entropy + Σ MoE auxiliary losses.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <moe/moe.hpp>

#include "trainer/corpus.hpp"
#include "trainer/model.hpp"

namespace {

template <class Preset, class DenseFFN>
void check_model(trainer::preset kind, std::uint64_t seed) {
  trainer::model_config c;
  c.kind = kind;
  c.vocab = 11;
  c.d_model = 8;
  c.heads = 2;
  c.layers = 2;  // ST-MoE below depth 4: every other block is sparse
  c.seq = 5;
  c.experts = 4;
  c.seed = seed;
  using model_t = trainer::model<double, moe::host, Preset, DenseFFN>;
  model_t m(c);
  const int B = 3, N = B * c.seq;
  std::mt19937 gen{static_cast<unsigned>(seed)};
  std::uniform_int_distribution<int> tok(0, c.vocab - 1);
  trainer::batch b;
  b.B = B;
  b.S = c.seq;
  for (int i = 0; i < N; ++i) {
    b.inputs.push_back(tok(gen));
    b.targets.push_back(tok(gen));
  }
  b.index_tokens(c.vocab);

  // Move every norm gain away from 1 so its gradient is generic.
  for (auto& p : m.parameters())
    if (p.rank == 1)
      for (moe::index_t i = 0; i < p.size(); ++i) p.value[i] = 0.7 + 0.05 * double(i % 7);

  const std::uint32_t step = 3;
  auto loss = [&]() { return m.forward(b.inputs.data(), b.targets.data(), B, true, step) + m.aux_loss(); };
  loss();
  m.zero_grad();
  m.backward(b.by_token.data(), b.token_offsets.data(), B);
  std::vector<std::vector<double>> grads;
  auto params = m.parameters();
  for (const auto& p : params) grads.emplace_back(p.grad, p.grad + p.size());

  std::vector<std::vector<int>> routing;
  for (const auto& l : m.moe_layers()) routing.push_back(l->routing().slot);
  auto same_routing = [&]() {
    for (std::size_t i = 0; i < m.moe_layers().size(); ++i)
      if (m.moe_layers()[i]->routing().slot != routing[i]) return false;
    return true;
  };

  const double h = 1e-6;
  int checked = 0;
  for (std::size_t k = 0; k < params.size(); ++k) {
    const auto& p = params[k];
    const moe::index_t stride = p.size() > 40 ? p.size() / 40 : 1;  // ≤ 40 elements per tensor
    for (moe::index_t i = 0; i < p.size(); i += stride) {
      const double saved = p.value[i];
      p.value[i] = saved + h;
      const double lp = loss();
      const bool rp = same_routing();
      p.value[i] = saved - h;
      const double lm = loss();
      const bool rm = same_routing();
      p.value[i] = saved;
      const double fd = (lp - lm) / (2 * h);
      const double an = grads[k][std::size_t(i)];
      INFO(p.name, "[", i, "] analytic=", an, " finite-difference=", fd);
      REQUIRE(rp);
      REQUIRE(rm);
      CHECK(std::abs(fd - an) <= 1e-6 * std::max(1.0, std::abs(an)));
      ++checked;
    }
  }
  CHECK(checked > 100);

  // --freeze: with groups frozen, backward leaves the gradients of frozen attention, dense FFNs,
  // routers and experts at zero (their weight-gradient GEMMs are skipped) and gives every trainable
  // parameter the gradient checked above, bit for bit (∂L/∂x still flows through frozen layers).
  const bool has_moe = !m.moe_layers().empty();
  for (const unsigned frozen : {unsigned(trainer::group_attention), unsigned(trainer::group_dense_ffn),
                                unsigned(trainer::group_router), unsigned(trainer::group_moe),
                                unsigned(trainer::group_non_moe)}) {
    if (!has_moe && (frozen & trainer::group_moe)) continue;
    CAPTURE(trainer::describe_groups(frozen));
    m.set_frozen(frozen);
    loss();
    m.zero_grad();
    m.backward(b.by_token.data(), b.token_offsets.data(), B);
    constexpr unsigned skipped = trainer::group_attention | trainer::group_dense_ffn | trainer::group_moe;
    int frozen_tensors = 0;
    for (std::size_t k = 0; k < params.size(); ++k) {
      const auto& p = params[k];
      CAPTURE(p.name);
      const unsigned group = trainer::group_of(p.name);
      const std::vector<double> g(p.grad, p.grad + p.size());
      if (frozen & group & skipped) {
        CHECK(g == std::vector<double>(g.size(), 0.0));
        ++frozen_tensors;
      } else if (!(frozen & group)) {
        CHECK(g == grads[k]);
      }
    }
    CHECK(frozen_tensors > 0);
  }
  m.set_frozen(0);
}

}  // namespace

TEST_CASE("trainer model gradients: dense") {
  check_model<moe::presets::switch_transformer<double>, moe::relu_ffn>(trainer::preset::dense, 1);
}
TEST_CASE("trainer model gradients: switch") {
  check_model<moe::presets::switch_transformer<double>, moe::relu_ffn>(trainer::preset::switch_transformer, 2);
}
TEST_CASE("trainer model gradients: glam") {
  check_model<moe::presets::glam<double>, moe::geglu_ffn>(trainer::preset::glam, 3);
}
TEST_CASE("trainer model gradients: st-moe (sparse block with a dense FFN)") {
  check_model<moe::presets::st_moe<double>, moe::geglu_ffn>(trainer::preset::st_moe, 4);
}

TEST_CASE("layout: equal FFN FLOPs per token across presets") {
  trainer::model_config c;
  c.d_model = 96;
  c.layers = 8;
  c.seq = 64;
  double dense = 0;
  for (auto p : {trainer::preset::dense, trainer::preset::switch_transformer, trainer::preset::glam,
                 trainer::preset::st_moe}) {
    c.kind = p;
    const auto cost = trainer::cost(c);
    if (p == trainer::preset::dense) dense = cost.flops_per_token;
    // Within 3% (rounding of widths, plus the routers' d·E FLOPs).
    CHECK(std::abs(cost.flops_per_token - dense) / dense < 0.03);
    if (p != trainer::preset::dense) CHECK(cost.total_params > 1.2 * cost.active_params);  // idle experts
  }
  c.kind = trainer::preset::st_moe;
  const auto blocks = trainer::make_layout(c);
  CHECK(blocks[3].ffns.size() == 2);  // every 4th block is sparse: MoE then dense FFN
  CHECK(blocks[3].ffns[0].moe);
  CHECK(!blocks[3].ffns[1].moe);
  CHECK(blocks[7].ffns[0].moe);
  CHECK(!blocks[2].ffns[0].moe);
  c.layers = 3;  // shallower than 4: every other block
  CHECK(trainer::make_layout(c)[1].ffns[0].moe);
}
