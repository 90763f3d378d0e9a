// Tests of moe/core/rng.hpp: Philox4x32-10 against the Random123 known-answer vectors, stream
// reproducibility and separation, and statistics of the derived distributions (fixed seeds, bounds
// of about 5 standard errors, so a broken mapping fails and a correct one never flakes).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <ios>
#include <numbers>
#include <set>
#include <string>
#include <vector>

#include <moe/core/rng.hpp>

namespace {

// Number of equal 32-bit words at the same position in the first n blocks of two streams.
int shared_words(const moe::rng_stream& a, const moe::rng_stream& b, int n) {
  int same = 0;
  for (int i = 0; i < n; ++i) {
    const auto x = a.bits(std::uint64_t(i)), y = b.bits(std::uint64_t(i));
    for (int l = 0; l < 4; ++l) same += x.v[l] == y.v[l];
  }
  return same;
}

struct moments {
  double mean = 0, var = 0, kurtosis = 0;
};
moments moments_of(const std::vector<double>& x) {
  moments m;
  for (double v : x) m.mean += v;
  m.mean /= double(x.size());
  double m2 = 0, m4 = 0;
  for (double v : x) {
    const double d = (v - m.mean) * (v - m.mean);
    m2 += d;
    m4 += d * d;
  }
  m2 /= double(x.size());
  m4 /= double(x.size());
  m.var = m2;
  m.kurtosis = m4 / (m2 * m2);
  return m;
}

}  // namespace

TEST_CASE("rng: Philox4x32-10 matches the Random123 known-answer vectors") {
  struct kat {
    moe::philox4x32 ctr;
    std::uint32_t k0, k1;
    moe::philox4x32 expected;
  };
  // Random123 kat_vectors, "philox4x32 10" lines.
  const kat vectors[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
       0xffffffffu,
       0xffffffffu,
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
       0xa4093822u,
       0x299f31d0u,
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const kat& k : vectors) {
    const moe::philox4x32 out = moe::philox4x32_10(k.ctr, k.k0, k.k1);
    for (int l = 0; l < 4; ++l) {
      INFO("lane " << l << " got 0x" << std::hex << out.v[l]);
      CHECK(out.v[l] == k.expected.v[l]);
    }
  }
}

TEST_CASE("rng: a stream maps its coordinates onto the Philox counter and key as documented") {
  // c0,c1 = index, c2 = step, c3 = (layer << 8) | purpose; key = seed. Pinned so that the CUDA
  // space (and any checkpoint made with it) draws the same numbers.
  const moe::rng_stream s{0x0123456789abcdefull, moe::rng_purpose::router_noise, 7, 42};
  const std::uint64_t index = 0xfedcba9876543210ull;
  const moe::philox4x32 want =
      moe::philox4x32_10({{0x76543210u, 0xfedcba98u, 42u, (7u << 8) | 2u}}, 0x89abcdefu, 0x01234567u);
  const moe::philox4x32 got = s.bits(index);
  for (int l = 0; l < 4; ++l) CHECK(got.v[l] == want.v[l]);
  CHECK(moe::uniform(s, index) == moe::uniform01(want.v[0]));
}

TEST_CASE("rng: the same coordinates give the same bits, every time") {
  const moe::rng_stream s{99, moe::rng_purpose::router_jitter, 3, 1000};
  const moe::rng_stream copy = s;
  for (std::uint64_t i = 0; i < 1000; ++i) {
    const moe::rng_stream fresh{99, moe::rng_purpose::router_jitter, 3, 1000};
    const auto a = s.bits(i), b = copy.bits(i), c = fresh.bits(i);
    for (int l = 0; l < 4; ++l) REQUIRE((a.v[l] == b.v[l] && a.v[l] == c.v[l]));
    REQUIRE(moe::uniform(s, i) == moe::uniform(copy, i));
    REQUIRE(moe::normal(s, i) == moe::normal(copy, i));
    REQUIRE(moe::truncated_normal(s, i, 0.5f) == moe::truncated_normal(copy, i, 0.5f));
  }
}

