// Hand-worked routing cases asserted exactly: which token goes to which slot, which is dropped,
// position order vs batch-prioritised routing, first choices before second choices, train vs eval
// capacity, routing groups, expert choice, dropless; plus the second-expert policies, the capacity
// formula, reproducibility and thread-count independence.
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <utility>

namespace {

// A layer whose router logits are its input rows (d_model = E, W_r = I).
template <class Layer>
Layer identity_router_layer(typename Layer::config c) {
  c.d_model = c.num_experts;
  c.router.jitter = 0.0f;
  Layer l(c);
  moe_test::set_identity_router(l);
  return l;
}

template <class Layer>
std::vector<double> route(Layer& l, const std::vector<std::vector<double>>& logits, bool training = true) {
  std::vector<double> x;
  for (const auto& row : logits) x.insert(x.end(), row.begin(), row.end());
  return moe_test::run_forward(l, x, int(logits.size()), {.training = training, .step = 0});
}

std::vector<int> slots_of(const moe::routing_decisions& r) { return r.slot; }

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

}  // namespace

TEST_CASE("top-1, position order: the first tokens of each expert are kept") {
  using L = moe::layer<double, moe::top_k>;
  L::config c{};
  c.d_ff = 32;  // wide enough that a kept token's ReLU output is not all zero
  c.num_experts = 2;
  c.capacity.train = 0.7;  // C = floor(0.7 · 6 / 2) = floor(2.1) = 2
  c.capacity.eval = 1.4;   // C = floor(4.2) = 4
  c.capacity.minimum = 1;
  L l = identity_router_layer<L>(c);
  const std::vector<std::vector<double>> logits = {{2, 0}, {1, 0}, {3, 0}, {0, 1}, {4, 0}, {0, 2}};
  CHECK(l.capacity(6, true) == 2);
  CHECK(l.capacity(6, false) == 4);

  const std::vector<double> y = route(l, logits);
  const auto r = l.routing();
  CHECK(r.expert == std::vector<int>{0, 0, 0, 1, 0, 1});
  // expert 0 receives t0, t1, t2, t4 in that order: t0, t1 fill its 2 slots, t2 and t4 are dropped.
  CHECK(slots_of(r) == std::vector<int>{0, 1, -1, 0, -1, 1});
  CHECK(r.gate[0] == doctest::Approx(sigmoid(2)).epsilon(1e-14));
  // A dropped token's layer output is exactly zero (the residual carries it).
  for (int j = 0; j < 2; ++j) {
    CHECK(y[2 * 2 + j] == 0.0);
    CHECK(y[4 * 2 + j] == 0.0);
    CHECK(y[0 * 2 + j] != 0.0);
  }
  const auto s = l.statistics();
  CHECK(s.capacity == 2);
  CHECK(s.routed_per_expert == std::vector<std::int64_t>{4, 2});
  CHECK(s.kept_per_expert == std::vector<std::int64_t>{2, 2});
  CHECK(s.dropped_pairs == 2);
  CHECK(s.dropped_fraction == doctest::Approx(2.0 / 6.0));
  CHECK(s.tokens_without_expert == 2);

  SUBCASE("evaluation uses the eval capacity factor: nothing is dropped") {
    route(l, logits, /*training=*/false);
    CHECK(slots_of(l.routing()) == std::vector<int>{0, 1, 2, 0, 3, 1});
    CHECK(l.statistics().capacity == 4);
    CHECK(l.statistics().dropped_pairs == 0);
  }
}

TEST_CASE("top-1, batch-prioritised routing: highest top-1 probability first") {
  using L = moe::layer<double, moe::top_k>;
  L::config c{};
  c.d_ff = 4;
  c.num_experts = 2;
  c.capacity.train = 0.7;
  c.capacity.minimum = 1;
  c.capacity.order = moe::drop_order::bpr;
  L l = identity_router_layer<L>(c);
  route(l, {{2, 0}, {1, 0}, {3, 0}, {0, 1}, {4, 0}, {0, 2}});
  // Expert 0 by top-1 probability: t4 (σ(4)), t2 (σ(3)), t0 (σ(2)), t1 (σ(1)) -> t4, t2 kept.
  // Expert 1: t5 (σ(2)) before t3 (σ(1)).
  CHECK(slots_of(l.routing()) == std::vector<int>{-1, -1, 1, 1, 0, 0});
}

