// Expert parallelism over NCCL.
//   - One rank on one GPU: the expert-parallel layer on moe::cuda with an nccl_communicator gives
//     what moe::layer gives on the same GPU (within float tolerance; routing exactly), and exchanges
//     nothing with other ranks. float32 for each preset; GLaM also in bf16 storage (within 2e-2).
//   - R ∈ {2, 4} ranks on R GPUs, one host thread each (as moe-train --ranks drives them): each rank
//     holds E/R experts and its share of the global batch; outputs, input gradients and gradients
//     equal, within float tolerance, what one moe::layer holding every expert computes on the global
//     batch on GPU 0. These need R GPUs: the machines this project is tested on have one, so there
//     they say they did not run, and the kernel emulator (tests/emu, MOE_EMU_DEVICES=4, NCCL
//     emulated between its devices) runs them in CI.
//   - Bad input over NCCL (2 GPUs): ranks that build different layers, or bring different token
//     counts, fail on every rank with the same clear error, never a hang; so does a rank whose own
//     input is bad (a wrong view, a non-finite value) for the others.
#include <limits>
#include <numeric>
#include <thread>

#include <moe/parallel/nccl.cuh>

#include "cuda_test_util.cuh"

namespace {

using namespace moe_cuda_test;

// float within 1e-5; bf16 storage within 2e-2 (as cuda_layer_test): the ranks' GEMMs see other row
// counts and arrangements, so their float32 sums may round to the neighbouring bf16 value.
template <class T>
constexpr double rtol_for = std::is_same_v<T, float> ? 1e-5 : 2e-2;

template <class Preset>
void one_rank_case(std::uint64_t seed, moe::step_context ctx) {
  using layer_type = typename Preset::layer;
  using T = typename layer_type::element_type;
  using parallel_type = typename Preset::template parallel_layer<moe::nccl_communicator>;
  stream_holder stream;
  const moe::cuda space(stream.s);
  int device = 0;
  ok(cudaGetDevice(&device));
  auto comms = moe::nccl_communicator::init_all({device}, {stream.s});
  REQUIRE(comms.size() == 1);

  // 16-bit storage runs the emulated tensor-core path, many times slower on the kernel emulator:
  // smaller there (still not multiples of the GEMM tiles).
  constexpr bool is_float = std::is_same_v<T, float>;
  const int tokens = is_float ? 96 : 64, d = is_float ? 48 : 32;
  auto cfg = Preset::make_config(d, is_float ? 80 : 40, 8, seed);
  cfg.group_size = tokens / 2;
  layer_type single(cfg, space);
  parallel_type parallel(cfg, comms[0], space);
  // Same seed, same Philox draws: the same initial parameters.
  {
    const parameter_snapshot a = snapshot(single, true), b = snapshot(parallel, true);
    for (const auto& [name, v] : a.value) CHECK(same_bits(b.value.at(name), v));
  }

  const std::size_t n = std::size_t(tokens) * std::size_t(d);
  const std::vector<T> x = moe_test::random_vector<T>(n, seed + 10), dy = moe_test::random_vector<T>(n, seed + 11);
  const step_result<T> ref = device_step(single, x, dy, tokens, ctx);

  device_vector<T> xd(x), dyd(dy), yd(n), dxd(n);
  parallel.zero_grad();
  parallel.forward(ctx, {xd.p, tokens, d}, {yd.p, tokens, d});
  parallel.backward({dyd.p, tokens, d}, {dxd.p, tokens, d});
  check_steps(collect_step(parallel, yd, dxd), ref, rtol_for<T>, true);
  // One rank sends its rows to itself: nothing crosses a link.
  CHECK(parallel.forward_exchange_bytes() == 0);
  CHECK(parallel.backward_exchange_bytes() == 0);
}

// Whether R GPUs are visible; says that the case did not run if not.
bool have_gpus(int R) {
  int devices = 0;
  ok(cudaGetDeviceCount(&devices));
  if (devices < R) MESSAGE("not run: ", R, " ranks need ", R, " GPUs, ", devices, " visible");
  return devices >= R;
}

// Runs body(rank, comm, space) on R GPUs, a host thread and a stream each (as moe-train --ranks
// drives them); returns each rank's error message ("" if it did not throw). Empty when fewer than
// R GPUs are visible.
template <class Body>
std::vector<std::string> on_gpus(int R, Body body) {
  if (!have_gpus(R)) return {};
  std::vector<int> ids(static_cast<std::size_t>(R));
  std::iota(ids.begin(), ids.end(), 0);
  std::vector<cudaStream_t> streams(ids.size(), nullptr);
  for (int r = 0; r < R; ++r) {
    ok(cudaSetDevice(r));
    ok(cudaStreamCreateWithFlags(&streams[std::size_t(r)], cudaStreamNonBlocking));
  }
  std::vector<std::string> errors(ids.size());
  {
    const std::vector<moe::nccl_communicator> comms = moe::nccl_communicator::init_all(ids, streams);
    std::vector<std::thread> threads;
    for (int r = 0; r < R; ++r)
      threads.emplace_back([&, r] {
        try {
          ok(cudaSetDevice(r));
          body(r, comms[std::size_t(r)], moe::cuda(streams[std::size_t(r)]));
        } catch (const std::exception& e) {
          errors[std::size_t(r)] = e.what();
        } catch (...) {
          errors[std::size_t(r)] = "a failed doctest assertion (reported above)";
        }
      });
    for (auto& t : threads) t.join();
  }
  for (int r = 0; r < R; ++r) {
    ok(cudaSetDevice(r));
    ok(cudaStreamDestroy(streams[std::size_t(r)]));
  }
  ok(cudaSetDevice(0));
  return errors;
}

// R ranks, one GPU and one host thread each, against moe::layer on GPU 0 with the global batch.
template <class Preset>
void ranks_case(int R, std::uint64_t seed, moe::step_context ctx) {
  using layer_type = typename Preset::layer;
  using T = typename layer_type::element_type;
  constexpr double rtol = rtol_for<T>;
  using parallel_type = typename Preset::template parallel_layer<moe::nccl_communicator>;
  if (!have_gpus(R)) return;
  const int tokens_per_rank = 48, tokens = tokens_per_rank * R, d = 32;
  auto cfg = Preset::make_config(d, 40, 8, seed);
  cfg.group_size = tokens_per_rank / 2;  // routing groups never straddle two ranks' shares
  const std::size_t n = std::size_t(tokens) * std::size_t(d), share = n / std::size_t(R);
  const std::vector<T> x = moe_test::random_vector<T>(n, seed + 10), dy = moe_test::random_vector<T>(n, seed + 11);

  ok(cudaSetDevice(0));
  step_result<T> ref;
  {
    stream_holder stream;
    layer_type single(cfg, moe::cuda(stream.s));
    ref = device_step(single, x, dy, tokens, ctx);
  }

  std::vector<step_result<T>> got(static_cast<std::size_t>(R));
  const std::vector<std::string> errors =
      on_gpus(R, [&](int r, const moe::nccl_communicator& comm, const moe::cuda& space) {
        const auto rr = std::size_t(r);
        parallel_type parallel(cfg, comm, space);
        const std::vector<T> xs(x.begin() + std::ptrdiff_t(rr * share), x.begin() + std::ptrdiff_t((rr + 1) * share));
        const std::vector<T> dys(dy.begin() + std::ptrdiff_t(rr * share), dy.begin() + std::ptrdiff_t((rr + 1) * share));
        device_vector<T> xd(xs), dyd(dys), yd(share), dxd(share);
        parallel.zero_grad();
        parallel.forward(ctx, {xd.p, tokens_per_rank, d}, {yd.p, tokens_per_rank, d});
        parallel.backward({dyd.p, tokens_per_rank, d}, {dxd.p, tokens_per_rank, d});
        got[rr] = collect_step(parallel, yd, dxd);
      });
  REQUIRE(errors.size() == std::size_t(R));

  for (int r = 0; r < R; ++r) {
    CAPTURE(R);
    CAPTURE(r);
    const auto rr = std::size_t(r);
    if (!errors[rr].empty()) FAIL("rank ", r, " failed: ", errors[rr]);
    const step_result<T>& g = got[rr];
    const auto slice = [&](const std::vector<T>& v) {
      return std::vector<T>(v.begin() + std::ptrdiff_t(rr * share), v.begin() + std::ptrdiff_t((rr + 1) * share));
    };
    check_close(widened(g.y), widened(slice(ref.y)), rtol, "forward y");
    check_close(widened(g.dx), widened(slice(ref.dx)), rtol, "backward dx");
    // Statistics are global (summed over ranks during forward).
    CHECK(g.stats.routed_per_expert == ref.stats.routed_per_expert);
    CHECK(g.stats.kept_per_expert == ref.stats.kept_per_expert);
    CHECK(g.stats.dropped_pairs == ref.stats.dropped_pairs);
    check_close({g.stats.aux_loss, g.stats.router_entropy}, {ref.stats.aux_loss, ref.stats.router_entropy}, rtol,
                "aux_loss, router entropy");
    // This rank's routing: its tokens' pairs, global expert ids.
    const std::size_t k = ref.routing.expert.size() / std::size_t(R);
    REQUIRE(g.routing.expert.size() == k);
    CHECK(g.routing.expert == std::vector<int>(ref.routing.expert.begin() + std::ptrdiff_t(rr * k),
                                               ref.routing.expert.begin() + std::ptrdiff_t((rr + 1) * k)));
    // The replicated router's gradient is whole on every rank (all-reduced); an expert tensor holds
    // this rank's E/R experts.
    REQUIRE(g.params.grad.size() == ref.params.grad.size());
    for (const auto& [name, want] : ref.params.grad) {
      const std::vector<double>& mine = g.params.grad.at(name);
      if (mine.size() == want.size()) {
        check_close(mine, want, rtol, "gradient " + name);
        CHECK(g.params.value.at(name) == ref.params.value.at(name));
      } else {
        REQUIRE(mine.size() * std::size_t(R) == want.size());
        const auto first = want.begin() + std::ptrdiff_t(rr * mine.size());
        check_close(mine, std::vector<double>(first, first + std::ptrdiff_t(mine.size())), rtol, "gradient " + name);
        const std::vector<double>& all = ref.params.value.at(name);
        const auto vfirst = all.begin() + std::ptrdiff_t(rr * mine.size());
        CHECK(g.params.value.at(name) == std::vector<double>(vfirst, vfirst + std::ptrdiff_t(mine.size())));
      }
    }
  }
}

}  // namespace

