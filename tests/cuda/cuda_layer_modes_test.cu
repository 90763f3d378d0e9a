// The CUDA layer beyond the presets' defaults, against the host: the padded and one_hot
// dispatchers, dropless and expert-choice routing, batch-prioritised routing, every token routed
// to one expert (the worst case the buffers are sized for), the bfloat16 router, bitwise
// determinism, a step captured in a CUDA graph and replayed, and non-finite router logits reported
// through synchronize().
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda_test_util.cuh"
#include "custom_policies.hpp"

namespace {

using namespace moe_cuda_test;

constexpr double float_rtol = 1e-5;

template <class Space, class Dispatch = moe::sorted_dispatch>
using switch_layer = typename moe::presets::switch_transformer<float, Space, Dispatch>::layer;

template <class Space>
using dropless_layer = moe::layer<float, moe::top_k, moe::dropless,
                                  moe::losses<moe::load_balancing, moe::router_z_loss>, moe::geglu_ffn,
                                  moe::sorted_dispatch, Space>;
template <class Space>
using expert_choice_layer = moe::layer<float, moe::expert_choice, moe::capacity_factor, moe::losses<moe::router_z_loss>,
                                       moe::relu_ffn, moe::sorted_dispatch, Space>;

template <class Layer>
typename Layer::config switch_config(int d_model, int d_ff, int experts, std::uint64_t seed) {
  using P = moe::presets::switch_transformer<float, typename Layer::space_type, typename Layer::dispatch_type>;
  return P::make_config(d_model, d_ff, experts, seed);
}

template <class Layer>
typename Layer::config dropless_config(std::uint64_t seed) {
  typename Layer::config c{};
  c.d_model = 48;
  c.d_ff = 80;
  c.num_experts = 8;
  c.seed = seed;
  c.router.k = 2;
  c.router.renormalize = true;
  c.losses.load_balancing.weight = 1e-2;
  c.losses.router_z_loss.weight = 1e-3;
  return c;
}

template <class Layer>
typename Layer::config expert_choice_config(std::uint64_t seed) {
  typename Layer::config c{};
  c.d_model = 48;
  c.d_ff = 80;
  c.num_experts = 8;
  c.group_size = 32;
  c.seed = seed;
  c.capacity.train = 2.0;
  c.losses.router_z_loss.weight = 1e-3;
  return c;
}

// Inputs whose logits under an identity router pick expert 0 for every token: column 0 is the
// largest entry of every row.
std::vector<float> one_expert_inputs(int tokens, int d, std::uint64_t seed) {
  std::vector<float> x = moe_test::random_vector<float>(std::size_t(tokens) * std::size_t(d), seed);
  for (int t = 0; t < tokens; ++t) x[std::size_t(t) * std::size_t(d)] = 4.0f + float(t % 7) * 0.1f;
  return x;
}

}  // namespace

TEST_CASE("dispatchers on cuda match the host: padded and one_hot") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  SUBCASE("padded") {
    using H = switch_layer<moe::host, moe::padded_dispatch>;
    using G = switch_layer<moe::cuda, moe::padded_dispatch>;
    compare_layer<H, G>(switch_config<H>(48, 80, 4, 3), switch_config<G>(48, 80, 4, 3), space, 64, 101, float_rtol,
                        true);
  }
  SUBCASE("one_hot") {
    using H = switch_layer<moe::host, moe::one_hot_dispatch>;
    using G = switch_layer<moe::cuda, moe::one_hot_dispatch>;
    compare_layer<H, G>(switch_config<H>(48, 80, 4, 4), switch_config<G>(48, 80, 4, 4), space, 64, 102, float_rtol,
                        true);
  }
}

TEST_CASE("dropless top-2 (GEGLU, z-loss) on cuda matches the host") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  compare_layer<dropless_layer<moe::host>, dropless_layer<moe::cuda>>(
      dropless_config<dropless_layer<moe::host>>(5), dropless_config<dropless_layer<moe::cuda>>(5), space, 96, 111,
      float_rtol, true);
}

TEST_CASE("expert choice on cuda matches the host") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  compare_layer<expert_choice_layer<moe::host>, expert_choice_layer<moe::cuda>>(
      expert_choice_config<expert_choice_layer<moe::host>>(6), expert_choice_config<expert_choice_layer<moe::cuda>>(6),
      space, 64, 121, float_rtol, true);
}

