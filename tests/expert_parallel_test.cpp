// Expert parallelism with the in-process communicator: R ranks (threads) holding E/R experts each
// compute, bit for bit, what one moe::layer holding every expert computes on the same global batch,
// for R ∈ {1, 2, 4, 8}, top-1 and top-2, capacity and dropless, with jitter, noise and dropout, in
// float32, bfloat16 and float16 storage, and with policies of the user's own.
// Bad setups fail on every rank with a clear error, never a hang.
#include "test_util.hpp"

#include <chrono>
#include <exception>
#include <memory>
#include <thread>

#include <moe/parallel/expert_parallel.hpp>
#include <moe/parallel/in_process.hpp>

#include "custom_policies.hpp"  // examples/: policies written outside the library

namespace {

// Runs body(rank, comm) on `ranks` threads; returns each rank's exception (null if none). A rank
// that throws aborts the world (releasing ranks that wait in a collective) unless `abort` is false.
template <class F>
std::vector<std::exception_ptr> run_ranks(int ranks, F&& body,
                                          std::chrono::milliseconds timeout = std::chrono::seconds(30),
                                          bool abort = true) {
  auto world = std::make_shared<moe::in_process_world>(ranks, timeout);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      try {
        moe::in_process_communicator comm(world, r);
        body(r, comm);
      } catch (...) {
        errors[std::size_t(r)] = std::current_exception();
        if (abort) world->abort("rank " + std::to_string(r) + " failed");
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

// The in-process communicator without the world's abort: as over NCCL, a rank that throws releases
// nobody, so its peers learn of the failure only from the layer's own exchanges (or time out).
class nccl_like_communicator {
 public:
  using policy_kind = moe::communicator_kind;
  static constexpr const char* name = "nccl_like";
  static constexpr bool host_memory = true;

  explicit nccl_like_communicator(const moe::in_process_communicator& c) : c_(c) {}
  int rank() const { return c_.rank(); }
  int size() const { return c_.size(); }
  void all_to_all(const void* src, void* dst, std::size_t bytes) { c_.all_to_all(src, dst, bytes); }
  void all_to_all_v(const void* src, const std::size_t* sb, void* dst, const std::size_t* rb) {
    c_.all_to_all_v(src, sb, dst, rb);
  }
  void all_gather(const void* src, std::size_t bytes, void* dst) { c_.all_gather(src, bytes, dst); }
  void all_reduce_sum(float* data, std::size_t count) { c_.all_reduce_sum(data, count); }
  void all_reduce_sum(double* data, std::size_t count) { c_.all_reduce_sum(data, count); }
  void barrier() { c_.barrier(); }

 private:
  moe::in_process_communicator c_;
};
static_assert(moe::communicator<nccl_like_communicator>);

std::string message(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  }
  return "";
}

void require_no_errors(const std::vector<std::exception_ptr>& errors) {
  for (std::size_t r = 0; r < errors.size(); ++r) {
    INFO("rank ", r);
    if (errors[r]) FAIL(message(errors[r]));
  }
}

// Every element widened to double (exactly: float, bfloat16 and float16 all embed in double).
template <class V>
std::vector<double> widened(const V* p, std::size_t n) {
  std::vector<double> w(n);
  for (std::size_t i = 0; i < n; ++i) w[i] = double(moe::widen(p[i]));
  return w;
}

// T is the storage type (float, or bfloat16/float16 with float32 master gradients): on the host
// space every rank's arithmetic is the single layer's, in the same order, so equality is bitwise
// whatever the precision.
template <class T, class... Policies>
void check_equivalence(int ranks, typename moe::layer<T, Policies...>::config cfg, int tokens_per_rank,
                       std::uint64_t seed, moe::trainable_parameters trainable = {}) {
  using single = moe::layer<T, Policies...>;
  using parallel = moe::expert_parallel<T, moe::in_process_communicator, Policies...>;
  const int d = cfg.d_model, tokens = tokens_per_rank * ranks;
  CAPTURE(ranks);
  const auto x = moe_test::random_vector<T>(std::size_t(tokens) * std::size_t(d), seed);
  const auto dy = moe_test::random_vector<T>(std::size_t(tokens) * std::size_t(d), seed + 1);
  const moe::step_context ctx{.training = true, .step = 7};

  single ref(cfg, moe::host(1));
  ref.set_trainable(trainable);
  std::vector<T> y_ref(x.size()), dx_ref(x.size());
  ref.forward(ctx, {x.data(), tokens, d}, {y_ref.data(), tokens, d});
  ref.backward({dy.data(), tokens, d}, {dx_ref.data(), tokens, d});
  const moe::routing_statistics ref_stats = ref.statistics();
  // The bytes each rank must report: its kept pairs' rows to other ranks' experts and the rows other
  // ranks send to its experts, both ways in each pass, plus a token id per row sent forward.
  std::vector<std::size_t> want_forward_bytes(static_cast<std::size_t>(ranks)), want_backward_bytes(want_forward_bytes.size());
  {
    const moe::routing_decisions dec = ref.routing();
    const int local = cfg.num_experts / ranks;
    std::vector<std::size_t> sent(want_forward_bytes.size()), received(want_forward_bytes.size());
    for (int t = 0; t < dec.tokens; ++t)
      for (int j = 0; j < dec.pairs_per_token; ++j) {
        if (!dec.kept(t, j)) continue;
        const int from = t / tokens_per_rank, to = dec.expert[std::size_t(dec.index(t, j))] / local;
        if (from == to) continue;
        ++sent[std::size_t(from)];
        ++received[std::size_t(to)];
      }
    const std::size_t row = std::size_t(d) * sizeof(T);
    for (std::size_t r = 0; r < sent.size(); ++r) {
      want_backward_bytes[r] = (sent[r] + received[r]) * row;
      want_forward_bytes[r] = want_backward_bytes[r] + sent[r] * sizeof(int);
    }
  }
  std::vector<std::vector<double>> ref_grads, ref_values;
  ref.for_each_parameter([&](const auto& p) {
    ref_grads.push_back(widened(p.grad, std::size_t(p.size())));
    ref_values.push_back(widened(p.value, std::size_t(p.size())));
  });

  std::vector<T> y(x.size()), dx(x.size());
  const auto R = static_cast<std::size_t>(ranks);
  std::vector<std::vector<std::vector<double>>> grads(R), values(R);
  std::vector<moe::routing_statistics> stats(static_cast<std::size_t>(ranks));
  std::vector<std::size_t> forward_bytes(R), backward_bytes(R);
  const auto errors = run_ranks(ranks, [&](int r, moe::in_process_communicator& comm) {
    parallel ep(cfg, comm, moe::host(1));
    ep.set_trainable(trainable);
    const std::size_t off = std::size_t(r) * std::size_t(tokens_per_rank) * std::size_t(d);
    ep.forward(ctx, {x.data() + off, tokens_per_rank, d}, {y.data() + off, tokens_per_rank, d});
    ep.backward({dy.data() + off, tokens_per_rank, d}, {dx.data() + off, tokens_per_rank, d});
    ep.for_each_parameter([&](const auto& p) {
      grads[std::size_t(r)].push_back(widened(p.grad, std::size_t(p.size())));
      values[std::size_t(r)].push_back(widened(p.value, std::size_t(p.size())));
    });
    stats[std::size_t(r)] = ep.statistics();
    forward_bytes[std::size_t(r)] = ep.forward_exchange_bytes();
    backward_bytes[std::size_t(r)] = ep.backward_exchange_bytes();
  });
  require_no_errors(errors);

  CHECK(widened(y.data(), y.size()) == widened(y_ref.data(), y_ref.size()));     // bitwise
  CHECK(widened(dx.data(), dx.size()) == widened(dx_ref.data(), dx_ref.size())); // bitwise
  for (int r = 0; r < ranks; ++r) {
    CAPTURE(r);
    REQUIRE(grads[std::size_t(r)].size() == ref_grads.size());
    for (std::size_t k = 0; k < ref_grads.size(); ++k) {
      CAPTURE(k);
      const auto& mine = grads[std::size_t(r)][k];
      if (mine.size() == ref_grads[k].size()) {  // the replicated router
        CHECK(mine == ref_grads[k]);
        CHECK(values[std::size_t(r)][k] == ref_values[k]);
      } else {  // an expert tensor: this rank's slice of the experts
        const std::size_t slice = mine.size();
        REQUIRE(slice * std::size_t(ranks) == ref_grads[k].size());
        const auto first = ref_grads[k].begin() + std::ptrdiff_t(std::size_t(r) * slice);
        CHECK(mine == std::vector<double>(first, first + std::ptrdiff_t(slice)));
        const auto vfirst = ref_values[k].begin() + std::ptrdiff_t(std::size_t(r) * slice);
        CHECK(values[std::size_t(r)][k] == std::vector<double>(vfirst, vfirst + std::ptrdiff_t(slice)));
      }
    }
    CHECK(forward_bytes[std::size_t(r)] == want_forward_bytes[std::size_t(r)]);
    CHECK(backward_bytes[std::size_t(r)] == want_backward_bytes[std::size_t(r)]);
    if (ranks > 1) CHECK(forward_bytes[std::size_t(r)] > 0);  // the routing does cross ranks
    CHECK(stats[std::size_t(r)].routed_per_expert == ref_stats.routed_per_expert);
    CHECK(stats[std::size_t(r)].kept_per_expert == ref_stats.kept_per_expert);
    CHECK(stats[std::size_t(r)].dropped_pairs == ref_stats.dropped_pairs);
    CHECK(stats[std::size_t(r)].aux_loss == doctest::Approx(ref_stats.aux_loss).epsilon(1e-6));
    CHECK(stats[std::size_t(r)].router_entropy == doctest::Approx(ref_stats.router_entropy).epsilon(1e-6));
    CHECK(stats[std::size_t(r)].router_logit_max == doctest::Approx(ref_stats.router_logit_max));
  }
}

}  // namespace

TEST_CASE("expert parallel = one layer: top-2, GEGLU, capacity with drops, BPR, jitter, dropout, z-loss") {
  for (int ranks : {1, 2, 4, 8}) {
    moe::layer<float, moe::top_k, moe::geglu_ffn, moe::losses<moe::load_balancing, moe::router_z_loss>>::config c{};
    c.d_model = 16;
    c.d_ff = 24;
    c.num_experts = 8;
    c.seed = 5;
    c.group_size = 32;  // two routing groups per rank (64 tokens each)
    c.router.k = 2;
    c.router.renormalize = true;
    c.router.jitter = 0.05f;
    c.capacity.train = 1.0;
    c.capacity.minimum = 1;
    c.capacity.order = moe::drop_order::bpr;
    c.expert.dropout = 0.2f;
    c.expert.bias = true;
    check_equivalence<float, moe::top_k, moe::geglu_ffn, moe::losses<moe::load_balancing, moe::router_z_loss>>(ranks, c, 64,
                                                                                                        11);
  }
}

TEST_CASE("expert parallel = one layer with frozen groups (the router's exchange skipped when it is frozen)") {
  // The first case's layer type: no new instantiation (compile time).
  using L = moe::layer<float, moe::top_k, moe::geglu_ffn, moe::losses<moe::load_balancing, moe::router_z_loss>>;
  L::config c{};
  c.d_model = 16;
  c.d_ff = 24;
  c.num_experts = 8;
  c.seed = 9;
  c.group_size = 32;  // each rank's tokens form one group; the reference uses the same groups
  c.router.k = 2;
  c.router.learned_noise = true;
  c.capacity.train = 1.0;
  c.expert.bias = true;
  for (int ranks : {2, 4})
    for (const moe::trainable_parameters t : {moe::trainable_parameters{.router = false, .experts = true},
                                              moe::trainable_parameters{.router = true, .experts = false},
                                              moe::trainable_parameters{.router = false, .experts = false}}) {
      CAPTURE(t.router);
      CAPTURE(t.experts);
      check_equivalence<float, moe::top_k, moe::geglu_ffn, moe::losses<moe::load_balancing, moe::router_z_loss>>(
          ranks, c, 32, 13, t);
    }
}

TEST_CASE("expert parallel = one layer: top-1 dropless, learned noise, importance loss") {
  for (int ranks : {1, 2, 4, 8}) {
    moe::layer<float, moe::top_k, moe::dropless, moe::relu_ffn, moe::losses<moe::importance>>::config c{};
    c.d_model = 12;
    c.d_ff = 20;
    c.num_experts = 8;
    c.seed = 6;
    c.router.learned_noise = true;
    c.group_size = 48;  // each rank's tokens form one group; the reference uses the same groups
    check_equivalence<float, moe::top_k, moe::dropless, moe::relu_ffn, moe::losses<moe::importance>>(ranks, c, 48, 12);
  }
}

TEST_CASE("expert parallel = one layer: expert choice") {
  for (int ranks : {2, 4}) {
    moe::layer<float, moe::expert_choice, moe::swiglu_ffn, moe::losses<moe::router_z_loss>>::config c{};
    c.d_model = 8;
    c.d_ff = 12;
    c.num_experts = 8;
    c.seed = 7;
    c.group_size = 40;
    c.capacity.train = 1.5;
    c.capacity.minimum = 1;
    check_equivalence<float, moe::expert_choice, moe::swiglu_ffn, moe::losses<moe::router_z_loss>>(ranks, c, 40, 13);
  }
}

TEST_CASE("expert parallel = one layer: policies of the user's own (examples/custom_policies.hpp)") {
  // A loss written outside the library that reads per-group probability sums and declares a
  // probability gradient, next to load balancing, and a user's activation: each rank adds its
  // groups' part of the loss (the loss divides by total_groups), so R ranks give one layer's bits.
  using losses = moe::losses<moe::load_balancing, example::mean_probability_kl>;
  moe::layer<float, moe::top_k, example::squared_relu_ffn, losses>::config c{};
  c.d_model = 12;
  c.d_ff = 16;
  c.num_experts = 8;
  c.seed = 8;
  c.group_size = 24;  // two routing groups per rank (48 tokens each)
  c.router.k = 2;
  c.capacity.train = 1.25;
  c.losses.mean_probability_kl.weight = 0.5;  // large enough that its gradient shapes the router's
  for (int ranks : {1, 2, 4})
    check_equivalence<float, moe::top_k, example::squared_relu_ffn, losses>(ranks, c, 48, 14);
}

TEST_CASE("expert parallel = one layer in bfloat16 and float16 storage (float32 master gradients)") {
  // Low-precision storage changes where rows are rounded, not what each rank computes: the ranks
  // must still reproduce the single layer bit for bit.
  auto config = [](auto c) {
    c.d_model = 16;
    c.d_ff = 24;
    c.num_experts = 8;
    c.seed = 8;
    c.group_size = 32;
    c.router.k = 2;
    c.expert.bias = true;
    return c;
  };
  using Losses = moe::losses<moe::load_balancing, moe::router_z_loss>;
  auto with_drops = config(moe::layer<moe::bfloat16, moe::top_k, moe::geglu_ffn, Losses>::config{});
  with_drops.capacity.train = 1.0;
  with_drops.capacity.minimum = 1;
  for (int ranks : {1, 2, 4}) {
    check_equivalence<moe::bfloat16, moe::top_k, moe::geglu_ffn, Losses>(ranks, with_drops, 32, 14);
    check_equivalence<moe::float16, moe::top_k, moe::dropless, moe::relu_ffn, Losses>(
        ranks, config(moe::layer<moe::float16, moe::top_k, moe::dropless, moe::relu_ffn, Losses>::config{}), 32, 15);
  }
}

TEST_CASE("expert parallel: bad setups fail on every rank with a clear error, never a hang") {
  using EP = moe::expert_parallel<float, moe::in_process_communicator, moe::top_k>;
  EP::config c{};
  c.d_model = 4;
  c.d_ff = 4;
  c.num_experts = 6;

  SUBCASE("experts not divisible by the ranks") {
    const auto errors = run_ranks(4, [&](int, moe::in_process_communicator& comm) { EP ep(c, comm); });
    for (const auto& e : errors) {
      REQUIRE(e);
      CHECK(message(e).find("num_experts=6 is not divisible by the 4 ranks") != std::string::npos);
    }
  }
  SUBCASE("ranks that build different layers") {
    const auto errors = run_ranks(2, [&](int r, moe::in_process_communicator& comm) {
      EP::config mine = c;
      mine.d_model = r == 0 ? 4 : 8;
      EP ep(mine, comm);
    });
    for (const auto& e : errors) {
      REQUIRE(e);
      CHECK(message(e).find("d_model=8 but rank 0 has d_model=4") != std::string::npos);
    }
  }
  SUBCASE("ranks that bring different token counts") {
    const auto errors = run_ranks(2, [&](int r, moe::in_process_communicator& comm) {
      EP ep(c, comm);
      const int T = r == 0 ? 8 : 4;
      std::vector<float> x(std::size_t(T) * 4, 0.5f), y(x.size());
      ep.forward({}, {x.data(), T, 4}, {y.data(), T, 4});
    });
    for (const auto& e : errors) {
      REQUIRE(e);
      CHECK(message(e).find("every rank must call forward with the same count") != std::string::npos);
    }
  }
  SUBCASE("a rank that fails locally releases the others") {
    const auto start = std::chrono::steady_clock::now();
    const auto errors = run_ranks(3, [&](int r, moe::in_process_communicator& comm) {
      EP ep(c, comm);
      std::vector<float> x(8 * 4, 0.5f), y(x.size());
      if (r == 1) x[5] = std::numeric_limits<float>::quiet_NaN();  // rank 1's router logits fail
      ep.forward({}, {x.data(), 8, 4}, {y.data(), 8, 4});
    });
    REQUIRE(errors[1]);
    CHECK(message(errors[1]).find("router logits: non-finite") != std::string::npos);
    for (int r : {0, 2}) {
      REQUIRE(errors[std::size_t(r)]);
      CHECK(message(errors[std::size_t(r)]).find("rank 1 failed") != std::string::npos);
    }
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(25));  // released, not timed out
  }
}

