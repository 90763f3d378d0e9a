// Expert parallelism over NCCL on one GPU (R = 1: the machines available have one GPU). The
// expert-parallel layer on moe::cuda with an nccl_communicator must give what moe::layer gives on
// the same GPU (within float tolerance; routing exactly), and exchange nothing with other ranks.
// Multi-GPU runs are untested here (docs/expert_parallelism.md).
#include <moe/parallel/nccl.cuh>

#include "cuda_test_util.cuh"

namespace {

using namespace moe_cuda_test;

template <class Preset>
void one_rank_case(std::uint64_t seed, moe::step_context ctx) {
  using T = float;
  using layer_type = typename Preset::layer;
  using parallel_type = typename Preset::template parallel_layer<moe::nccl_communicator>;
  stream_holder stream;
  const moe::cuda space(stream.s);
  int device = 0;
  ok(cudaGetDevice(&device));
  auto comms = moe::nccl_communicator::init_all({device}, {stream.s});
  REQUIRE(comms.size() == 1);

  const int tokens = 96, d = 48;
  auto cfg = Preset::make_config(d, 80, 8, seed);
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
  check_steps(collect_step(parallel, yd, dxd), ref, 1e-5, true);
  // One rank sends its rows to itself: nothing crosses a link.
  CHECK(parallel.forward_exchange_bytes() == 0);
  CHECK(parallel.backward_exchange_bytes() == 0);
}

}  // namespace

TEST_CASE("expert_parallel over NCCL, one rank = moe::layer on the same GPU: switch_transformer") {
  one_rank_case<moe::presets::switch_transformer<float, moe::cuda>>(3, {true, 2});
}
TEST_CASE("expert_parallel over NCCL, one rank = moe::layer on the same GPU: glam") {
  one_rank_case<moe::presets::glam<float, moe::cuda>>(5, {true, 4});
}
TEST_CASE("expert_parallel over NCCL, one rank = moe::layer on the same GPU: st_moe") {
  one_rank_case<moe::presets::st_moe<float, moe::cuda>>(7, {true, 6});
}