TEST_CASE("top-2: all first choices fill the buffers before any second choice") {
  using L = moe::layer<double, moe::top_k>;
  L::config c{};
  c.d_ff = 4;
  c.num_experts = 3;
  c.router.k = 2;
  c.router.renormalize = true;
  c.capacity.train = 1.6;  // C = floor(1.6 · 4 / 3) = 2
  c.capacity.minimum = 1;
  L l = identity_router_layer<L>(c);
  route(l, {{3, 2, 0}, {2, 3, 0}, {3, 0, 2}, {3, 2, 0}});
  const auto r = l.routing();
  // choices: t0 (0,1)  t1 (1,0)  t2 (0,2)  t3 (0,1)
  CHECK(r.expert == std::vector<int>{0, 1, 1, 0, 0, 2, 0, 1});
  // Expert 0 first choices t0, t2 take both slots; t3's first choice and t1's second are dropped.
  // Expert 1: t1 (first) slot 0, t0 (second) slot 1, t3 (second) dropped. Expert 2: t2 (second).
  CHECK(slots_of(r) == std::vector<int>{0, 1, 0, -1, 1, 0, -1, -1});
  // Renormalised gates: p_j / (p_1 + p_2), summing to one.
  const double e3 = std::exp(3.0), e2 = std::exp(2.0);
  CHECK(r.gate[0] == doctest::Approx(e3 / (e3 + e2)).epsilon(1e-14));
  CHECK(r.gate[0] + r.gate[1] == doctest::Approx(1.0).epsilon(1e-15));
  const auto s = l.statistics();
  CHECK(s.routed_per_expert == std::vector<std::int64_t>{4, 3, 1});
  CHECK(s.kept_per_expert == std::vector<std::int64_t>{2, 2, 1});
  CHECK(s.dropped_pairs == 3);
  CHECK(s.tokens_without_expert == 1);  // t3 lost both choices
}

TEST_CASE("top-2 with batch-prioritised routing: BPR order applies to each choice rank") {
  using L = moe::layer<double, moe::top_k>;
  L::config c{};
  c.d_ff = 4;
  c.num_experts = 3;
  c.router.k = 2;
  c.capacity.train = 1.6;
  c.capacity.minimum = 1;
  c.capacity.order = moe::drop_order::bpr;
  L l = identity_router_layer<L>(c);
  // t3 is the most confident token, t0 the least: t3's first choice now beats t0's.
  route(l, {{1, 0.5, 0}, {2, 3, 0}, {3, 0, 2.5}, {5, 2, 0}});
  const auto r = l.routing();
  CHECK(r.expert == std::vector<int>{0, 1, 1, 0, 0, 2, 0, 1});
  // BPR order by top-1 probability: t3 (.95) > t1 (.71) > t2 (.60) > t0 (.51).
  // expert 0 first choices: t3 slot 0, t2 slot 1, t0 dropped; t1's second choice dropped.
  // expert 1: t1 first (slot 0); second choices in BPR order t3 (slot 1), t0 dropped. expert 2: t2.
  CHECK(slots_of(r) == std::vector<int>{-1, -1, 0, -1, 1, 0, 0, 1});
}