// With nothing to release a waiting rank (NCCL), disagreements and one rank's failure must still end
// on every rank with the error naming them — raised in the layer's own exchanges, not a timeout
// (a timeout's message, "waited 20 s in …", fails each check below).
TEST_CASE("expert parallel without an abort (as over NCCL): every rank fails in the next exchange, none waits") {
  using EP = moe::expert_parallel<float, nccl_like_communicator, moe::top_k, moe::geglu_ffn,
                                  moe::losses<moe::load_balancing>>;
  EP::config c{};
  c.d_model = 4;
  c.d_ff = 8;
  c.num_experts = 6;
  c.group_size = 4;
  const auto timeout = std::chrono::seconds(20);
  constexpr int T = 8, d = 4;

  // What a rank brings; `vary(rank, setup&)` changes it per rank.
  struct setup {
    EP::config cfg;
    moe::step_context ctx{.training = true, .step = 3};
    bool nan_input = false;
    int dy_rows = T;
    double aux_loss_scale = 1.0;
    moe::trainable_parameters trainable{};
  };
  // One forward and backward per rank; every rank must fail with `want(rank)` in its message.
  const auto expect_all_fail = [&](int ranks, auto vary, auto want) {
    const auto errors = run_ranks(
        ranks,
        [&](int r, moe::in_process_communicator& in_process) {
          setup s{.cfg = c};
          vary(r, s);
          EP ep(s.cfg, nccl_like_communicator(in_process));
          ep.set_trainable(s.trainable);
          auto x = moe_test::random_vector<float>(std::size_t(T) * d, 40 + std::uint64_t(r));
          if (s.nan_input) x[5] = std::numeric_limits<float>::quiet_NaN();
          std::vector<float> y(x.size()), dx(x.size());
          ep.forward(s.ctx, {x.data(), T, d}, {y.data(), T, d});
          const auto dy = moe_test::random_vector<float>(std::size_t(s.dy_rows) * d, 50 + std::uint64_t(r));
          ep.backward({dy.data(), s.dy_rows, d}, {dx.data(), T, d}, s.aux_loss_scale);
        },
        timeout, /*abort=*/false);
    for (int r = 0; r < ranks; ++r) {
      CAPTURE(r);
      REQUIRE(errors[std::size_t(r)]);
      const std::string m = message(errors[std::size_t(r)]);
      INFO(m);
      CHECK(m.find(want(r)) != std::string::npos);
    }
  };
  const auto same = [](const char* text) { return [text](int) { return std::string(text); }; };

  SUBCASE("a rank whose forward fails before the token exchange") {
    expect_all_fail(
        3, [](int r, setup& s) { s.nan_input = r == 1; },
        [](int r) {
          return r == 1 ? std::string("router logits: non-finite") : "rank 1 failed before the token exchange";
        });
  }
  SUBCASE("a rank whose backward checks fail") {
    expect_all_fail(
        3, [](int r, setup& s) { s.dy_rows = r == 2 ? T - 1 : T; },
        [](int r) {
          return r == 2 ? std::string("dy is [7, 4], expected [8, 4]") : "rank 2 failed before the backward exchange";
        });
  }
  SUBCASE("ranks that pass different step contexts") {
    expect_all_fail(2, [](int r, setup& s) { s.ctx.step = r == 0 ? 3 : 4; },
                    same("every rank must pass the same step_context"));
    expect_all_fail(2, [](int r, setup& s) { s.ctx.training = r != 1; },
                    same("rank 1 calls forward with training=false, step=3"));
  }
  SUBCASE("ranks that scale the auxiliary loss differently") {
    expect_all_fail(2, [](int r, setup& s) { s.aux_loss_scale = r == 0 ? 1.0 : 0.5; },
                    same("the replicated router's gradient needs the same scale on every rank"));
  }
  SUBCASE("ranks that freeze different parameters") {
    expect_all_fail(2, [](int r, setup& s) { s.trainable.router = r == 0; },
                    same("every rank must call set_trainable alike"));
  }
  SUBCASE("ranks that build different policy configs") {
    expect_all_fail(2, [](int r, setup& s) { s.cfg.router.k = r == 1 ? 2 : 1; },
                    same("rank 1 has another router config (top_k::config) than rank 0"));
    expect_all_fail(2, [](int r, setup& s) { s.cfg.capacity.train = r == 1 ? 2.0 : 1.25; },
                    same("rank 1 has another capacity config (capacity_factor::config) than rank 0"));
    expect_all_fail(3, [](int r, setup& s) { s.cfg.losses.load_balancing.weight = r == 2 ? 0.0 : 1e-2; },
                    same("rank 2 has another losses config (losses::config) than rank 0"));
    expect_all_fail(2, [](int r, setup& s) { s.cfg.expert.dropout = r == 1 ? 0.1f : 0.0f; },
                    same("rank 1 has another expert config (gated_ffn::config) than rank 0"));
  }
  SUBCASE("the same setup on every rank runs (the checks above do not fire by themselves)") {
    const auto errors = run_ranks(
        3,
        [&](int r, moe::in_process_communicator& in_process) {
          EP ep(c, nccl_like_communicator(in_process));
          auto x = moe_test::random_vector<float>(std::size_t(T) * d, 40 + std::uint64_t(r));
          std::vector<float> y(x.size()), dx(x.size());
          ep.forward({.training = true, .step = 3}, {x.data(), T, d}, {y.data(), T, d});
          ep.backward({x.data(), T, d}, {dx.data(), T, d}, 0.5);
        },
        timeout, /*abort=*/false);
    require_no_errors(errors);
  }
}