TEST_CASE("batch-prioritised routing on cuda matches the host") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  using H = switch_layer<moe::host>;
  using G = switch_layer<moe::cuda>;
  auto hc = switch_config<H>(48, 80, 8, 7);
  auto gc = switch_config<G>(48, 80, 8, 7);
  hc.capacity.order = gc.capacity.order = moe::drop_order::bpr;
  hc.capacity.train = gc.capacity.train = 0.5;  // drops, so the priority matters
  hc.group_size = gc.group_size = 48;
  compare_layer<H, G>(hc, gc, space, 96, 131, float_rtol, true);
}

TEST_CASE("the gating kernel (a warp per token, E <= 256) and the generic path beyond match the host") {
  // Top-2, renormalised, with logit noise and a soft cap in training: every piece of the gating
  // step. E = 256 and 64 take the warp-per-token kernel (moe/cuda/gating.cuh), E = 300 the generic
  // per-token loop.
  stream_holder stream;
  const moe::cuda space(stream.s);
  using H = dropless_layer<moe::host>;
  using G = dropless_layer<moe::cuda>;
  for (const int experts : {64, 256, 300}) {
    CAPTURE(experts);
    auto hc = dropless_config<H>(9);
    auto gc = dropless_config<G>(9);
    hc.num_experts = gc.num_experts = experts;
    hc.d_model = gc.d_model = 32;
    hc.d_ff = gc.d_ff = 16;
    hc.router.noise_stddev = gc.router.noise_stddev = 0.3f;
    hc.router.logit_soft_cap = gc.router.logit_soft_cap = 4.0f;
    moe::step_context ctx;
    ctx.training = true;
    ctx.step = 3;
    compare_layer<H, G>(hc, gc, space, 160, 141, float_rtol, true, ctx);
  }
}

TEST_CASE("a bfloat16 router (the selective-precision ablation) on cuda matches the host") {
  // The gating kernel (E = 64) and the generic per-token path (E = 260) round raw, h and p to
  // bfloat16 as the host does. The identity router makes the raw logits the inputs, so both spaces
  // round the same raw values; the softmax sums run in another order, and a float ulp there can
  // cross a bfloat16 rounding boundary: a gate may differ by one bfloat16 ulp (2^-8 relative).
  stream_holder stream;
  const moe::cuda space(stream.s);
  using H = dropless_layer<moe::host>;
  using G = dropless_layer<moe::cuda>;
  for (const int experts : {64, 260}) {
    CAPTURE(experts);
    auto hc = dropless_config<H>(9);
    auto gc = dropless_config<G>(9);
    hc.num_experts = gc.num_experts = experts;
    hc.d_model = gc.d_model = experts;
    hc.d_ff = gc.d_ff = 4;  // the router is under test; E·d_model·d_ff expert weights cost emulated time
    hc.router.precision = gc.router.precision = moe::router_precision::bfloat16;
    hc.router.renormalize = gc.router.renormalize = false;  // so that a gate is a probability
    H h(hc);
    G g(gc, space);
    moe_test::set_identity_router(h);
    copy_parameters(h, g);
    // Fewer tokens past the gating kernel (E = d_model): the per-element kernels' work is
    // tokens × d_model, and on the kernel emulator under TSan (a fiber per CUDA thread) this case took
    // 36 s of CI at E = 300, d_ff = 16 and 160 tokens.
    const int tokens = experts > 256 ? 48 : 160;
    const std::size_t n = std::size_t(tokens) * std::size_t(experts);
    const std::vector<float> x = moe_test::random_vector<float>(n, 151), dy = moe_test::random_vector<float>(n, 152);
    const moe::step_context ctx{.training = true, .step = 3};
    const auto ref = host_step(h, x, dy, tokens, ctx);
    const auto got = device_step(g, x, dy, tokens, ctx);
    check_steps(got, ref, 1e-2, true);
    for (const float gate : got.routing.gate) CHECK(float(moe::bfloat16(gate)) == gate);  // gates of rounded p
  }
}