TEST_CASE("routing groups: capacity is per group") {
  using L = moe::layer<double, moe::top_k>;
  L::config c{};
  c.d_ff = 4;
  c.num_experts = 2;
  c.group_size = 4;
  c.capacity.train = 1.0;  // C = floor(1.0 · 4 / 2) = 2 per group
  c.capacity.minimum = 1;
  L l = identity_router_layer<L>(c);
  route(l, {{1, 0}, {1, 0}, {1, 0}, {1, 0}, {1, 0}, {1, 0}, {0, 1}, {0, 1}});
  CHECK(slots_of(l.routing()) == std::vector<int>{0, 1, -1, -1, 0, 1, 0, 1});
  const auto s = l.statistics();
  CHECK(s.groups == 2);
  CHECK(s.kept_per_expert == std::vector<std::int64_t>{4, 2});
}

TEST_CASE("expert choice: each expert takes its C highest-probability tokens") {
  using L = moe::layer<double, moe::expert_choice>;
  L::config c{};
  c.d_ff = 4;
  c.num_experts = 2;
  c.capacity.train = 1.0;  // C = 2
  c.capacity.minimum = 1;
  L l = identity_router_layer<L>(c);
  const std::vector<double> y = route(l, {{0, 0}, {3, 0}, {0, 3}, {-1, -1}});
  const auto r = l.routing();
  // Column e0: t1 (.953) then t0 and t3 tie at .5 -> t0 (lower index). Column e1: t2, then t0.
  // Pairs are t·E + e.
  CHECK(slots_of(r) == std::vector<int>{1, 1, 0, -1, -1, 0, -1, -1});
  CHECK(r.gate[0] == 0.5);
  CHECK(r.gate[1] == 0.5);
  for (int j = 0; j < 2; ++j) CHECK(y[3 * 2 + j] == 0.0);  // t3 picked by no expert
  const auto s = l.statistics();
  CHECK(s.tokens_without_expert == 1);
  CHECK(s.dropped_fraction == doctest::Approx(0.25));
  CHECK(s.kept_per_expert == std::vector<std::int64_t>{2, 2});
}

TEST_CASE("expert choice at scale: each (group, expert) keeps its C best tokens, ties to the lower index") {
  // A brute-force top-C per routing group and expert, against the slots the layer assigned, at sizes
  // where the host radix sort splits the T·E proposals by segment and sorts each part packed in
  // cache (G 4, E 32: 65536 proposals), buffers its stores (2^19 proposals), and splits a part again
  // (E 16, one group of 32768 tokens). Token rows come from a pool of 40, so that many tokens have
  // the very same probabilities: ties everywhere, broken by token index.
  struct scale_case {
    int experts, tokens, group_size;
    double capacity_factor;
  };
  for (const scale_case sc : {scale_case{32, 2048, 512, 1.0}, scale_case{64, 8192, 0, 1.25},
                              scale_case{16, 32768, 0, 0.5}}) {
    CAPTURE(sc.experts);
    CAPTURE(sc.tokens);
    using L = moe::layer<float, moe::expert_choice>;
    L::config c{};
    c.d_ff = 4;
    c.num_experts = sc.experts;
    c.group_size = sc.group_size;
    c.capacity.train = sc.capacity_factor;
    L l = identity_router_layer<L>(c);
    std::mt19937_64 gen(std::uint64_t(sc.tokens));
    std::uniform_real_distribution<float> logit(-3.0f, 3.0f);
    std::vector<std::vector<float>> pool(40, std::vector<float>(std::size_t(sc.experts)));
    for (auto& row : pool)
      for (float& v : row) v = logit(gen);
    std::vector<float> x;
    for (int t = 0; t < sc.tokens; ++t) {
      const auto& row = pool[gen() % pool.size()];
      x.insert(x.end(), row.begin(), row.end());
    }
    moe_test::run_forward(l, x, sc.tokens, {.training = true, .step = 0});
    const moe::routing_decisions r = l.routing();
    const int E = sc.experts, S = sc.group_size > 0 ? sc.group_size : sc.tokens, C = l.capacity(sc.tokens, true);
    REQUIRE(C > 0);
    REQUIRE(C < S);  // some tokens dropped in every column
    std::vector<int> want(static_cast<std::size_t>(sc.tokens) * static_cast<std::size_t>(E), -1);
    std::vector<int> order(static_cast<std::size_t>(S));
    for (int g = 0; g < sc.tokens / S; ++g)
      for (int e = 0; e < E; ++e) {
        std::iota(order.begin(), order.end(), g * S);
        const auto gate = [&](int t) { return r.gate[std::size_t(r.index(t, e))]; };
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return gate(a) > gate(b); });
        for (int slot = 0; slot < C; ++slot) want[std::size_t(r.index(order[std::size_t(slot)], e))] = slot;
      }
    int ties = 0;  // adjacent tokens of equal probability in some column: the tie-break was exercised
    for (int t = 1; t < S; ++t) ties += r.gate[std::size_t(r.index(t, 0))] == r.gate[std::size_t(r.index(t - 1, 0))];
    CHECK(ties > 0);
    CHECK(r.slot == want);
  }
}

