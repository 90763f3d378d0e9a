// The primitives of moe::cuda against moe::host on the same random inputs: memory, parallel_for,
// scans, histograms, reductions, the radix sort, GEMM (cuBLAS and the tiled fallback) and the
// grouped GEMMs whose offsets stay on the device (including empty groups).
#include <algorithm>
#include <limits>
#include <random>

#include "cuda_test_util.cuh"

namespace {

using namespace moe_cuda_test;

std::vector<int> random_ints(std::size_t n, int lo, int hi, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<int> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// Group offsets with some empty groups (and an empty first and last group).
std::vector<int> random_offsets(int groups, std::uint64_t seed) {
  std::vector<int> counts = random_ints(std::size_t(groups), 0, 150, seed);
  counts[0] = 0;
  counts[std::size_t(groups) - 1] = 0;
  for (int g = 2; g < groups; g += 3) counts[std::size_t(g)] = 0;
  std::vector<int> off(std::size_t(groups) + 1, 0);
  for (int g = 0; g < groups; ++g) off[std::size_t(g) + 1] = off[std::size_t(g)] + counts[std::size_t(g)];
  return off;
}

}  // namespace

TEST_CASE("cuda satisfies the execution_space concept") {
  static_assert(moe::execution_space<moe::cuda>);
  static_assert(!moe::cuda::host_accessible);
}

TEST_CASE("memory, fill and parallel_for") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const std::size_t n = 100003;
  const std::vector<float> src = moe_test::random_vector<float>(n, 1);
  device_vector<float> a(src), b(n);
  space.copy(b.p, a.p, n * sizeof(float));
  float* bp = b.p;
  space.parallel_for(moe::index_t(n), [=] MOE_LAMBDA(moe::index_t i) { bp[i] = 2.0f * bp[i] + float(i % 3); });
  std::vector<float> got(n);
  space.copy_to_host(got.data(), b.p, n * sizeof(float));
  for (std::size_t i = 0; i < n; ++i) REQUIRE(got[i] == 2.0f * src[i] + float(i % 3));
  space.fill_zero(b.p, n * sizeof(float));
  space.copy_to_host(got.data(), b.p, n * sizeof(float));
  CHECK(std::all_of(got.begin(), got.end(), [](float v) { return v == 0.0f; }));
  space.parallel_for(0, [=] MOE_LAMBDA(moe::index_t) {});  // nothing launched
  space.synchronize();
}

TEST_CASE("scans and offsets match the host") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const moe::host host(1);
  for (std::size_t n : {std::size_t(1), std::size_t(7), std::size_t(4096), std::size_t(300001)}) {
    const std::vector<int> in = random_ints(n, 0, 9, n);
    std::vector<int> ref(n), ref_off(n + 1);
    host.exclusive_scan(in.data(), ref.data(), moe::index_t(n));
    host.offsets_from_counts(in.data(), ref_off.data(), moe::index_t(n));
    device_vector<int> d(in), out(n), off(n + 1);
    space.exclusive_scan(d.p, out.p, moe::index_t(n));
    space.offsets_from_counts(d.p, off.p, moe::index_t(n));
    CHECK(out.download() == ref);
    CHECK(off.download() == ref_off);
    space.exclusive_scan(d.p, d.p, moe::index_t(n));  // in place
    CHECK(d.download() == ref);
  }
  device_vector<int> off(1);
  space.offsets_from_counts(static_cast<const int*>(nullptr), off.p, 0);
  CHECK(off.download() == std::vector<int>{0});
}

TEST_CASE("histogram ignores keys outside [0, bins)") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const moe::host host(1);
  for (int bins : {1, 13, 1024}) {
    const std::vector<int> keys = random_ints(50000, -3, bins + 2, std::uint64_t(bins));
    std::vector<int> ref(static_cast<std::size_t>(bins));
    host.histogram(keys.data(), moe::index_t(keys.size()), ref.data(), bins);
    device_vector<int> k(keys), counts(static_cast<std::size_t>(bins));
    space.histogram(k.p, moe::index_t(keys.size()), counts.p, bins);
    CHECK(counts.download() == ref);
  }
}