TEST_CASE("a bfloat16 router on cuda reads W_r and W_noise rounded, forward and backward") {
  // Two device layers, one holding W and one bf16(W) (router and learned-noise weights), must give
  // the same bits in y, ∂L/∂x, routing and every gradient: both GEMM directions read the copies the
  // forward rounded (the host twin of this test is in layer_gradient_test.cpp).
  stream_holder stream;
  const moe::cuda space(stream.s);
  using H = dropless_layer<moe::host>;
  using G = dropless_layer<moe::cuda>;
  auto hc = dropless_config<H>(11);
  auto gc = dropless_config<G>(11);
  hc.router.learned_noise = gc.router.learned_noise = true;
  hc.router.jitter = gc.router.jitter = 0.01f;
  hc.router.precision = gc.router.precision = moe::router_precision::bfloat16;
  H exact(hc), rounded(hc);
  auto values = [](H& l, const std::string& name) {
    float* p = nullptr;
    std::size_t n = 0;
    l.for_each_parameter([&](const auto& t) {
      if constexpr (std::is_same_v<std::remove_cv_t<std::remove_pointer_t<decltype(t.value)>>, float>)
        if (name == t.name) p = t.value, n = std::size_t(t.size());
    });
    REQUIRE(p != nullptr);
    return std::pair{p, n};
  };
  int inexact = 0;
  std::size_t total = 0;
  for (const char* name : {"router.w", "router.w_noise"}) {
    const auto [w, n] = values(exact, name);
    const auto [r, n_r] = values(rounded, name);
    REQUIRE(n_r == n);
    const std::vector<float> v = moe_test::random_vector<float>(n, 171);  // W_noise starts at zero
    for (std::size_t i = 0; i < n; ++i) {
      if (std::string(name) == "router.w_noise") w[i] = 0.3f * v[i];
      r[i] = float(moe::bfloat16(w[i]));
      inexact += r[i] != w[i];
    }
    total += n;
  }
  REQUIRE(inexact == int(total));  // every weight is moved by the rounding
  G g_exact(gc, space), g_rounded(gc, space);
  copy_parameters(exact, g_exact);
  copy_parameters(rounded, g_rounded);
  const int tokens = 96;
  const std::size_t n = std::size_t(tokens) * std::size_t(gc.d_model);
  const std::vector<float> x = moe_test::random_vector<float>(n, 172), dy = moe_test::random_vector<float>(n, 173);
  const moe::step_context ctx{.training = true, .step = 5};
  const auto a = device_step(g_exact, x, dy, tokens, ctx);
  const auto b = device_step(g_rounded, x, dy, tokens, ctx);
  CHECK(a.y == b.y);
  CHECK(a.dx == b.dx);
  CHECK(a.routing.expert == b.routing.expert);
  CHECK(a.routing.gate == b.routing.gate);
  CHECK(a.params.grad == b.params.grad);
}

TEST_CASE("policies of the user's own (examples/custom_policies.hpp) run on cuda and match the host") {
  // The squared-ReLU activation runs in the expert kernels and the mean-probability KL loss in the
  // routing summary and the router's backward, as the library's own policies do.
  stream_holder stream;
  const moe::cuda space(stream.s);
  using H = moe::layer<float, moe::top_k, moe::losses<moe::load_balancing, example::mean_probability_kl>,
                       example::squared_relu_ffn, moe::host>;
  using G = moe::layer<float, moe::top_k, moe::losses<moe::load_balancing, example::mean_probability_kl>,
                       example::squared_relu_ffn, moe::cuda>;
  auto configure = [](auto c) {
    c.d_model = 48;
    c.d_ff = 80;
    c.num_experts = 8;
    c.group_size = 32;
    c.seed = 13;
    c.router.k = 2;
    c.router.renormalize = true;
    c.capacity.train = 1.25;
    c.losses.mean_probability_kl.weight = 0.1;
    return c;
  };
  const auto got = compare_layer<H, G>(configure(H::config{}), configure(G::config{}), space, 128, 181, float_rtol,
                                       true, {.training = true, .step = 2});
  CHECK(got.stats.loss("mean_probability_kl") > 0);
}