TEST_CASE("dropless: every proposal is kept even when all tokens pick one expert") {
  using L = moe::layer<double, moe::top_k, moe::dropless>;
  L::config c{};
  c.d_ff = 4;
  c.num_experts = 4;
  c.router.k = 2;
  L l = identity_router_layer<L>(c);
  std::vector<std::vector<double>> logits(10, std::vector<double>{0, 0, 5, 1});
  route(l, logits);
  const auto s = l.statistics();
  CHECK(s.dropped_pairs == 0);
  CHECK(s.kept_per_expert == std::vector<std::int64_t>{0, 0, 10, 10});
  const auto r = l.routing();
  for (int t = 0; t < 10; ++t) {
    CHECK(r.slot[std::size_t(r.index(t, 0))] == t);
    CHECK(r.slot[std::size_t(r.index(t, 1))] == t);
  }
}

TEST_CASE("second-expert policies") {
  using L = moe::layer<double, moe::top_k, moe::dropless>;
  L::config c{};
  c.d_ff = 2;
  c.num_experts = 4;
  c.router.k = 2;
  c.router.renormalize = true;
  const int T = 20000;
  const std::vector<double> row = {2, 1, 0, -1};
  double p[4], z = 0;
  for (int e = 0; e < 4; ++e) z += std::exp(row[std::size_t(e)]);
  for (int e = 0; e < 4; ++e) p[e] = std::exp(row[std::size_t(e)]) / z;
  const double g2 = p[1] / (p[0] + p[1]);  // renormalised second gate ≈ 0.269
  std::vector<std::vector<double>> logits(T, row);

  SUBCASE("threshold: sent only when the second gate exceeds it") {
    c.router.second_policy_train = moe::second_expert::threshold;
    c.router.second_threshold = 0.25f;
    L l = identity_router_layer<L>(c);
    route(l, logits);
    for (auto a : l.routing().active) CHECK(a == 1);
    c.router.second_threshold = 0.3f;
    L l2 = identity_router_layer<L>(c);
    route(l2, logits);
    const auto r = l2.routing();
    for (int t = 0; t < T; ++t) CHECK(r.active[std::size_t(r.index(t, 1))] == 0);
  }
  SUBCASE("random: sent with probability gate2 / threshold (GShard)") {
    c.router.second_policy_train = moe::second_expert::random;
    c.router.second_threshold = 0.5f;
    L l = identity_router_layer<L>(c);
    route(l, logits);
    const auto r = l.routing();
    int sent = 0;
    for (int t = 0; t < T; ++t) sent += r.active[std::size_t(r.index(t, 1))];
    const double expected = g2 / 0.5, sd = std::sqrt(expected * (1 - expected) / T);
    CHECK(std::abs(double(sent) / T - expected) < 4 * sd);
    // The same step draws the same decisions; another step draws others.
    route(l, logits);
    CHECK(l.routing().active == r.active);
    moe_test::run_forward(l, [&] {
      std::vector<double> x;
      for (const auto& rr : logits) x.insert(x.end(), rr.begin(), rr.end());
      return x;
    }(), T, {.training = true, .step = 1});
    CHECK(l.routing().active != r.active);
  }
  SUBCASE("sampling: the second expert is drawn from p without the first") {
    c.router.second_policy_train = moe::second_expert::sampling;
    L l = identity_router_layer<L>(c);
    route(l, logits);
    const auto r = l.routing();
    int count[4] = {};
    for (int t = 0; t < T; ++t) {
      CHECK(r.expert[std::size_t(r.index(t, 0))] == 0);
      ++count[r.expert[std::size_t(r.index(t, 1))]];
    }
    CHECK(count[0] == 0);
    for (int e = 1; e < 4; ++e) {
      const double q = p[e] / (1 - p[0]), sd = std::sqrt(q * (1 - q) / T);
      CHECK(std::abs(double(count[e]) / T - q) < 4 * sd);
    }
  }
  SUBCASE("none in training, all in evaluation") {
    c.router.second_policy_train = moe::second_expert::none;
    c.router.second_policy_eval = moe::second_expert::all;
    L l = identity_router_layer<L>(c);
    route(l, logits, true);
    CHECK(l.statistics().routed_pairs == T);
    route(l, logits, false);
    CHECK(l.statistics().routed_pairs == 2 * T);
  }
}