TEST_CASE("rng: bits_n gives bits block by block, across the index's 2^32 boundaries too") {
  // On x86 CPUs with AVX2 the runs go eight blocks at a time (moe/core/philox_x86.hpp), falling back
  // to one by one where the low index word wraps within eight; elsewhere one by one throughout.
#if defined(MOE_PHILOX_AVX2)
  MESSAGE((std::string("AVX2 path: ") + (moe::detail::cpu_has_avx2() ? "taken" : "not available on this CPU")));
#endif
  const moe::rng_stream streams[] = {{0x0123456789abcdefull, moe::rng_purpose::expert_dropout, 0xabcdef, 77},
                                     {1, moe::rng_purpose::router_jitter, 0, 0},
                                     {~0ull, moe::rng_purpose::user, 3, 0xffffffffu}};
  const std::uint64_t firsts[] = {0, 5, 1000, 0xfffffff0ull, 0xfffffff9ull, 0x1fffffffaull, ~0ull - 40};
  for (const auto& s : streams)
    for (const std::uint64_t first : firsts)
      for (std::uint64_t count = 0; count <= 41; ++count) {
        CAPTURE(first);
        CAPTURE(count);
        std::vector<moe::philox4x32> got(count + 1, moe::philox4x32{{1, 2, 3, 4}});
        s.bits_n(first, count, got.data());
        for (std::uint64_t i = 0; i < count; ++i) {
          const moe::philox4x32 want = s.bits(first + i);
          for (int l = 0; l < 4; ++l) REQUIRE(got[i].v[l] == want.v[l]);
        }
        CHECK(got[count].v[0] == 1);  // nothing written past the run
      }
}

TEST_CASE("rng: streams differing in seed, purpose, layer, step or index are unrelated") {
  const moe::rng_stream base{1234, moe::rng_purpose::expert_dropout, 5, 17};
  const int n = 2000;  // 8000 words: equal words by chance are ~8000 / 2^32
  auto with = [&](auto change) {
    moe::rng_stream s = base;
    change(s);
    return s;
  };
  CHECK(shared_words(base, with([](auto& s) { s.seed = 1235; }), n) == 0);
  CHECK(shared_words(base, with([](auto& s) { s.seed = 1234 + (1ull << 32); }), n) == 0);  // high seed word
  CHECK(shared_words(base, with([](auto& s) { s.purpose = moe::rng_purpose::router_jitter; }), n) == 0);
  CHECK(shared_words(base, with([](auto& s) { s.purpose = moe::rng_purpose::user; }), n) == 0);
  CHECK(shared_words(base, with([](auto& s) { s.layer = 6; }), n) == 0);
  CHECK(shared_words(base, with([](auto& s) { s.layer = 5 + (1u << 23); }), n) == 0);  // top used layer bit
  CHECK(shared_words(base, with([](auto& s) { s.step = 18; }), n) == 0);
  CHECK(shared_words(base, base, n) == 4 * n);

  // Indices differing only in the high 32 bits draw different blocks.
  int same = 0;
  for (std::uint64_t i = 0; i < 1000; ++i) same += base.bits(i).v[0] == base.bits(i + (1ull << 32)).v[0];
  CHECK(same == 0);
  // Within a stream, consecutive indices give distinct words (no short cycle or constant lane).
  std::set<std::uint32_t> words;
  for (std::uint64_t i = 0; i < 10000; ++i)
    for (std::uint32_t w : base.bits(i).v) words.insert(w);
  CHECK(words.size() >= 39990);  // 40000 words; a few birthday collisions allowed
  // Different purposes also give different uniforms, not just different bits.
  CHECK(moe::uniform(base, 0) != moe::uniform(with([](auto& s) { s.purpose = moe::rng_purpose::init; }), 0));
}

TEST_CASE("rng: word to float mappings cover their documented ranges") {
  CHECK(moe::uniform01(0u) == 0.0f);
  CHECK(moe::uniform01(0xffffffffu) == 1.0f - 0x1p-24f);
  CHECK(moe::uniform01(0xffffffffu) < 1.0f);
  CHECK(moe::uniform01(0x80000000u) == 0.5f);
  CHECK(moe::uniform01(0x000000ffu) == 0.0f);  // only the top 24 bits count
  CHECK(moe::uniform01(0x00000100u) == 0x1p-24f);
  CHECK(moe::uniform01_open_low(0u) == 0x1p-24f);
  CHECK(moe::uniform01_open_low(0u) > 0.0f);
  CHECK(moe::uniform01_open_low(0xffffffffu) == 1.0f);
  CHECK(moe::uniform01_open_low(0x80000000u) == 0.5f + 0x1p-24f);
}

