// Bad input gets a clear error that names the field and the value.
#include "test_util.hpp"

#include <limits>
#include <string>

namespace {

using L = moe::layer<float, moe::top_k, moe::losses<moe::load_balancing>>;

L::config good() {
  L::config c{};
  c.d_model = 4;
  c.d_ff = 8;
  c.num_experts = 2;
  return c;
}

// Runs f, expects an exception of type E whose message contains every fragment.
template <class E, class F>
void expect_error(F&& f, std::initializer_list<const char*> fragments) {
  try {
    f();
    FAIL("no exception thrown");
  } catch (const E& e) {
    const std::string msg = e.what();
    INFO("message: ", msg);
    for (const char* frag : fragments) CHECK(msg.find(frag) != std::string::npos);
  }
}

template <class Tweak>
void expect_config_error(Tweak tweak, std::initializer_list<const char*> fragments) {
  L::config c = good();
  tweak(c);
  expect_error<moe::invalid_argument>([&] { L l(c); }, fragments);
}

}  // namespace

TEST_CASE("invalid configurations name the field and the value") {
  expect_config_error([](auto& c) { c.router.k = 0; }, {"top_k", "k=0", "at least 1"});
  expect_config_error([](auto& c) { c.router.k = 3; }, {"top_k", "k=3 exceeds num_experts=2"});
  expect_config_error([](auto& c) { c.num_experts = 0; }, {"num_experts", "E=0"});
  expect_config_error([](auto& c) { c.d_model = 0; }, {"d_model", "d_model=0"});
  expect_config_error([](auto& c) { c.d_ff = -3; }, {"d_ff", "d_ff=-3"});
  expect_config_error([](auto& c) { c.group_size = -1; }, {"group_size", "-1"});
  expect_config_error([](auto& c) { c.capacity.train = 0; }, {"capacity_factor.train", "factor=0", "> 0"});
  expect_config_error([](auto& c) { c.capacity.eval = -1.5; }, {"capacity_factor.eval", "factor=-1.5"});
  expect_config_error([](auto& c) { c.capacity.train = std::numeric_limits<double>::quiet_NaN(); },
                      {"capacity_factor.train", "nan"});
  expect_config_error([](auto& c) { c.capacity.minimum = -2; }, {"capacity_factor.minimum", "minimum=-2"});
  expect_config_error([](auto& c) { c.router.jitter = 1.5f; }, {"router.jitter", "epsilon=1.5"});
  expect_config_error([](auto& c) { c.router.noise_stddev = -1; }, {"router.noise_stddev", "stddev=-1"});
  expect_config_error(
      [](auto& c) {
        c.router.learned_noise = true;
        c.router.noise_stddev = 1;
      },
      {"router.noise_stddev", "learned_noise"});
  expect_config_error([](auto& c) { c.router.logit_soft_cap = -2; }, {"router.logit_soft_cap", "cap=-2"});
  expect_config_error([](auto& c) { c.router.init_scale = 0; }, {"router.init_scale", "scale=0"});
  expect_config_error([](auto& c) { c.router.precision = moe::router_precision(7); }, {"router.precision", "value=7"});
  expect_config_error([](auto& c) { c.router.renormalize = true; }, {"top_k", "renormalize=true with k=1"});
  expect_config_error([](auto& c) { c.router.second_policy_train = moe::second_expert::random; },
                      {"top_k", "second_policy=random needs k=2, got k=1"});
  expect_config_error(
      [](auto& c) {
        c.router.k = 2;
        c.router.second_threshold = 0;
      },
      {"top_k", "second_threshold=0"});
  expect_config_error([](auto& c) { c.expert.dropout = 1.0f; }, {"expert.dropout", "rate=1"});
  expect_config_error([](auto& c) { c.expert.init_scale = -1; }, {"expert.init_scale", "scale=-1"});
  expect_config_error([](auto& c) { c.losses.load_balancing.weight = -0.1; },
                      {"losses", "load_balancing.weight=-0.1"});
  expect_config_error([](auto& c) { c.layer_id = 1u << 24; }, {"layer_id", "16777216"});

  using EC = moe::layer<float, moe::expert_choice>;
  EC::config ec{};
  ec.d_model = 4;
  ec.d_ff = 4;
  ec.num_experts = 2;
  ec.capacity.order = moe::drop_order::bpr;
  expect_error<moe::invalid_argument>([&] { EC l(ec); }, {"capacity_factor.order", "expert_choice"});
}