TEST_CASE("capacity formula: rounding rules, minimum, cap at the group size, scale by k") {
  moe::capacity_factor::config c{};
  c.minimum = 0;
  auto cap = [&](double f, int S, int E, int k = 1) {
    c.train = f;
    return moe::capacity_factor::capacity(c, true, S, E, k);
  };
  c.rounding = moe::capacity_rounding::floor;
  CHECK(cap(1.25, 64, 8) == 10);  // 10.0
  CHECK(cap(1.25, 60, 8) == 9);   // 9.375
  c.rounding = moe::capacity_rounding::nearest;
  CHECK(cap(1.0, 20, 8) == 2);  // 2.5 -> 2 (ties to even, as Python's round)
  CHECK(cap(1.0, 28, 8) == 4);  // 3.5 -> 4
  CHECK(cap(1.0, 30, 8) == 4);  // 3.75 -> 4
  c.rounding = moe::capacity_rounding::ceil_multiple_of_4;
  CHECK(cap(1.0, 36, 8) == 8);  // 4.5 -> 5 -> 8
  CHECK(cap(1.0, 32, 8) == 4);
  c.rounding = moe::capacity_rounding::floor;
  CHECK(cap(8.0, 16, 2) == 16);     // capped at the group size
  CHECK(cap(1.0, 16, 8, 2) == 2);   // not scaled by default
  c.scale_by_k = true;
  CHECK(cap(1.0, 16, 8, 2) == 4);
  c.scale_by_k = false;
  c.minimum = 4;
  CHECK(cap(1.0, 16, 8) == 4);  // Mesh-TF's minimum of 4
  CHECK(cap(1.0, 2, 8) == 4);   // the minimum wins even over the group size (as in Mesh-TF)
}

TEST_CASE("reproducible and independent of the thread count") {
  using P = moe::presets::switch_transformer<float>;
  auto c = P::make_config(16, 32, 4, 9);
  const int T = 256;
  const auto x = moe_test::random_vector<float>(std::size_t(T) * 16, 1);
  P::layer serial(c, moe::host(1));
  P::layer threaded(c, moe::host(3));
  const auto y1 = moe_test::run_forward(serial, x, T, {.training = true, .step = 4});
  const auto y2 = moe_test::run_forward(threaded, x, T, {.training = true, .step = 4});
  const auto y3 = moe_test::run_forward(serial, x, T, {.training = true, .step = 4});
  CHECK(y1 == y2);  // bitwise
  CHECK(y1 == y3);
  // Jitter is keyed by the step: another step gives other outputs.
  const auto y4 = moe_test::run_forward(serial, x, T, {.training = true, .step = 5});
  CHECK(y4 != y1);
  // Evaluation has no jitter: the step does not matter.
  CHECK(moe_test::run_forward(serial, x, T, {.training = false, .step = 1}) ==
        moe_test::run_forward(serial, x, T, {.training = false, .step = 2}));
}

