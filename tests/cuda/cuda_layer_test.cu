// The full layer of each preset on the CUDA space against the host space: forward, backward,
// parameter gradients, routing decisions and statistics, float and 16-bit storage, on fresh random
// inputs (never zeros). float within 1e-5 relative with routing decisions equal exactly;
// bf16/fp16 within 2e-2 (a near tie may then route differently, so routing is not compared).
#include "cuda_test_util.cuh"

namespace {

using namespace moe_cuda_test;

constexpr double float_rtol = 1e-5;
constexpr double half_rtol = 2e-2;

// d_model and d_ff are not multiples of the 64-wide GEMM tiles, so edge tiles are exercised; two
// routing groups per call.
template <template <class, class, class> class Preset, class T, class Dispatch = moe::sorted_dispatch>
void preset_case(int experts, int tokens, std::uint64_t seed, moe::step_context ctx = {}, bool fine_tuning = false,
                 moe::trainable_parameters trainable = {}) {
  using H = Preset<T, moe::host, Dispatch>;
  using G = Preset<T, moe::cuda, Dispatch>;
  stream_holder stream;
  const moe::cuda space(stream.s);
  auto hc = H::make_config(48, 80, experts, seed);
  auto gc = G::make_config(48, 80, experts, seed);
  if constexpr (requires { H::with_fine_tuning(hc); }) {
    if (fine_tuning) {
      hc = H::with_fine_tuning(hc);
      gc = G::with_fine_tuning(gc);
    }
  }
  hc.group_size = gc.group_size = tokens / 2;
  constexpr bool is_float = std::is_same_v<T, float>;
  compare_layer<typename H::layer, typename G::layer>(hc, gc, space, tokens, seed, is_float ? float_rtol : half_rtol,
                                                      is_float, ctx, trainable);
}

}  // namespace

TEST_CASE("switch_transformer on cuda matches the host: float") {
  preset_case<moe::presets::switch_transformer, float>(8, 96, 11);
  SUBCASE("evaluation") { preset_case<moe::presets::switch_transformer, float>(8, 96, 12, {false, 3}); }
  SUBCASE("expert dropout (fine-tuning)") {
    preset_case<moe::presets::switch_transformer, float>(8, 96, 13, {true, 5}, true);
  }
  SUBCASE("frozen experts (no expert weight gradients computed)") {
    preset_case<moe::presets::switch_transformer, float>(8, 96, 14, {true, 6}, true,
                                                         {.router = true, .experts = false});
  }
}
TEST_CASE("switch_transformer on cuda matches the host: bf16") {
  preset_case<moe::presets::switch_transformer, moe::bfloat16>(8, 96, 21);
}
TEST_CASE("glam on cuda matches the host: float") {
  preset_case<moe::presets::glam, float>(8, 96, 31);
  SUBCASE("frozen router") { preset_case<moe::presets::glam, float>(8, 96, 32, {}, false, {.router = false}); }
}
TEST_CASE("glam on cuda matches the host: bf16") { preset_case<moe::presets::glam, moe::bfloat16>(8, 96, 41); }
TEST_CASE("st_moe on cuda matches the host: float") {
  preset_case<moe::presets::st_moe, float>(8, 96, 51);
  SUBCASE("evaluation") { preset_case<moe::presets::st_moe, float>(8, 96, 52, {false, 1}); }
}
TEST_CASE("st_moe on cuda matches the host: bf16") { preset_case<moe::presets::st_moe, moe::bfloat16>(8, 96, 61); }
TEST_CASE("st_moe on cuda matches the host: fp16") { preset_case<moe::presets::st_moe, moe::float16>(8, 96, 71); }
