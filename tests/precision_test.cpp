// 16-bit storage: a bfloat16 / float16 layer computes what a float layer with the same (rounded)
// weights computes, within 16-bit tolerance; the router stays float32 (selective precision).
#include "test_util.hpp"

#include <cmath>

namespace {

template <class Half>
void compare_with_float() {
  using P16 = moe::presets::st_moe<Half>;
  using P32 = moe::presets::st_moe<float>;
  auto c16 = P16::make_config(32, 64, 4, 11);
  auto c32 = P32::make_config(32, 64, 4, 11);
  c16.capacity.train = c32.capacity.train = 2.0;
  typename P16::layer l16(c16);
  typename P32::layer l32(c32);
  static_assert(std::is_same_v<typename P16::layer::compute_type, float>, "the router computes in float32");

  // Give the float layer exactly the 16-bit layer's weights.
  std::vector<std::vector<float>> weights;
  l16.for_each_parameter([&](const auto& p) {
    std::vector<float> w;
    for (moe::index_t i = 0; i < p.size(); ++i) w.push_back(float(moe::widen(p.value[i])));
    weights.push_back(w);
  });
  std::size_t k = 0;
  l32.for_each_parameter([&](const auto& p) {
    for (moe::index_t i = 0; i < p.size(); ++i) p.value[i] = weights[k][std::size_t(i)];
    ++k;
  });

  const int T = 128, d = 32;
  const auto xf = moe_test::random_vector<float>(std::size_t(T) * d, 5);
  const auto dyf = moe_test::random_vector<float>(std::size_t(T) * d, 6);
  std::vector<Half> x16, dy16;
  std::vector<float> x32, dy32;
  for (float v : xf) x16.push_back(Half(v)), x32.push_back(float(Half(v)));
  for (float v : dyf) dy16.push_back(Half(v)), dy32.push_back(float(Half(v)));
  std::vector<Half> y16(x16.size()), dx16(x16.size());
  std::vector<float> y32(x32.size()), dx32(x32.size());
  const moe::step_context ctx{.training = true, .step = 1};
  l16.forward(ctx, {x16.data(), T, d}, {y16.data(), T, d});
  l32.forward(ctx, {x32.data(), T, d}, {y32.data(), T, d});
  // Routing decisions come from the float32 router on identical inputs: identical.
  CHECK(l16.routing().slot == l32.routing().slot);
  CHECK(l16.statistics().aux_loss == doctest::Approx(l32.statistics().aux_loss).epsilon(1e-6));
  l16.backward({dy16.data(), T, d}, {dx16.data(), T, d});
  l32.backward({dy32.data(), T, d}, {dx32.data(), T, d});

  auto max_rel = [](const auto& a, const std::vector<float>& b) {
    double scale = 0, err = 0;
    for (std::size_t i = 0; i < b.size(); ++i) {
      scale = std::max(scale, std::abs(double(b[i])));
      err = std::max(err, std::abs(double(moe::widen(a[i])) - double(b[i])));
    }
    return err / scale;
  };
  CHECK(max_rel(y16, y32) < 2e-2);
  CHECK(max_rel(dx16, dx32) < 2e-2);
  // Weight gradients accumulate in float.
  std::vector<std::vector<float>> g16;
  l16.for_each_parameter([&](const auto& p) {
    static_assert(std::is_same_v<std::remove_pointer_t<decltype(p.grad)>, float>);
    g16.emplace_back(p.grad, p.grad + p.size());
  });
  k = 0;
  l32.for_each_parameter([&](const auto& p) {
    CHECK(max_rel(g16[k], std::vector<float>(p.grad, p.grad + p.size())) < 2e-2);
    ++k;
  });
}

}  // namespace

TEST_CASE("bfloat16 layer matches the float computation within bfloat16 tolerance") {
  compare_with_float<moe::bfloat16>();
}
TEST_CASE("float16 layer matches the float computation within float16 tolerance") {
  compare_with_float<moe::float16>();
}
