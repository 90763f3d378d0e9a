// The reference trainer's hand-written backward pass, checked against central finite differences in
// float64 for every preset's model: L = mean cross-entropy + Σ MoE auxiliary losses; with and without
// dropout (--dropout, --expert-dropout: a training step's masks are fixed by its step, so the loss is
// a smooth function of the parameters and finite differences apply).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <moe/moe.hpp>

#include "trainer/corpus.hpp"
#include "trainer/model.hpp"

namespace {

// B sequences of S uniformly random tokens and targets, indexed by token.
trainer::batch random_batch(int vocab, int B, int S, unsigned seed) {
  std::mt19937 gen{seed};
  std::uniform_int_distribution<int> tok(0, vocab - 1);
  trainer::batch b;
  b.B = B;
  b.S = S;
  for (int i = 0; i < B * S; ++i) {
    b.inputs.push_back(tok(gen));
    b.targets.push_back(tok(gen));
  }
  b.index_tokens(vocab);
  return b;
}

template <class Preset, class DenseFFN>
void check_model(trainer::preset kind, std::uint64_t seed, float dropout = 0, float expert_dropout = 0) {
  trainer::model_config c;
  if (dropout > 0) c.recipe.dropout = dropout;
  if (expert_dropout > 0) c.recipe.expert_dropout = expert_dropout;
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
  const int B = 3;
  const trainer::batch b = random_batch(c.vocab, B, c.seq, static_cast<unsigned>(seed));

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

  // --freeze: with groups frozen, backward leaves the gradients of every frozen group at zero (not
  // computed) and gives every trainable parameter the gradient checked above, bit for bit (∂L/∂x
  // still flows through frozen layers).
  const bool has_moe = !m.moe_layers().empty();
  for (const unsigned frozen : {unsigned(trainer::group_attention), unsigned(trainer::group_dense_ffn),
                                unsigned(trainer::group_router), unsigned(trainer::group_moe),
                                unsigned(trainer::group_embedding), unsigned(trainer::group_norms),
                                unsigned(trainer::group_non_moe)}) {
    if (!has_moe && (frozen & trainer::group_moe)) continue;
    CAPTURE(trainer::describe_groups(frozen));
    m.set_frozen(frozen);
    loss();
    m.zero_grad();
    m.backward(b.by_token.data(), b.token_offsets.data(), B);
    int frozen_tensors = 0;
    for (std::size_t k = 0; k < params.size(); ++k) {
      const auto& p = params[k];
      CAPTURE(p.name);
      const unsigned group = trainer::group_of(p.name);
      const std::vector<double> g(p.grad, p.grad + p.size());
      if (frozen & group) {
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
// Every dropout site (embeddings, attention probabilities, sublayer outputs, dense FFN hidden units,
// the final norm's output) and the experts' own dropout, at rates high enough that every site drops.
TEST_CASE("trainer model gradients with dropout: dense") {
  check_model<moe::presets::switch_transformer<double>, moe::relu_ffn>(trainer::preset::dense, 5, 0.3f);
}
TEST_CASE("trainer model gradients with dropout: switch (Switch's fine-tuning recipe)") {
  check_model<moe::presets::switch_transformer<double>, moe::relu_ffn>(trainer::preset::switch_transformer, 6,
                                                                        0.1f, 0.4f);
}
TEST_CASE("trainer model gradients with dropout: st-moe") {
  check_model<moe::presets::st_moe<double>, moe::geglu_ffn>(trainer::preset::st_moe, 7, 0.2f, 0.3f);
}

// On the host, attention's per-head GEMMs run side by side on the pool and the layers' products in
// tiles: a float step (the loss and every gradient) must be the same bits at any thread count.
TEST_CASE("trainer model: a float training step is the same bits at 1, 2 and 3 host threads") {
  for (const trainer::preset kind : {trainer::preset::switch_transformer, trainer::preset::dense}) {
    CAPTURE(int(kind));
    trainer::model_config c;
    c.kind = kind;
    c.vocab = 37;
    c.d_model = 32;
    c.heads = 4;
    c.layers = 2;
    c.seq = 48;
    c.experts = 4;
    c.seed = 11;
    c.recipe.dropout = 0.1f;  // attention probabilities included
    const int B = 6;
    const trainer::batch b = random_batch(c.vocab, B, c.seq, 12);
    auto step = [&](int threads) {
      trainer::model<float, moe::host, moe::presets::switch_transformer<float>, moe::relu_ffn> m(c,
                                                                                                moe::host(threads));
      const double loss = m.forward(b.inputs.data(), b.targets.data(), B, true, 5) + m.aux_loss();
      m.zero_grad();
      m.backward(b.by_token.data(), b.token_offsets.data(), B);
      std::vector<float> grads;
      for (const auto& p : m.parameters()) grads.insert(grads.end(), p.grad, p.grad + p.size());
      return std::pair{loss, grads};
    };
    const auto [loss, grads] = step(1);
    CHECK(std::isfinite(loss));
    CHECK(std::any_of(grads.begin(), grads.end(), [](float g) { return g != 0; }));
    for (const int threads : {2, 3}) {
      CAPTURE(threads);
      const auto [loss_many, grads_many] = step(threads);
      CHECK(std::memcmp(&loss_many, &loss, sizeof loss) == 0);
      REQUIRE(grads_many.size() == grads.size());
      CHECK(std::memcmp(grads_many.data(), grads.data(), grads.size() * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("dropout masks: rate, scale, and the same mask however the elements are split") {
  const moe::host sp;
  for (const float rate : {0.1f, 0.4f}) {
    CAPTURE(rate);
    trainer::dropout_mask m;
    m.rng = moe::rng_stream{9, trainer::model_dropout_stream, 17, 5};
    m.rate = rate;
    const moe::index_t n = 200003;
    std::vector<double> ones(std::size_t(n), 1.0), whole(std::size_t(n), -1.0);
    trainer::apply_dropout(sp, m, ones.data(), n, whole.data());
    // The rate is quantised to 1/65536, and the kept scale follows it (an exact expectation).
    const double q = std::round(double(rate) * 65536.0) / 65536.0;
    CHECK(std::abs(q - double(rate)) <= 0.5 / 65536.0);
    std::size_t dropped = 0;
    for (const double v : whole) {
      if (v == 0) ++dropped;
      else CHECK(v == doctest::Approx(1.0 / (1.0 - q)).epsilon(1e-12));
    }
    // Binomial: within 5 standard deviations of n·q.
    const double expect = double(n) * q, sd = std::sqrt(expect * (1 - q));
    CHECK(std::abs(double(dropped) - expect) < 5 * sd);
    // Split at an index that is not a multiple of 4 (a Philox block straddles the cut): the second
    // part, keyed from its global start, draws exactly the whole's mask.
    const moe::index_t cut = 70001;
    std::vector<double> parts(std::size_t(n), -1.0);
    trainer::apply_dropout(sp, m, ones.data(), cut, parts.data());
    trainer::dropout_mask rest = m;
    rest.base = std::uint64_t(cut);
    trainer::apply_dropout(sp, rest, ones.data() + cut, n - cut, parts.data() + cut);
    CHECK(parts == whole);
    // Another step or site draws another mask.
    trainer::dropout_mask other = m;
    other.rng.step = 6;
    std::vector<double> next(static_cast<std::size_t>(n));
    trainer::apply_dropout(sp, other, ones.data(), n, next.data());
    CHECK(next != whole);
  }
}

TEST_CASE("trainer model dropout: training only, and keyed by global position across a split batch") {
  trainer::model_config c;
  c.kind = trainer::preset::dense;
  c.vocab = 13;
  c.d_model = 8;
  c.heads = 2;
  c.layers = 2;
  c.seq = 6;
  c.seed = 11;
  using model_t = trainer::model<double, moe::host, moe::presets::switch_transformer<double>, moe::relu_ffn>;
  const int B = 4, N = B * c.seq;
  const trainer::batch b = random_batch(c.vocab, B, c.seq, 11);

  model_t plain(c);
  trainer::model_config cz = c;
  cz.recipe.dropout = 0.0f;
  model_t zero(cz);
  trainer::model_config cd = c;
  cd.recipe.dropout = 0.25f;
  model_t dropped(cd);
  const double base_train = plain.forward(b.inputs.data(), b.targets.data(), B, true, 7);
  CHECK(zero.forward(b.inputs.data(), b.targets.data(), B, true, 7) == base_train);  // rate 0: no dropout
  const double with_dropout = dropped.forward(b.inputs.data(), b.targets.data(), B, true, 7);
  CHECK(with_dropout != base_train);
  CHECK(dropped.forward(b.inputs.data(), b.targets.data(), B, true, 8) != with_dropout);  // a mask per step
  // Evaluation runs the network without dropout.
  CHECK(dropped.forward(b.inputs.data(), b.targets.data(), B, false, 7) ==
        plain.forward(b.inputs.data(), b.targets.data(), B, false, 7));

  // Two data-parallel shares of the batch (sequences 0–1 and 2–3, each model told its first
  // sequence, gradients normalised by the global token count) add up to the whole batch's loss and
  // gradients: every dropout site draws by global position. (The dense model: its tokens do not
  // interact across sequences, as MoE routing with capacity would.)
  dropped.zero_grad();
  const double whole = dropped.forward(b.inputs.data(), b.targets.data(), B, true, 7);
  dropped.backward(b.by_token.data(), b.token_offsets.data(), B);
  std::vector<std::vector<double>> whole_grads;
  for (const auto& p : dropped.parameters()) whole_grads.emplace_back(p.grad, p.grad + p.size());
  model_t share(cd);
  share.zero_grad();
  double sum = 0;
  for (int first : {0, 2}) {
    trainer::batch half;
    half.B = 2;
    half.S = c.seq;
    half.inputs.assign(b.inputs.begin() + first * c.seq, b.inputs.begin() + (first + 2) * c.seq);
    half.targets.assign(b.targets.begin() + first * c.seq, b.targets.begin() + (first + 2) * c.seq);
    half.index_tokens(c.vocab);
    share.set_first_sequence(first);
    sum += share.forward(half.inputs.data(), half.targets.data(), 2, true, 7, N) / 2;
    share.backward(half.by_token.data(), half.token_offsets.data(), 2);
  }
  CHECK(sum == doctest::Approx(whole).epsilon(1e-12));
  const auto params = share.parameters();
  for (std::size_t k = 0; k < params.size(); ++k) {
    CAPTURE(params[k].name);
    for (moe::index_t i = 0; i < params[k].size(); ++i)
      REQUIRE(params[k].grad[i] == doctest::Approx(whole_grads[k][std::size_t(i)]).epsilon(1e-10).scale(1e-12));
  }
  // Without set_first_sequence the second share would reuse the first's masks: the sum differs.
  model_t unshifted(cd);
  double wrong = unshifted.forward(b.inputs.data(), b.targets.data(), 2, true, 7, N);
  trainer::batch second;
  second.B = 2;
  second.S = c.seq;
  second.inputs.assign(b.inputs.begin() + 2 * c.seq, b.inputs.end());
  second.targets.assign(b.targets.begin() + 2 * c.seq, b.targets.end());
  wrong = (wrong + unshifted.forward(second.inputs.data(), second.targets.data(), 2, true, 7, N)) / 2;
  CHECK(wrong != doctest::Approx(whole).epsilon(1e-9));
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