TEST_CASE("jitter_factors: one Philox block per four elements gives jitter_factor element by element") {
  // The layer draws jitter per column run (four elements per generator call); jitter_factor is the
  // element-wise definition. Runs of any start and length, rows whose start is not 4-aligned.
  const moe::rng_stream s{17, moe::rng_purpose::router_jitter, 2, 9};
  constexpr moe::index_t max_columns = 64;
  for (const moe::index_t d : {moe::index_t(5), moe::index_t(64), moe::index_t(97)})
    for (const moe::index_t t : {moe::index_t(0), moe::index_t(3), moe::index_t(1001)})
      for (moe::index_t first = 0; first < d; first += 13) {
        const moe::index_t end = std::min(d, first + max_columns);
        float got[max_columns];
        moe::jitter_factors<max_columns>(s, 0.05f, t, first, end, d, got);
        for (moe::index_t j = first; j < end; ++j) {
          CAPTURE(d);
          CAPTURE(t);
          CAPTURE(j);
          const float want = moe::jitter_factor(s, 0.05f, t, j, d);
          REQUIRE(got[j - first] == want);
          REQUIRE(want >= 0.95f);
          REQUIRE(want <= 1.05f);
        }
      }
  // Neighbouring elements take different lanes of a block: not all equal.
  CHECK(moe::jitter_factor(s, 0.05f, 0, 0, 8) != moe::jitter_factor(s, 0.05f, 0, 1, 8));
}

TEST_CASE("fill_truncated_normal: first draws taken in runs, redraws one by one, as the definition") {
  // Initialisation draws the first attempts of a run of elements together (bits_n) and redraws only
  // the rejected ones; both it and truncated_normal must give the definition, element by element. A
  // tensor slice starting at `first` (a rank's experts; one crossing 2^32, where bits_n carries into
  // the high index word), lengths that end mid-run, 1 and 3 threads, float and double storage.
  const moe::rng_stream s{4242, moe::rng_purpose::init, 3, 0};
  const std::uint64_t tensor = 5;
  // The definition: attempt a draws the normal of step a, the first within ±2 is scaled.
  const auto redrawn_until_within_two = [&](std::uint64_t index) {
    moe::rng_stream attempt = s;
    for (attempt.step = 0;; ++attempt.step) {
      const float z = moe::normal(attempt, index);
      if (z > -2.0f && z < 2.0f) return z * 0.3f;
    }
  };
  for (const int threads : {1, 3})
    for (const moe::index_t n : {moe::index_t(1), moe::index_t(700), moe::index_t(4099)})
      for (const moe::index_t first : {moe::index_t(0), moe::index_t(77), (moe::index_t(1) << 32) - 100}) {
        CAPTURE(threads);
        CAPTURE(n);
        CAPTURE(first);
        const moe::host sp(threads);
        std::vector<float> f(std::size_t(n), -7.0f);
        std::vector<double> d(std::size_t(n), -7.0);
        moe::detail::fill_truncated_normal(sp, f.data(), n, 0.3f, s, tensor, first);
        moe::detail::fill_truncated_normal(sp, d.data(), n, 0.3f, s, tensor, first);
        int redrawn = 0;
        for (moe::index_t i = 0; i < n; ++i) {
          const std::uint64_t index = (tensor << 40) | std::uint64_t(first + i);
          const float want = redrawn_until_within_two(index);
          REQUIRE(moe::truncated_normal(s, index, 0.3f) == want);
          REQUIRE(f[std::size_t(i)] == want);
          REQUIRE(d[std::size_t(i)] == double(want));
          redrawn += std::fabs(moe::normal(s, index)) >= 2.0f;
        }
        // ~4.6 % of first draws are rejected: the longer tensors exercise the redraw.
        if (n > 4000) CHECK(redrawn > 100);
      }
}