TEST_CASE("expert_parallel over NCCL, bad input: every rank fails with the same error, none hangs") {
  using parallel_type = moe::presets::switch_transformer<float, moe::cuda>::parallel_layer<moe::nccl_communicator>;
  const auto cfg = moe::presets::switch_transformer<float, moe::cuda>::make_config(16, 24, 4, 9);
  SUBCASE("ranks that build different layers") {
    const auto errors = on_gpus(2, [&](int r, const moe::nccl_communicator& comm, const moe::cuda& space) {
      auto mine = cfg;
      mine.d_ff = r == 0 ? 24 : 32;
      parallel_type layer(mine, comm, space);
    });
    for (const std::string& e : errors) CHECK(e.find("rank 1 has d_ff=32 but rank 0 has d_ff=24") != std::string::npos);
  }
  SUBCASE("ranks that bring different token counts") {
    const auto errors = on_gpus(2, [&](int r, const moe::nccl_communicator& comm, const moe::cuda& space) {
      parallel_type layer(cfg, comm, space);
      const int tokens = r == 0 ? 8 : 12;
      device_vector<float> x(moe_test::random_vector<float>(std::size_t(tokens) * 16, 40 + std::uint64_t(r)));
      device_vector<float> y(std::size_t(tokens) * 16);
      layer.forward({true, 1}, {x.p, tokens, 16}, {y.p, tokens, 16});
    });
    for (const std::string& e : errors)
      CHECK(e.find("every rank must call forward with the same count") != std::string::npos);
  }
  SUBCASE("different token counts that one rank cannot even group") {
    // Rank 1's 12 tokens do not split into groups of 8: it fails before the count exchange, and
    // still every rank reports the count mismatch (the cause) instead of waiting for rank 1.
    auto grouped = cfg;
    grouped.group_size = 8;
    const auto errors = on_gpus(2, [&](int r, const moe::nccl_communicator& comm, const moe::cuda& space) {
      parallel_type layer(grouped, comm, space);
      const int tokens = r == 0 ? 8 : 12;
      device_vector<float> x(moe_test::random_vector<float>(std::size_t(tokens) * 16, 42 + std::uint64_t(r)));
      device_vector<float> y(std::size_t(tokens) * 16);
      layer.forward({true, 1}, {x.p, tokens, 16}, {y.p, tokens, 16});
    });
    for (const std::string& e : errors) {
      CHECK(e.find("has 12") != std::string::npos);
      CHECK(e.find("has 8") != std::string::npos);
      CHECK(e.find("every rank must call forward with the same count") != std::string::npos);
    }
  }
  SUBCASE("a rank whose own input is bad stops every rank") {
    // Rank 1 fails on its own (a wrong output view; a non-finite input, which the CUDA space only
    // reports at its next synchronisation): it raises its error, and rank 0 learns of the failure
    // in the count exchange instead of waiting for rank 1's rows.
    for (const bool nan_input : {false, true}) {
      CAPTURE(nan_input);
      const auto errors = on_gpus(2, [&](int r, const moe::nccl_communicator& comm, const moe::cuda& space) {
        parallel_type layer(cfg, comm, space);
        std::vector<float> xs = moe_test::random_vector<float>(8 * 16, 44 + std::uint64_t(r));
        if (r == 1 && nan_input) xs[21] = std::numeric_limits<float>::quiet_NaN();
        device_vector<float> x(xs), y(8 * 16);
        const int width = r == 1 && !nan_input ? 8 : 16;
        layer.forward({true, 1}, {x.p, 8, 16}, {y.p, 8 * 16 / width, width});
      });
      if (errors.empty()) continue;
      CHECK(errors[1].find(nan_input ? "non-finite value" : "y is [16, 8], expected [8, 16]") != std::string::npos);
      CHECK(errors[0].find("rank 1 failed before the token exchange") != std::string::npos);
    }
  }
  SUBCASE("a rank whose backward input is bad, or whose step context differs, stops every rank") {
    // Backward agrees on every rank's checks before its first exchange: rank 1's wrong dx view is
    // its own error and rank 0's "rank 1 failed before the backward exchange", not a wait in NCCL.
    // A different step (the key of every random draw) fails both in forward's count exchange.
    for (const bool other_step : {false, true}) {
      CAPTURE(other_step);
      const auto errors = on_gpus(2, [&](int r, const moe::nccl_communicator& comm, const moe::cuda& space) {
        parallel_type layer(cfg, comm, space);
        device_vector<float> x(moe_test::random_vector<float>(8 * 16, 46 + std::uint64_t(r)));
        device_vector<float> y(8 * 16), dx(8 * 16);
        const std::uint32_t step = other_step && r == 1 ? 2 : 1;
        layer.forward({true, step}, {x.p, 8, 16}, {y.p, 8, 16});
        const int width = r == 1 ? 8 : 16;
        layer.backward({x.p, 8, 16}, {dx.p, 8 * 16 / width, width});
      });
      if (errors.empty()) continue;
      if (other_step) {
        for (const std::string& e : errors)
          CHECK(e.find("rank 1 calls forward with training=true, step=2 but rank 0 with training=true, step=1") !=
                std::string::npos);
      } else {
        CHECK(errors[1].find("dx is [16, 8], expected [8, 16]") != std::string::npos);
        CHECK(errors[0].find("rank 1 failed before the backward exchange") != std::string::npos);
      }
    }
  }
}