TEST_CASE("every token routed to one expert: worst-case buffers") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const int E = 8, tokens = 64;
  const std::vector<float> x = one_expert_inputs(tokens, E, 141);
  const std::vector<float> dy = moe_test::random_vector<float>(x.size(), 142);
  auto run = [&](auto host_tag, auto cuda_tag, auto hc, auto gc) {
    using H = typename decltype(host_tag)::type;
    using G = typename decltype(cuda_tag)::type;
    H h(hc);
    G g(gc, space);
    moe_test::set_identity_router(h);
    copy_parameters(h, g);
    const auto ref = host_step(h, x, dy, tokens);
    const auto got = device_step(g, x, dy, tokens);
    const std::size_t K = std::size_t(ref.routing.pairs_per_token);
    for (int t = 0; t < tokens; ++t) CHECK(ref.routing.expert[std::size_t(t) * K] == 0);
    check_steps(got, ref, float_rtol, true);
    return got;
  };
  SUBCASE("dropless: expert 0 takes all T·k rows") {
    using H = dropless_layer<moe::host>;
    using G = dropless_layer<moe::cuda>;
    auto hc = dropless_config<H>(8);
    auto gc = dropless_config<G>(8);
    hc.d_model = gc.d_model = E;
    const auto got = run(std::type_identity<H>{}, std::type_identity<G>{}, hc, gc);
    CHECK(got.stats.kept_per_expert[0] == tokens);
    CHECK(got.stats.dropped_pairs == 0);
  }
  SUBCASE("capacity factor: expert 0 keeps C, the rest are dropped") {
    using H = switch_layer<moe::host>;
    using G = switch_layer<moe::cuda>;
    const auto got = run(std::type_identity<H>{}, std::type_identity<G>{}, switch_config<H>(E, 16, E, 9),
                         switch_config<G>(E, 16, E, 9));
    CHECK(got.stats.dropped_pairs == tokens - got.stats.capacity);
  }
}

TEST_CASE("expert GEMMs through cuBLAS per group (cuda_grouped_gemm::cublas_per_group) match the host") {
  // The expert FFNs' forward, input-gradient and weight-gradient products go through the host loop
  // of cuBLAS calls; routing, dispatch and everything else is the default path.
  stream_holder stream;
  const moe::cuda space(stream.s, {.grouped_gemm = moe::cuda_grouped_gemm::cublas_per_group});
  SUBCASE("dropless top-2, GEGLU") {
    compare_layer<dropless_layer<moe::host>, dropless_layer<moe::cuda>>(
        dropless_config<dropless_layer<moe::host>>(7), dropless_config<dropless_layer<moe::cuda>>(7), space, 96, 113,
        float_rtol, true);
  }
  SUBCASE("Switch, capacity 1.25 (drops), frozen router") {
    using H = switch_layer<moe::host>;
    using G = switch_layer<moe::cuda>;
    compare_layer<H, G>(switch_config<H>(48, 80, 8, 8), switch_config<G>(48, 80, 8, 8), space, 96, 114, float_rtol,
                        true, {true, 2}, {.router = false});
  }
  SUBCASE("ST-MoE, bfloat16") {
    using H = moe::presets::st_moe<moe::bfloat16, moe::host>;
    using G = moe::presets::st_moe<moe::bfloat16, moe::cuda>;
    compare_layer<typename H::layer, typename G::layer>(H::make_config(48, 80, 8, 9), G::make_config(48, 80, 8, 9),
                                                        space, 96, 115, 2e-2, false);
  }
  SUBCASE("two runs give identical bits") {
    using G = dropless_layer<moe::cuda>;
    G g(dropless_config<G>(18), space);
    const auto x = moe_test::random_vector<float>(96 * 48, 181), dy = moe_test::random_vector<float>(96 * 48, 182);
    check_same_bits(device_step(g, x, dy, 96), device_step(g, x, dy, 96));
  }
}

TEST_CASE("two runs on cuda give identical bits") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  SUBCASE("switch_transformer") {
    using G = switch_layer<moe::cuda>;
    G g(switch_config<G>(48, 80, 8, 15), space);
    const auto x = moe_test::random_vector<float>(96 * 48, 151), dy = moe_test::random_vector<float>(96 * 48, 152);
    check_same_bits(device_step(g, x, dy, 96), device_step(g, x, dy, 96));
  }
  SUBCASE("dropless") {
    using G = dropless_layer<moe::cuda>;
    G g(dropless_config<G>(16), space);
    const auto x = moe_test::random_vector<float>(96 * 48, 161), dy = moe_test::random_vector<float>(96 * 48, 162);
    check_same_bits(device_step(g, x, dy, 96), device_step(g, x, dy, 96));
  }
}