TEST_CASE("rng: uniform is uniform on [0, 1)") {
  const moe::rng_stream s{20240601, moe::rng_purpose::user, 0, 0};
  const int n = 100000;
  std::vector<double> x(n);
  int bins[10] = {};
  for (int i = 0; i < n; ++i) {
    const float u = moe::uniform(s, std::uint64_t(i));
    REQUIRE(u >= 0.0f);
    REQUIRE(u < 1.0f);
    x[std::size_t(i)] = u;
    ++bins[std::min(9, int(u * 10))];
  }
  const moments m = moments_of(x);
  CHECK(std::fabs(m.mean - 0.5) < 0.005);  // se 0.0009
  CHECK(std::fabs(m.var - 1.0 / 12) < 0.0015);  // se 0.00024
  // Chi-square over 10 equal bins, 9 degrees of freedom: P(chi2 > 40) ~ 1e-5.
  double chi2 = 0;
  for (int b : bins) chi2 += (b - n / 10.0) * (b - n / 10.0) / (n / 10.0);
  CHECK(chi2 < 40.0);
  // Successive draws are uncorrelated (lag-1 correlation, se ~0.003).
  double c = 0;
  for (int i = 0; i + 1 < n; ++i) c += (x[std::size_t(i)] - 0.5) * (x[std::size_t(i) + 1] - 0.5);
  CHECK(std::fabs(c / (n - 1) / (1.0 / 12)) < 0.02);
}

TEST_CASE("rng: normal has mean 0, variance 1 and Gaussian tails") {
  const moe::rng_stream s{7, moe::rng_purpose::router_noise, 2, 9};
  const int n = 100000;
  std::vector<double> x(n);
  int beyond_196 = 0, beyond_3 = 0;
  for (int i = 0; i < n; ++i) {
    const double z = moe::normal(s, std::uint64_t(i));
    REQUIRE(std::isfinite(z));
    x[std::size_t(i)] = z;
    beyond_196 += std::fabs(z) > 1.96;
    beyond_3 += std::fabs(z) > 3.0;
  }
  const moments m = moments_of(x);
  CHECK(std::fabs(m.mean) < 0.02);          // se 0.0032
  CHECK(std::fabs(m.var - 1.0) < 0.03);     // se 0.0045
  CHECK(std::fabs(m.kurtosis - 3.0) < 0.1);  // se 0.015
  CHECK(std::fabs(beyond_196 / double(n) - 0.05) < 0.004);      // se 0.0007
  CHECK(std::fabs(beyond_3 / double(n) - 0.0027) < 0.0009);     // se 0.00016
  // Symmetric: as many above as below zero.
  const auto positive = std::count_if(x.begin(), x.end(), [](double v) { return v > 0; });
  CHECK(std::fabs(double(positive) / n - 0.5) < 0.008);
}

TEST_CASE("rng: normal is Box-Muller on lanes 0 and 1, computed in double") {
  // Pins the formula the device path must reproduce bit for bit.
  const moe::rng_stream s{31337, moe::rng_purpose::init, 1, 0};
  for (std::uint64_t i = 0; i < 1000; ++i) {
    const auto w = s.bits(i);
    const double u1 = (double(w.v[0] >> 8) + 1) / 16777216.0, u2 = double(w.v[1] >> 8) / 16777216.0;
    const float want = float(std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * std::numbers::pi * u2));
    REQUIRE(moe::normal(s, i) == want);
  }
}

TEST_CASE("rng: truncated_normal stays within two standard deviations, with std ~0.8796 sigma") {
  for (float stddev : {0.02f, 1.0f, 3.0f}) {
    CAPTURE(stddev);
    const moe::rng_stream s{555, moe::rng_purpose::init, 4, 0};
    const int n = 100000;
    std::vector<double> x(n);
    int redrawn = 0;
    for (int i = 0; i < n; ++i) {
      const float v = moe::truncated_normal(s, std::uint64_t(i), stddev);
      REQUIRE(std::fabs(v) <= 2 * stddev);
      x[std::size_t(i)] = v;
      // The first draw is the plain normal of step 0; when it was in range it is the result.
      const float first = moe::normal(s, std::uint64_t(i));
      if (std::fabs(first) < 2.0f) REQUIRE(v == first * stddev);
      else ++redrawn;
    }
    const moments m = moments_of(x);
    // Var of N(0,1) truncated to ±2: 1 - 4·phi(2)/(2·Phi(2) - 1) = 0.77371, std 0.87961.
    CHECK(std::fabs(std::sqrt(m.var) / stddev - 0.87961) < 0.006);  // se ~0.002
    CHECK(std::fabs(m.mean / stddev) < 0.015);
    // P(|z| >= 2) = 4.55%: that share of elements needed a redraw.
    CHECK(std::fabs(redrawn / double(n) - 0.0455) < 0.004);
    // Truncation leaves values close to the bound (the distribution is not squeezed).
    const double largest = *std::max_element(x.begin(), x.end());
    CHECK(largest > 1.99 * stddev);
  }
}