TEST_CASE("expert_parallel over NCCL, R ranks on R GPUs = moe::layer on one GPU: switch_transformer") {
  for (int R : {2, 4}) ranks_case<moe::presets::switch_transformer<float, moe::cuda>>(R, 11, {true, 3});
}
TEST_CASE("expert_parallel over NCCL, R ranks on R GPUs = moe::layer on one GPU: glam") {
  for (int R : {2, 4}) ranks_case<moe::presets::glam<float, moe::cuda>>(R, 13, {true, 5});
}
TEST_CASE("expert_parallel over NCCL, R ranks on R GPUs = moe::layer on one GPU: st_moe") {
  for (int R : {2, 4}) ranks_case<moe::presets::st_moe<float, moe::cuda>>(R, 17, {true, 8});
}

TEST_CASE("expert_parallel over NCCL, R ranks on R GPUs = moe::layer on one GPU: glam, bf16") {
  ranks_case<moe::presets::glam<moe::bfloat16, moe::cuda>>(2, 19, {true, 9});  // R = 4: float cases
}

TEST_CASE("expert_parallel over NCCL, one rank = moe::layer on the same GPU: switch_transformer") {
  one_rank_case<moe::presets::switch_transformer<float, moe::cuda>>(3, {true, 2});
}
TEST_CASE("expert_parallel over NCCL, one rank = moe::layer on the same GPU: glam") {
  one_rank_case<moe::presets::glam<float, moe::cuda>>(5, {true, 4});
}
TEST_CASE("expert_parallel over NCCL, one rank = moe::layer on the same GPU: st_moe") {
  one_rank_case<moe::presets::st_moe<float, moe::cuda>>(7, {true, 6});
}
TEST_CASE("expert_parallel over NCCL, one rank = moe::layer on the same GPU: glam, bf16") {
  one_rank_case<moe::presets::glam<moe::bfloat16, moe::cuda>>(9, {true, 7});
}