TEST_CASE("bfloat16 router (ablating Switch's selective precision): rounded logits and probabilities") {
  // Identity router, so the raw logits are the inputs. bfloat16 keeps 8 significant bits: the
  // spacing is 2^-7 in [1, 2), 2^-8 in [0.5, 1) and 2^-9 in [0.25, 0.5).
  //   token 0: {1.003, 0} → raw {1, 0}; p = softmax = {0.7310586, 0.2689414} → {0.73046875, 0.26953125}
  //   token 1: {1.001, 1.002} → raw {1, 1}: a tie, which goes to the lower index (float32: expert 1)
  using L = moe::layer<double, moe::top_k>;
  L::config c{};
  c.d_ff = 32;
  c.num_experts = 2;
  c.capacity.train = 2.0;  // C = 2: nothing is dropped
  c.capacity.minimum = 1;
  const std::vector<std::vector<double>> logits = {{1.003, 0}, {1.001, 1.002}};

  c.router.precision = moe::router_precision::bfloat16;
  L half = identity_router_layer<L>(c);
  route(half, logits);
  const auto r = half.routing();
  CHECK(r.expert == std::vector<int>{0, 0});
  CHECK(r.gate[0] == 0.73046875);
  CHECK(r.gate[1] == 0.5);
  CHECK(half.statistics().mean_top1_probability == (0.73046875 + 0.5) / 2);

  c.router.precision = moe::router_precision::float32;
  L full = identity_router_layer<L>(c);
  route(full, logits);
  const auto f = full.routing();
  CHECK(f.expert == std::vector<int>{0, 1});
  CHECK(f.gate[0] == doctest::Approx(sigmoid(1.003)).epsilon(1e-14));
  CHECK(f.gate[1] == doctest::Approx(sigmoid(0.001)).epsilon(1e-12));
}

TEST_CASE("bfloat16 router: its GEMM reads x̃ and W_r rounded to bfloat16, as a bfloat16 model's matrix unit does") {
  // raw_e = Σ_i bf16(x_i)·bf16(W_ie), accumulated without rounding (these products of 8-bit
  // significands are exact in double), then h = bf16(raw) and the gate bf16(softmax(h)_e).
  using L = moe::layer<double, moe::top_k>;
  L::config c{};
  c.d_model = 3;
  c.d_ff = 16;
  c.num_experts = 2;
  c.router.jitter = 0.0f;
  c.router.precision = moe::router_precision::bfloat16;
  c.capacity.train = 2.0;
  c.capacity.minimum = 1;
  L l(c);
  const double w[3][2] = {{1.7, -0.3}, {-2.9, 0.55}, {0.8, 1.1}};  // none is a bfloat16 value
  auto wv = l.router_weights();
  for (int i = 0; i < 3; ++i)
    for (int e = 0; e < 2; ++e) wv(i, e) = w[i][e];
  const std::vector<std::vector<double>> x = {
      {1.003, 0.999, -0.25}, {0.3, 0.1, 0.7}, {-1.7, 0.33, 0.21}, {2.01, 1.18, -0.61}, {0.52, 0.49, 0.47}};
  auto bf16 = [](double v) { return double(float(moe::bfloat16(v))); };
  // The gate of the chosen expert when the GEMM reads `operand(x)` and `operand(W)`.
  auto gates = [&](auto operand) {
    std::vector<double> g;
    std::vector<int> chosen;
    for (const auto& row : x) {
      double h[2];
      for (int e = 0; e < 2; ++e) {
        double raw = 0;
        for (int i = 0; i < 3; ++i) raw += operand(row[std::size_t(i)]) * operand(w[i][e]);
        h[e] = bf16(raw);
      }
      const double m = std::max(h[0], h[1]), z = std::exp(h[0] - m) + std::exp(h[1] - m);
      const double p0 = bf16(std::exp(h[0] - m) / z), p1 = bf16(std::exp(h[1] - m) / z);
      chosen.push_back(p1 > p0 ? 1 : 0);
      g.push_back(p1 > p0 ? p1 : p0);
    }
    return std::pair{g, chosen};
  };
  const auto [rounded, rounded_expert] = gates(bf16);
  const auto [outputs_only, outputs_only_expert] = gates([](double v) { return v; });
  REQUIRE(rounded != outputs_only);  // these inputs tell the two apart

  route(l, x);
  const auto r = l.routing();
  CHECK(r.expert == rounded_expert);
  CHECK(r.gate == rounded);
  CHECK(l.router_weights()(0, 0) == 1.7);  // the layer's own weights are not rounded
}