TEST_CASE("reductions: sum within rounding, max exact, NaN skipped, n = 0") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const moe::host host(1);
  std::vector<float> v = moe_test::random_vector<float>(77777, 5);
  v[100] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> finite = v;
  finite[100] = 0.0f;
  device_vector<float> d(v), df(finite), out(1);
  float ref_sum = 0, ref_max = 0;
  host.reduce_sum(finite.data(), moe::index_t(finite.size()), &ref_sum);
  host.reduce_max(v.data(), moe::index_t(v.size()), -1.0f, &ref_max);
  space.reduce_sum(df.p, moe::index_t(finite.size()), out.p);
  check_close({double(out.download()[0])}, {double(ref_sum)}, 1e-4, "reduce_sum");
  space.reduce_max(d.p, moe::index_t(v.size()), -1.0f, out.p);
  CHECK(out.download()[0] == ref_max);
  space.reduce_sum(df.p, 0, out.p);
  CHECK(out.download()[0] == 0.0f);
  space.reduce_max(d.p, 0, -2.5f, out.p);
  CHECK(out.download()[0] == -2.5f);
  // The same call twice: the same bits.
  space.reduce_sum(df.p, moe::index_t(finite.size()), out.p);
  const float a = out.download()[0];
  space.reduce_sum(df.p, moe::index_t(finite.size()), out.p);
  CHECK(out.download()[0] == a);
}

TEST_CASE("radix_sort_pairs is stable and matches the host") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const moe::host host(1);
  for (int bits : {8, 33, 40, 64}) {
    const std::size_t n = 20011;
    std::mt19937_64 gen(static_cast<std::uint64_t>(bits));
    std::vector<std::uint64_t> keys(n);
    for (auto& k : keys) k = gen() % 97 | (gen() << 40);  // many equal low bits: stability matters
    std::vector<int> vals(n);
    for (std::size_t i = 0; i < n; ++i) vals[i] = int(i);
    std::vector<std::uint64_t> ref_k(n);
    std::vector<int> ref_v(n);
    std::vector<std::byte> host_scratch(moe::host::radix_sort_scratch_bytes(moe::index_t(n)));
    host.radix_sort_pairs(keys.data(), ref_k.data(), vals.data(), ref_v.data(), moe::index_t(n), bits,
                          host_scratch.data(), host_scratch.size());
    device_vector<std::uint64_t> kin(keys), kout(n);
    device_vector<int> vin(vals), vout(n);
    device_vector<unsigned char> scratch(moe::cuda::radix_sort_scratch_bytes(moe::index_t(n)));
    space.radix_sort_pairs(kin.p, kout.p, vin.p, vout.p, moe::index_t(n), bits, scratch.p, scratch.n);
    INFO("key_bits=", bits);
    CHECK(kout.download() == ref_k);
    CHECK(vout.download() == ref_v);
    CHECK(kin.download() == keys);  // inputs untouched
  }
}

TEST_CASE("check_finite records the first non-finite element for synchronize") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  std::vector<float> v = moe_test::random_vector<float>(6 * 5, 9);
  device_vector<float> clean(v);
  v[2 * 5 + 3] = std::numeric_limits<float>::infinity();
  v[4 * 5 + 1] = std::numeric_limits<float>::quiet_NaN();
  device_vector<float> d(v);
  space.check_finite(clean.p, 6, 5, "clean", "row", "col");
  CHECK_NOTHROW(space.synchronize());
  space.check_finite(d.p, 6, 5, "values", "row", "col");
  space.check_finite(d.p, 6, 5, "later check", "row", "col");  // the first check's report wins
  CHECK_THROWS_WITH_AS(space.synchronize(), "values: non-finite value inf at row 2, col 3", moe::numeric_error);
  CHECK_NOTHROW(space.synchronize());
}