TEST_CASE("in-process communicator: collectives, consistency checks and bounded waits") {
  SUBCASE("all_to_all_v, all_gather, all_reduce_sum") {
    const auto errors = run_ranks(3, [&](int r, moe::in_process_communicator& comm) {
      // rank r sends (q + 1) ints with value 100·r + q to rank q
      std::vector<int> send;
      std::vector<std::size_t> sb(3), rb(3);
      for (int q = 0; q < 3; ++q) {
        for (int k = 0; k <= q; ++k) send.push_back(100 * r + q);
        sb[std::size_t(q)] = std::size_t(q + 1) * sizeof(int);
        rb[std::size_t(q)] = std::size_t(r + 1) * sizeof(int);
      }
      std::vector<int> recv(static_cast<std::size_t>(3 * (r + 1)));
      comm.all_to_all_v(send.data(), sb.data(), recv.data(), rb.data());
      for (int p = 0; p < 3; ++p)
        for (int k = 0; k <= r; ++k) REQUIRE(recv[std::size_t(p * (r + 1) + k)] == 100 * p + r);
      const double mine = 0.1 * (r + 1);
      std::vector<double> all(3);
      comm.all_gather(&mine, sizeof mine, all.data());
      REQUIRE(all == std::vector<double>{0.1, 0.2, 0.30000000000000004});
      double sum[2] = {0.1 * (r + 1), 1.0};
      comm.all_reduce_sum(sum, 2);
      REQUIRE(sum[0] == (0.1 + 0.2) + 0.30000000000000004);  // rank order
      REQUIRE(sum[1] == 3.0);
    });
    require_no_errors(errors);
  }
  SUBCASE("inconsistent sizes fail on every rank") {
    const auto errors = run_ranks(2, [&](int r, moe::in_process_communicator& comm) {
      std::vector<char> buf(64);
      std::size_t sb[2] = {8, 8}, rb[2] = {8, std::size_t(r == 0 ? 16 : 8)};  // rank 0 expects 16 from rank 1
      comm.all_to_all_v(buf.data(), sb, buf.data() + 32, rb);
    });
    for (const auto& e : errors) {
      REQUIRE(e);
      INFO(message(e));
      CHECK(message(e).find("rank 1 sends 8 bytes to rank 0, which expects 16") != std::string::npos);
    }
  }
  SUBCASE("different collectives fail on every rank") {
    const auto errors = run_ranks(2, [&](int r, moe::in_process_communicator& comm) {
      if (r == 0) comm.barrier();
      else {
        double v = 1;
        comm.all_reduce_sum(&v, 1);
      }
    });
    for (const auto& e : errors) {
      REQUIRE(e);
      CHECK(message(e).find("called") != std::string::npos);
    }
  }
  SUBCASE("a rank that never arrives ends in a timeout, not a hang") {
    const auto errors = run_ranks(
        2,
        [&](int r, moe::in_process_communicator& comm) {
          if (r == 0) comm.barrier();  // rank 1 returns without calling it
        },
        std::chrono::milliseconds(300));
    REQUIRE(errors[0]);
    CHECK(message(errors[0]).find("waited 0.3 s in barrier") != std::string::npos);
    CHECK(!errors[1]);
  }
  SUBCASE("bad ranks and worlds") {
    CHECK_THROWS_WITH_AS(moe::in_process_world(0), doctest::Contains("ranks=0"), moe::invalid_argument);
    auto world = std::make_shared<moe::in_process_world>(2);
    CHECK_THROWS_WITH_AS(moe::in_process_communicator(world, 2), doctest::Contains("rank=2 is outside the world of 2"),
                         moe::invalid_argument);
  }
}