TEST_CASE("top_k::select: the first free expert of highest probability, ties to the lower index") {
  // Against the definition (a scan per choice rank that keeps the first strictly larger free
  // expert): probabilities drawn from four values so that ties are everywhere, runs of experts
  // between the chosen ones of every length (E not a multiple of the 8 lanes), k up to E, NaN
  // probabilities (the CUDA space's case: the lowest free expert), and +0 beside -0.
  const auto reference = [](int E, int k, const std::vector<float>& p, std::vector<int>& expert,
                            std::vector<float>& gate) {
    for (int j = 0; j < k; ++j) {
      int best = -1;
      float best_p = -1.0f;
      for (int e = 0; e < E; ++e) {
        const bool taken = std::find(expert.begin(), expert.begin() + j, e) != expert.begin() + j;
        if (!taken && p[std::size_t(e)] > best_p) best = e, best_p = p[std::size_t(e)];
      }
      if (best < 0)
        for (int e = E - 1; e >= 0; --e)
          if (std::find(expert.begin(), expert.begin() + j, e) == expert.begin() + j) best = e;
      expert[std::size_t(j)] = best;
      gate[std::size_t(j)] = p[std::size_t(best)];
    }
  };
  std::mt19937_64 gen(97);
  const float levels[] = {0.0f, -0.0f, 0.25f, 0.5f};
  int cases = 0, nan_cases = 0;
  for (const int E : {1, 3, 8, 9, 17, 64, 257})
    for (int k = 1; k <= std::min(E, 6); ++k)
      for (int rep = 0; rep < 20; ++rep) {
        std::vector<float> p(static_cast<std::size_t>(E));
        const bool with_nan = rep % 5 == 4;
        for (auto& x : p) x = with_nan && gen() % 3 == 0 ? NAN : levels[gen() % 4];
        if (rep % 5 == 3) std::fill(p.begin(), p.end(), NAN);
        moe::top_k::config c{};
        c.k = k;
        c.renormalize = false;
        std::vector<int> expert(std::size_t(k), -9), want_expert(std::size_t(k), -9);
        std::vector<float> gate(static_cast<std::size_t>(k)), want_gate(static_cast<std::size_t>(k));
        std::vector<std::uint8_t> active(static_cast<std::size_t>(k));
        const float top1 = moe::top_k::select<float>(c, true, moe::rng_stream{}, 0, E, p.data(), expert.data(),
                                                     gate.data(), active.data());
        reference(E, k, p, want_expert, want_gate);
        CAPTURE(E);
        CAPTURE(k);
        CAPTURE(rep);
        REQUIRE(expert == want_expert);
        for (int j = 0; j < k; ++j) {
          CHECK(std::memcmp(&gate[std::size_t(j)], &want_gate[std::size_t(j)], sizeof(float)) == 0);
          CHECK(active[std::size_t(j)] == 1);
        }
        CHECK(std::memcmp(&top1, &p[std::size_t(expert[0])], sizeof(float)) == 0);
        ++cases;
        nan_cases += with_nan || rep % 5 == 3;
      }
  CHECK(cases == 20 * (1 + 3 + 5 * 6));  // k up to min(E, 6)
  CHECK(nan_cases > 0);
}