TEST_CASE("a layer step captured in a CUDA graph and replayed equals the eager step") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  using G = switch_layer<moe::cuda>;
  const int tokens = 96, d = 48;
  G g(switch_config<G>(d, 80, 8, 17), space);
  const std::size_t n = std::size_t(tokens) * std::size_t(d);
  device_vector<float> x(n), dy(n), y(n), dx(n);
  device_vector<unsigned char> ws(g.workspace_bytes(tokens));
  const moe::step_context ctx{true, 9};
  auto step = [&] {
    g.zero_grad();
    g.forward(ctx, {x.p, tokens, d}, {y.p, tokens, d}, {ws.p, ws.n});
    g.backward({dy.p, tokens, d}, {dx.p, tokens, d}, {ws.p, ws.n});
  };
  auto results = [&] {
    space.synchronize();
    step_result<float> r;
    r.y = y.download();
    r.dx = dx.download();
    r.params = snapshot(g, true);
    r.routing = g.routing();
    return r;
  };
  // One eager step first: it sizes everything the step needs (nothing may allocate while capturing).
  x.upload(moe_test::random_vector<float>(n, 171));
  dy.upload(moe_test::random_vector<float>(n, 172));
  step();
  space.synchronize();

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ok(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal));
  step();
  ok(cudaStreamEndCapture(stream.s, &graph));
  ok(cudaGraphInstantiate(&exec, graph, 0));

  // New inputs in the same buffers; the replay must equal an eager step on them.
  x.upload(moe_test::random_vector<float>(n, 173));
  dy.upload(moe_test::random_vector<float>(n, 174));
  ok(cudaGraphLaunch(exec, stream.s));
  const step_result<float> replayed = results();
  ok(cudaGraphLaunch(exec, stream.s));
  const step_result<float> replayed_again = results();
  step();
  const step_result<float> eager = results();
  check_same_bits(replayed, eager);
  check_same_bits(replayed_again, eager);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST_CASE("non-finite router logits are reported at the next synchronize, as on the host") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  using H = switch_layer<moe::host>;
  using G = switch_layer<moe::cuda>;
  const int tokens = 32, d = 48;
  H h(switch_config<H>(d, 80, 8, 19));
  G g(switch_config<G>(d, 80, 8, 19), space);
  std::vector<float> x = moe_test::random_vector<float>(std::size_t(tokens) * d, 181);
  const std::vector<float> dy = moe_test::random_vector<float>(x.size(), 182);
  x[3 * d + 5] = std::numeric_limits<float>::quiet_NaN();

  std::string host_message;
  try {
    std::vector<float> y(x.size());
    h.forward({}, {x.data(), tokens, d}, {y.data(), tokens, d});
  } catch (const moe::numeric_error& e) {
    host_message = e.what();
  }
  REQUIRE(host_message.find("router logits: non-finite value ") == 0);

  // The device step runs to the end (no throw inside, every index in range) and the report comes
  // with the first synchronising call.
  device_vector<float> xd(x), dyd(dy), yd(x.size()), dxd(x.size());
  device_vector<unsigned char> ws(g.workspace_bytes(tokens));
  g.forward({}, {xd.p, tokens, d}, {yd.p, tokens, d}, {ws.p, ws.n});
  g.backward({dyd.p, tokens, d}, {dxd.p, tokens, d}, {ws.p, ws.n});
  std::string device_message;
  try {
    space.synchronize();
  } catch (const moe::numeric_error& e) {
    device_message = e.what();
  }
  const std::string where = " at token 3, expert 0";
  CHECK(device_message.find("router logits: non-finite value ") == 0);
  CHECK(device_message.size() >= where.size());
  CHECK(device_message.substr(device_message.size() - where.size()) == where);
  CHECK(host_message.substr(host_message.size() - where.size()) == where);

  // Reported once; a clean step afterwards reports nothing.
  CHECK_NOTHROW(space.synchronize());
  x[3 * d + 5] = 0.5f;
  xd.upload(x);
  g.forward({}, {xd.p, tokens, d}, {yd.p, tokens, d}, {ws.p, ws.n});
  CHECK_NOTHROW(g.statistics());
}