TEST_CASE("mismatched shapes, group sizes and capacities are refused before any work") {
  L::config c = good();
  c.group_size = 3;
  L l(c);
  std::vector<float> x(8 * 4, 0.5f), y(8 * 4), wide(8 * 5, 0.5f);
  expect_error<moe::invalid_argument>([&] { l.forward({}, {wide.data(), 8, 5}, {y.data(), 8, 4}); },
                                      {"forward", "x has 5 columns, expected d_model=4"});
  expect_error<moe::invalid_argument>([&] { l.forward({}, {x.data(), 8, 4}, {y.data(), 4, 4}); },
                                      {"forward", "y is [4, 4], expected [8, 4]"});
  expect_error<moe::invalid_argument>([&] { l.forward({}, {x.data(), 8, 4}, {y.data(), 8, 4}); },
                                      {"group_size", "3 does not divide the 8 tokens"});
  expect_error<moe::invalid_argument>([&] { l.forward({}, {x.data(), 0, 4}, {y.data(), 0, 4}); },
                                      {"forward", "0 rows"});

  L::config tiny = good();
  tiny.capacity.train = 0.01;
  tiny.capacity.minimum = 0;
  L t(tiny);
  expect_error<moe::invalid_argument>([&] { t.forward({}, {x.data(), 8, 4}, {y.data(), 8, 4}); },
                                      {"capacity", "0 slots per expert", "train"});
}

TEST_CASE("a workspace that is too small is refused with the sizes") {
  L l(good());
  std::vector<float> x(16 * 4, 0.5f), y(16 * 4);
  const std::size_t need = l.workspace_bytes(16);
  std::vector<std::byte> ws(need / 2);
  expect_error<moe::invalid_argument>(
      [&] { l.forward({}, {x.data(), 16, 4}, {y.data(), 16, 4}, {ws.data(), ws.size()}); },
      {"workspace", std::to_string(need / 2).c_str(), "needed"});
}

TEST_CASE("backward without a matching forward is refused") {
  L l(good());
  std::vector<float> x(16 * 4, 0.5f), y(16 * 4), dy(16 * 4, 1.0f), dx(16 * 4);
  expect_error<moe::invalid_argument>([&] { l.backward({dy.data(), 16, 4}, {dx.data(), 16, 4}); },
                                      {"backward", "no forward pass"});
  std::vector<std::byte> ws1(l.workspace_bytes(16)), ws2(l.workspace_bytes(16));
  l.forward({}, {x.data(), 16, 4}, {y.data(), 16, 4}, {ws1.data(), ws1.size()});
  expect_error<moe::invalid_argument>(
      [&] { l.backward({dy.data(), 16, 4}, {dx.data(), 16, 4}, {ws2.data(), ws2.size()}); },
      {"backward", "workspace differs"});
  expect_error<moe::invalid_argument>(
      [&] { l.backward({dy.data(), 8, 4}, {dx.data(), 16, 4}, {ws1.data(), ws1.size()}); },
      {"backward", "dy is [8, 4], expected [16, 4]"});
}

TEST_CASE("non-finite router logits are reported with the token and expert, never routed") {
  L l(good());
  std::vector<float> x(6 * 4, 0.5f), y(6 * 4);
  x[4 * 4 + 2] = std::numeric_limits<float>::quiet_NaN();
  expect_error<moe::numeric_error>([&] { l.forward({}, {x.data(), 6, 4}, {y.data(), 6, 4}); },
                                   {"router logits", "non-finite", "token 4"});
  x[4 * 4 + 2] = std::numeric_limits<float>::infinity();
  expect_error<moe::numeric_error>([&] { l.forward({}, {x.data(), 6, 4}, {y.data(), 6, 4}); },
                                   {"router logits", "inf", "token 4"});
  // A NaN in the router weights is caught the same way.
  x[4 * 4 + 2] = 0.5f;
  l.router_weights()(1, 1) = std::numeric_limits<float>::quiet_NaN();
  expect_error<moe::numeric_error>([&] { l.forward({}, {x.data(), 6, 4}, {y.data(), 6, 4}); },
                                   {"router logits", "token 0, expert 1"});
}