TEST_CASE("rng: dropout draws — eight per block, the rate quantised to 1/65536, an exact expectation") {
  CHECK(moe::dropout_draws::at_rate(0.0f).threshold == 0);
  CHECK(moe::dropout_draws::at_rate(0.1f).threshold == 6554);  // 6553.6 rounded
  CHECK(moe::dropout_draws::at_rate(0.5f).threshold == 32768);
  CHECK(moe::dropout_draws::at_rate(0.99999f).threshold == 65535);  // never all dropped
  CHECK(moe::dropout_draws::block_of(7) == 0);
  CHECK(moe::dropout_draws::block_of(8) == 1);
  // Element i reads half i mod 2 of word (i / 2) mod 4: a hand-made block decides as expected.
  const moe::philox4x32 block{{0x00020001u, 0x00040003u, 0xffff0000u, 0x8000ffffu}};
  const moe::dropout_draws d{3};
  const double kept = 65536.0 / (65536.0 - 3.0);
  const double want[8] = {0, 0, kept, kept, 0, kept, kept, kept};  // halves 1, 2, 3, 4, 0, ffff, ffff, 8000
  for (int i = 0; i < 8; ++i) {
    CAPTURE(i);
    CHECK(d.scale<double>(block, std::uint64_t(i)) == want[i]);
    CHECK(d.scale<double>(block, std::uint64_t(8 + i)) == want[i]);  // the same positions of the next block
  }
  // Over a stream, the dropped fraction is the quantised rate and the mean scale is 1.
  const moe::rng_stream s{77, moe::rng_purpose::expert_dropout, 2, 9};
  for (const float rate : {0.1f, 0.4f}) {
    CAPTURE(rate);
    const moe::dropout_draws r = moe::dropout_draws::at_rate(rate);
    const int n = 800000;
    int dropped = 0;
    double sum = 0;
    for (int i = 0; i < n; ++i) {
      const double v = r.scale<double>(s.bits(moe::dropout_draws::block_of(std::uint64_t(i))), std::uint64_t(i));
      dropped += v == 0;
      sum += v;
    }
    const double q = r.threshold / 65536.0, sd = std::sqrt(n * q * (1 - q));
    CHECK(std::abs(dropped - n * q) < 5 * sd);
    CHECK(std::abs(sum / n - 1.0) < 5 * sd / n / (1 - q));
  }
}

TEST_CASE("rng: dropout factors over a run equal the element-by-element scales") {
  // factors draws a run's blocks 32 at a time (rng_stream::bits_n): runs starting anywhere in a
  // block, shorter and longer than a batch, past a 2^32 boundary of the block index.
  const moe::rng_stream s{4242, moe::rng_purpose::expert_dropout, 6, 11};
  for (const float rate : {0.1f, 0.4f}) {
    const moe::dropout_draws d = moe::dropout_draws::at_rate(rate);
    const float kept = d.kept_scale<float>();
    for (const std::uint64_t base : {std::uint64_t(0), (std::uint64_t(0xffffffffu) << 3) - 100})
      for (std::uint64_t offset = 0; offset < 17; ++offset)
        for (const std::uint64_t n : {1, 7, 8, 9, 100, 255, 256, 257, 300, 1000}) {
          CAPTURE(rate);
          CAPTURE(base);
          CAPTURE(offset);
          CAPTURE(n);
          const std::uint64_t first = base + offset;
          std::vector<float> got(n + 1, -1.0f);
          d.factors(s, first, n, kept, got.data());
          int dropped = 0;
          for (std::uint64_t k = 0; k < n; ++k) {
            const std::uint64_t i = first + k;
            REQUIRE(got[k] == d.scale<float>(s.bits(moe::dropout_draws::block_of(i)), i));
            dropped += got[k] == 0.0f;
          }
          CHECK(got[n] == -1.0f);
          if (n >= 1000) CHECK(dropped > 0);
        }
  }
}
