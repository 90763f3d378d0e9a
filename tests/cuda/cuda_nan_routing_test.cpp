// What the CUDA space relies on when router logits are non-finite: the host throws before routing,
// but the device routes on (the error is raised at the next synchronize), so top_k::select must
// keep every expert index in range when probabilities are NaN. Host-only: runs without a GPU.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include <moe/routing/top_k.hpp>

namespace {

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();

struct selection {
  int expert[2] = {-7, -7};
  float gate[2] = {0, 0};
  std::uint8_t active[2] = {9, 9};
};

selection select(const moe::top_k::config& c, const float* probs, int experts) {
  selection s;
  moe::top_k::select<float>(c, true, moe::rng_stream{}, 0, experts, probs, s.expert, s.gate, s.active);
  return s;
}

}  // namespace

TEST_CASE("top_k::select with all-NaN probabilities takes the lowest free experts") {
  moe::top_k::config c;
  c.k = 2;
  c.renormalize = true;
  const float probs[4] = {nan_f, nan_f, nan_f, nan_f};
  const selection s = select(c, probs, 4);
  CHECK(s.expert[0] == 0);
  CHECK(s.expert[1] == 1);
  CHECK(std::isnan(s.gate[0]));
  CHECK(s.active[0] == 1);

  c.second_policy_train = moe::second_expert::sampling;
  const selection sampled = select(c, probs, 4);
  CHECK(sampled.expert[0] == 0);
  CHECK(sampled.expert[1] >= 1);
  CHECK(sampled.expert[1] < 4);
}

TEST_CASE("top_k::select: a NaN probability never wins; finite choices are unchanged") {
  moe::top_k::config c;
  c.k = 2;
  const float probs[4] = {0.2f, nan_f, 0.5f, 0.3f};
  const selection s = select(c, probs, 4);
  CHECK(s.expert[0] == 2);
  CHECK(s.expert[1] == 3);
  CHECK(s.gate[0] == 0.5f);
  CHECK(s.gate[1] == 0.3f);

  c.k = 1;
  const float top1[3] = {0.1f, 0.7f, 0.2f};
  const selection one = select(c, top1, 3);
  CHECK(one.expert[0] == 1);
  CHECK(one.gate[0] == 0.7f);
}