namespace {

template <class TA, class TB, class TC>
void gemm_case(moe::op opa, moe::op opb, moe::index_t m, moe::index_t n, moe::index_t k, double rtol, double beta) {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const moe::host host(1);
  const moe::index_t lda = (opa == moe::op::none ? k : m) + 3, ldb = (opb == moe::op::none ? n : k) + 1, ldc = n + 2;
  const moe::index_t a_rows = opa == moe::op::none ? m : k, b_rows = opb == moe::op::none ? k : n;
  const auto a = moe_test::random_vector<TA>(std::size_t(a_rows * lda), 1);
  const auto b = moe_test::random_vector<TB>(std::size_t(b_rows * ldb), 2);
  auto c = moe_test::random_vector<TC>(std::size_t(m * ldc), 3);
  device_vector<TA> da(a);
  device_vector<TB> db(b);
  device_vector<TC> dc(c);
  using Acc = moe::acc_t<TC>;
  host.gemm(opa, opb, m, n, k, Acc(0.75), a.data(), lda, b.data(), ldb, Acc(beta), c.data(), ldc);
  space.gemm(opa, opb, m, n, k, Acc(0.75), da.p, lda, db.p, ldb, Acc(beta), dc.p, ldc);
  INFO("gemm ", moe::type_name<TA>(), "·", moe::type_name<TB>(), "→", moe::type_name<TC>(), " opa=", int(opa),
       " opb=", int(opb), " m=", m, " n=", n, " k=", k, " beta=", beta);
  check_close(widened(dc.download()), widened(c), rtol, "gemm");
}

template <class T, class TC>
void grouped_case(moe::op opb, int groups, moe::index_t n, moe::index_t k, double rtol, double beta) {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const moe::host host(1);
  const std::vector<int> off = random_offsets(groups, std::uint64_t(groups * 7 + n));
  const moe::index_t rows = off.back(), lda = k + 1, ldb = (opb == moe::op::none ? n : k) + 2, ldc = n + 3;
  const moe::index_t b_stride = (opb == moe::op::none ? k : n) * ldb + 5;
  const auto a = moe_test::random_vector<T>(std::size_t(std::max<moe::index_t>(rows, 1) * lda), 4);
  const auto b = moe_test::random_vector<T>(std::size_t(groups * b_stride), 5);
  auto c = moe_test::random_vector<TC>(std::size_t(std::max<moe::index_t>(rows, 1) * ldc), 6);
  device_vector<int> doff(off);
  device_vector<T> da(a), db(b);
  device_vector<TC> dc(c);
  using Acc = moe::acc_t<TC>;
  host.grouped_gemm(opb, groups, off.data(), n, k, Acc(1.25), a.data(), lda, b.data(), b_stride, ldb, Acc(beta),
                    c.data(), ldc);
  space.grouped_gemm(opb, groups, doff.p, n, k, Acc(1.25), da.p, lda, db.p, b_stride, ldb, Acc(beta), dc.p, ldc);
  INFO("grouped_gemm ", moe::type_name<T>(), " groups=", groups, " rows=", rows, " n=", n, " k=", k,
       " opb=", int(opb), " beta=", beta);
  check_close(widened(dc.download()), widened(c), rtol, "grouped_gemm");

  // Weight gradients: C_g[k, n] = A_gᵀ · B_g over the rows of g (B: [rows, n]); empty groups keep
  // beta · C_g.
  const moe::index_t c_stride = k * ldc + 7;
  const auto bt = moe_test::random_vector<T>(std::size_t(std::max<moe::index_t>(rows, 1) * ldc), 7);
  auto cg = moe_test::random_vector<TC>(std::size_t(groups * c_stride), 8);
  device_vector<T> dbt(bt);
  device_vector<TC> dcg(cg);
  host.grouped_gemm_tn(groups, off.data(), k, n, Acc(0.5), a.data(), lda, bt.data(), ldc, Acc(beta), cg.data(),
                       c_stride, ldc);
  space.grouped_gemm_tn(groups, doff.p, k, n, Acc(0.5), da.p, lda, dbt.p, ldc, Acc(beta), dcg.p, c_stride, ldc);
  check_close(widened(dcg.download()), widened(cg), rtol, "grouped_gemm_tn");
}

}  // namespace

TEST_CASE("gemm matches the host (cuBLAS and the tiled fallback)") {
  using moe::op;
  for (op opa : {op::none, op::transpose})
    for (op opb : {op::none, op::transpose}) {
      gemm_case<float, float, float>(opa, opb, 67, 45, 130, 1e-5, 0.0);
      gemm_case<float, float, float>(opa, opb, 5, 70, 3, 1e-5, 1.0);
      gemm_case<double, double, double>(opa, opb, 33, 17, 65, 1e-12, 0.5);
      gemm_case<moe::bfloat16, moe::bfloat16, moe::bfloat16>(opa, opb, 40, 72, 96, 2e-2, 0.0);
      gemm_case<moe::bfloat16, moe::bfloat16, float>(opa, opb, 40, 72, 96, 1e-5, 1.0);
      gemm_case<moe::float16, moe::float16, moe::float16>(opa, opb, 40, 72, 96, 2e-2, 0.0);
      // Mixed input types: the tiled kernel (cuBLAS takes one input type).
      gemm_case<float, moe::bfloat16, float>(opa, opb, 70, 65, 33, 1e-5, 1.0);
    }
  gemm_case<float, float, float>(op::none, op::none, 8, 8, 0, 1e-5, 0.5);  // k = 0: C = beta · C
}

TEST_CASE("grouped GEMMs read the device offsets, including empty groups") {
  using moe::op;
  for (op opb : {op::none, op::transpose}) {
    grouped_case<float, float>(opb, 9, 70, 45, 1e-5, 0.0);
    grouped_case<float, float>(opb, 4, 129, 64, 1e-5, 1.0);
    grouped_case<double, double>(opb, 6, 33, 20, 1e-12, 1.0);
    grouped_case<moe::bfloat16, moe::bfloat16>(opb, 9, 70, 45, 2e-2, 0.0);
    grouped_case<moe::float16, moe::float16>(opb, 5, 40, 65, 2e-2, 1.0);
  }
  grouped_case<float, float>(op::none, 1, 16, 16, 1e-5, 0.0);  // one group, which is empty
}
