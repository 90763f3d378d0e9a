// The primitives of moe::cuda against moe::host on the same random inputs: memory, parallel_for,
// scans, histograms, reductions, the radix sort, GEMM (cuBLAS and the tiled fallback) and the
// grouped GEMMs whose offsets stay on the device (including empty groups).
#include <algorithm>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>

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

TEST_CASE("parallel_tasks runs the tasks in index order, each task's calls queued on the stream") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const moe::index_t tasks = 5, len = 1000;
  const std::vector<float> src = moe_test::random_vector<float>(std::size_t(len), 2);
  device_vector<float> blocks(std::size_t(tasks * len));
  space.copy_from_host(blocks.p, src.data(), std::size_t(len) * sizeof(float));
  float* bp = blocks.p;
  std::vector<moe::index_t> order;
  // Task i reads the block task i - 1 wrote: right only if the tasks' kernels run in index order.
  space.parallel_tasks(tasks - 1, [&](moe::index_t i) {
    order.push_back(i);
    const float* prev = bp + i * len;
    float* next = bp + (i + 1) * len;
    space.parallel_for(len, [=] MOE_LAMBDA(moe::index_t j) { next[j] = 3.0f * prev[j] + 1.0f; });
  });
  CHECK(order == std::vector<moe::index_t>{0, 1, 2, 3});
  const std::vector<float> got = blocks.download();
  for (moe::index_t j = 0; j < len; ++j) {
    float want = src[std::size_t(j)];
    for (moe::index_t i = 1; i < tasks; ++i) {
      want = 3.0f * want + 1.0f;
      REQUIRE(got[std::size_t(i * len + j)] == want);
    }
  }
  space.parallel_tasks(0, [&](moe::index_t) { FAIL("no task for n = 0"); });
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

TEST_CASE("group_row_sums matches the host: one or many chunks, narrow and wide columns, empty groups") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const moe::host host(1);
  for (const auto& [groups, rows, cols] : {std::tuple{1, 32768, 8}, std::tuple{4, 1000, 1}, std::tuple{3, 4097, 33},
                                          std::tuple{7, 5, 256}, std::tuple{2, 0, 3}}) {
    const std::size_t n = std::size_t(groups) * std::size_t(rows) * std::size_t(cols);
    const auto v = moe_test::random_vector<float>(std::max<std::size_t>(n, 1), 9);
    device_vector<float> dv(v), dout(std::vector<float>(std::size_t(groups * cols), -7.0f));
    std::vector<float> ref(std::size_t(groups * cols), -7.0f);
    const moe::index_t c_ = cols;
    const float* hv = v.data();
    host.group_row_sums(groups, rows, cols, [=](moe::index_t r, moe::index_t c) { return hv[r * c_ + c]; }, ref.data());
    const float* p = dv.p;
    const auto f = [=] MOE_LAMBDA(moe::index_t r, moe::index_t c) -> float { return p[r * c_ + c]; };
    space.group_row_sums(groups, rows, cols, f, dout.p);
    INFO("group_row_sums groups=", groups, " rows=", rows, " cols=", cols);
    const std::vector<float> got = dout.download();
    // Float sums of up to 32768 terms in two orders: 1e-4 (the reduce_sum test uses the same bound).
    check_close(widened(got), widened(ref), 1e-4, "group_row_sums");
    space.group_row_sums(groups, rows, cols, f, dout.p);  // the same call twice: the same bits
    CHECK(dout.download() == got);
  }
}

TEST_CASE("group_pair_sums matches the host: pairs with no column or a shared one, one or many chunks") {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const moe::host host(1);
  for (const auto& [groups, rows, cols, pairs] :
       {std::tuple{1, 20000, 64, 2}, std::tuple{3, 700, 8, 3}, std::tuple{2, 0, 5, 2}, std::tuple{4, 33, 1, 1}}) {
    const std::size_t n = std::size_t(groups) * std::size_t(rows) * std::size_t(pairs);
    // Columns from random magnitudes in [0.1, 1]: 1 in 9 pairs names no column, every 5th row repeats
    // its first pair's column.
    const auto u = moe_test::random_vector<float>(std::max<std::size_t>(n, 1), 11);
    std::vector<int> column(std::max<std::size_t>(n, 1), -1);
    for (std::size_t i = 0; i < n; ++i) {
      const float a = u[i] < 0 ? -u[i] : u[i];
      column[i] = a < 0.2f ? -1 : std::min(cols - 1, int((a - 0.2f) / 0.8f * float(cols)));
      const std::size_t j = i % std::size_t(pairs);
      if (j != 0 && (i / std::size_t(pairs)) % 5 == 0) column[i] = column[i - j];
    }
    const auto v = moe_test::random_vector<float>(std::max<std::size_t>(n, 1), 12);
    device_vector<int> dcol(column);
    device_vector<float> dv(v), dout(std::vector<float>(std::size_t(groups * cols), -7.0f));
    std::vector<float> ref(std::size_t(groups * cols), -7.0f);
    const int k = pairs;
    const int* hc = column.data();
    const float* hv = v.data();
    host.group_pair_sums(
        groups, rows, cols, k, [=](moe::index_t r, int j) { return moe::index_t(hc[r * k + j]); },
        [=](moe::index_t r, int j) { return hv[r * k + j]; }, ref.data());
    const int* pc = dcol.p;
    const float* pv = dv.p;
    const auto column_of = [=] MOE_LAMBDA(moe::index_t r, int j) -> moe::index_t { return pc[r * k + j]; };
    const auto value_of = [=] MOE_LAMBDA(moe::index_t r, int j) -> float { return pv[r * k + j]; };
    space.group_pair_sums(groups, rows, cols, k, column_of, value_of, dout.p);
    INFO("group_pair_sums groups=", groups, " rows=", rows, " cols=", cols, " pairs=", pairs);
    const std::vector<float> got = dout.download();
    check_close(widened(got), widened(ref), 1e-4, "group_pair_sums");
    space.group_pair_sums(groups, rows, cols, k, column_of, value_of, dout.p);  // the same bits again
    CHECK(dout.download() == got);
  }
}

namespace {

// The dispatchers' row kernels (rows.cuh) against plain loops, at a width that takes 16-byte pieces
// and at widths or offsets that do not.
template <class T>
void row_kernels_case(moe::index_t d, moe::index_t base_offset, double rtol) {
  stream_holder stream;
  const moe::cuda space(stream.s);
  using R = moe::acc_t<T>;
  const int tokens = 37, K = 2, pairs = tokens * K, rows = 90;
  std::mt19937 gen(unsigned(d * 31 + base_offset));
  // Rows: expert of row r (-1 for the tail), its pair or -1 (an empty padded slot).
  std::vector<int> row_expert(rows), row_pair(rows, -1), row_token(rows, -1), pair_row(pairs, -1);
  std::vector<int> order(pairs);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), gen);
  int used = 0;
  for (int r = 0; r < rows; ++r) {
    row_expert[r] = r < 80 ? r / 10 : -1;
    if (r < 80 && r % 7 != 3 && used < pairs - 5) {  // some empty slots, some dropped pairs
      const int p = order[std::size_t(used++)];
      row_pair[r] = p;
      row_token[r] = p / K;
      pair_row[p] = r;
    }
  }
  std::vector<int> offsets(tokens + 1, 0), token_pairs;
  for (int t = 0; t < tokens; ++t) {
    for (int j = 0; j < K; ++j)
      if (pair_row[t * K + j] >= 0) token_pairs.push_back(t * K + j);
    offsets[t + 1] = int(token_pairs.size());
  }
  token_pairs.resize(std::max<std::size_t>(token_pairs.size(), 1));
  const auto x = moe_test::random_vector<T>(std::size_t(base_offset + tokens * d), 21);
  const auto xr = moe_test::random_vector<T>(std::size_t(base_offset + rows * d), 22);
  const auto gate = moe_test::random_vector<R>(std::size_t(pairs), 23);
  const T* hx = x.data() + base_offset;
  const T* hr = xr.data() + base_offset;

  device_vector<int> d_expert(row_expert), d_pair(row_pair), d_token(row_token), d_pair_row(pair_row),
      d_offsets(offsets), d_pairs(token_pairs);
  device_vector<T> dx(x), drows(xr), dxp(std::vector<T>(std::size_t(base_offset + rows * d), T(5.0f))),
      dy(std::vector<T>(std::size_t(base_offset + tokens * d), T(5.0f)));
  device_vector<R> dgate(gate), dacc(std::vector<R>(std::size_t(tokens * d), R(5))), ddots(std::vector<R>(pairs, R(5)));

  // gather, plain and gate-scaled
  for (const bool scaled : {false, true}) {
    space.gather_rows(moe::index_t(rows), d, d_token.p, d_expert.p, d_pair.p, scaled ? dgate.p : nullptr,
                      dx.p + base_offset, dxp.p + base_offset);
    const std::vector<T> got = dxp.download();
    std::vector<double> g, want;
    for (int r = 0; r < rows; ++r)
      for (moe::index_t j = 0; j < d; ++j) {
        const double v = double(moe::widen(got[std::size_t(base_offset + r * d + j)]));
        double w = 5.0;  // rows of no expert: untouched
        if (row_expert[r] >= 0)
          w = row_token[r] < 0 ? 0.0
                               : double(moe::widen(moe::convert<T>(
                                     (scaled ? gate[std::size_t(row_pair[r])] : R(1)) *
                                     R(moe::widen(hx[std::size_t(row_token[r]) * std::size_t(d) + std::size_t(j)])))));
        g.push_back(v);
        want.push_back(w);
      }
    INFO("gather_rows ", std::string(moe::type_name<T>()), " d=", d, " offset=", base_offset, " scaled=", scaled);
    check_close(g, want, 1e-6, "gather_rows");
  }
  // combine into T (gate-weighted) and into R (unweighted: the permute backward)
  space.combine_rows(moe::index_t(tokens), d, d_offsets.p, d_pairs.p, d_pair_row.p, dgate.p, drows.p + base_offset,
                     dy.p + base_offset);
  space.combine_rows(moe::index_t(tokens), d, d_offsets.p, d_pairs.p, d_pair_row.p, static_cast<const R*>(nullptr),
                     drows.p + base_offset, dacc.p);
  const std::vector<T> y = dy.download();
  const std::vector<R> acc = dacc.download();
  std::vector<double> gy, wy, ga, wa;
  for (int t = 0; t < tokens; ++t)
    for (moe::index_t j = 0; j < d; ++j) {
      double sy = 0, sa = 0;
      for (int q = offsets[t]; q < offsets[t + 1]; ++q) {
        const int p = token_pairs[std::size_t(q)];
        const double v = double(moe::widen(hr[std::size_t(pair_row[p]) * std::size_t(d) + std::size_t(j)]));
        sy += double(gate[std::size_t(p)]) * v;
        sa += v;
      }
      gy.push_back(double(moe::widen(y[std::size_t(base_offset + t * d + j)])));
      wy.push_back(sy);
      ga.push_back(double(acc[std::size_t(t * d + j)]));
      wa.push_back(sa);
    }
  INFO("combine_rows ", std::string(moe::type_name<T>()), " d=", d, " offset=", base_offset);
  check_close(gy, wy, rtol, "combine_rows (gated, stored as T)");
  check_close(ga, wa, 1e-5, "combine_rows (unweighted, accumulator type)");
  // gate-gradient dot products; dropped pairs get 0
  space.pair_row_dots(moe::index_t(pairs), K, d, d_pair_row.p, dx.p + base_offset, drows.p + base_offset, ddots.p);
  const std::vector<R> dots = ddots.download();
  std::vector<double> gd, wd;
  for (int p = 0; p < pairs; ++p) {
    double s = 0;
    if (pair_row[p] >= 0)
      for (moe::index_t j = 0; j < d; ++j)
        s += double(moe::widen(hx[std::size_t(p / K) * std::size_t(d) + std::size_t(j)])) *
             double(moe::widen(hr[std::size_t(pair_row[p]) * std::size_t(d) + std::size_t(j)]));
    gd.push_back(double(dots[std::size_t(p)]));
    wd.push_back(s);
  }
  check_close(gd, wd, 1e-5, "pair_row_dots");
  for (int p = 0; p < pairs; ++p)
    if (pair_row[p] < 0) CHECK(dots[std::size_t(p)] == R(0));
}

}  // namespace

TEST_CASE("row kernels (gather, combine, gate dots) match plain loops, 16-byte pieces or not") {
  row_kernels_case<float>(64, 0, 1e-5);
  row_kernels_case<float>(13, 0, 1e-5);       // width not a multiple of 4: one element per piece
  row_kernels_case<float>(64, 1, 1e-5);       // misaligned base: one element per piece
  row_kernels_case<moe::bfloat16>(136, 0, 1e-2);
  row_kernels_case<moe::bfloat16>(136, 3, 1e-2);
  row_kernels_case<moe::float16>(72, 0, 1e-3);
  row_kernels_case<double>(30, 0, 1e-12);
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

TEST_CASE("radix_sort_segment_heads: each segment's head matches the host's") {
  // Expert choice's keys: (segment << 32) | a probability key from 40 values (ties everywhere), 64
  // segments of 1025 pairs, token-major. The host selects each segment's head (more than 2^14
  // pairs, split by segment); the CUDA space sorts whole, which meets the same contract.
  stream_holder stream;
  const moe::cuda space(stream.s);
  const moe::host host(2);
  const int segments = 64, key_bits = 40, head = 16;
  const std::size_t n = std::size_t(segments) * 1025;
  std::mt19937_64 gen(5);
  std::vector<std::uint32_t> pool(40);
  for (auto& p : pool) p = std::uint32_t(gen());
  std::vector<std::uint64_t> keys(n);
  for (std::size_t i = 0; i < n; ++i) keys[i] = (std::uint64_t(i % segments) << 32) | pool[gen() % pool.size()];
  std::vector<int> vals(n);
  for (std::size_t i = 0; i < n; ++i) vals[i] = int(i);
  std::vector<std::uint64_t> host_k(n), sorted_k(n);
  std::vector<int> host_v(n), sorted_v(n);
  std::vector<std::byte> host_scratch(moe::host::radix_sort_scratch_bytes(moe::index_t(n)));
  host.radix_sort_segment_heads(keys.data(), host_k.data(), vals.data(), host_v.data(), moe::index_t(n), key_bits,
                                32, head, host_scratch.data(), host_scratch.size());
  host.radix_sort_pairs(keys.data(), sorted_k.data(), vals.data(), sorted_v.data(), moe::index_t(n), key_bits,
                        host_scratch.data(), host_scratch.size());
  device_vector<std::uint64_t> kin(keys), kout(n);
  device_vector<int> vin(vals), vout(n);
  device_vector<unsigned char> scratch(moe::cuda::radix_sort_scratch_bytes(moe::index_t(n)));
  space.radix_sort_segment_heads(kin.p, kout.p, vin.p, vout.p, moe::index_t(n), key_bits, 32, head, scratch.p,
                                 scratch.n);
  const std::vector<std::uint64_t> device_k = kout.download();
  const std::vector<int> device_v = vout.download();
  CHECK(device_k == sorted_k);  // the CUDA space sorts whole
  CHECK(device_v == sorted_v);
  CHECK(host_v != sorted_v);  // the host did select: its segments' tails are in input order
  bool heads_equal = true;
  for (std::size_t seg = 0; seg < std::size_t(segments); ++seg)
    for (std::size_t j = 0; j < std::size_t(head); ++j) {
      const std::size_t i = seg * 1025 + j;
      heads_equal = heads_equal && device_v[i] == host_v[i] && device_k[i] == host_k[i];
    }
  CHECK(heads_equal);
  CHECK_THROWS_WITH_AS(space.radix_sort_segment_heads(kin.p, kout.p, vin.p, vout.p, moe::index_t(n), key_bits, 41,
                                                      head, scratch.p, scratch.n),
                       doctest::Contains("segment_shift=41"), moe::invalid_argument);
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
  const std::string types = std::string(moe::type_name<TA>()) + "·" + moe::type_name<TB>() + "→" + moe::type_name<TC>();
  INFO("gemm ", types, " opa=", int(opa), " opb=", int(opb), " m=", m, " n=", n, " k=", k, " beta=", beta);
  check_close(widened(dc.download()), widened(c), rtol, "gemm");
}

// aligned: leading dimensions and strides that are multiples of 8 elements, so the tensor-core tile
// stages row-major operands in 16-byte pieces; otherwise odd ones (element by element).
// min_largest_group: the offsets drawn must give some group more rows than this (a case about
// several row tiles states it rather than trusting the draw).
// path: the space's grouped GEMMs (the tiled kernels, or cuBLAS per group with the offsets read on
// the host).
template <class T, class TC>
void grouped_case(moe::op opb, int groups, moe::index_t n, moe::index_t k, double rtol, double beta,
                  bool aligned = false, int min_largest_group = 0,
                  moe::cuda_grouped_gemm path = moe::cuda_grouped_gemm::device_offsets) {
  stream_holder stream;
  const moe::cuda space(stream.s, {.grouped_gemm = path});
  const moe::host host(1);
  const std::vector<int> off = random_offsets(groups, std::uint64_t(groups * 7 + n));
  int largest = 0;
  for (int g = 0; g < groups; ++g) largest = std::max(largest, off[std::size_t(g) + 1] - off[std::size_t(g)]);
  if (min_largest_group > 0) REQUIRE(largest > min_largest_group);
  const moe::index_t pad_a = aligned ? 8 : 1, pad_b = aligned ? 8 : 2, pad_c = aligned ? 8 : 3;
  const moe::index_t rows = off.back(), lda = k + pad_a, ldb = (opb == moe::op::none ? n : k) + pad_b;
  const moe::index_t ldc = n + pad_c, b_stride = (opb == moe::op::none ? k : n) * ldb + (aligned ? 8 : 5);
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
  INFO("grouped_gemm ", std::string(moe::type_name<T>()), " groups=", groups, " rows=", rows, " n=", n, " k=", k,
       " opb=", int(opb), " beta=", beta, " aligned=", aligned, " path=", int(path));
  check_close(widened(dc.download()), widened(c), rtol, "grouped_gemm");

  // Weight gradients: C_g[k, n] = A_gᵀ · B_g over the rows of g (B: [rows, n]); empty groups keep
  // beta · C_g.
  const moe::index_t c_stride = k * ldc + (aligned ? 8 : 7);
  const auto bt = moe_test::random_vector<T>(std::size_t(std::max<moe::index_t>(rows, 1) * ldc), 7);
  auto cg = moe_test::random_vector<TC>(std::size_t(groups * c_stride), 8);
  device_vector<T> dbt(bt);
  device_vector<TC> dcg(cg);
  host.grouped_gemm_tn(groups, off.data(), k, n, Acc(0.5), a.data(), lda, bt.data(), ldc, Acc(beta), cg.data(),
                       c_stride, ldc);
  space.grouped_gemm_tn(groups, doff.p, k, n, Acc(0.5), da.p, lda, dbt.p, ldc, Acc(beta), dcg.p, c_stride, ldc);
  check_close(widened(dcg.download()), widened(cg), rtol, "grouped_gemm_tn");
}

template <class TA, class TB, class TC>
void batched_case(moe::op opa, moe::op opb, int batch, moe::index_t m, moe::index_t n, moe::index_t k, double rtol,
                  double beta) {
  stream_holder stream;
  const moe::cuda space(stream.s);
  const moe::host host(1);
  const moe::index_t lda = (opa == moe::op::none ? k : m) + 1, ldb = (opb == moe::op::none ? n : k) + 2, ldc = n + 3;
  const moe::index_t a_stride = (opa == moe::op::none ? m : k) * lda + 3;
  const moe::index_t b_stride = (opb == moe::op::none ? k : n) * ldb + 1, c_stride = m * ldc + 2;
  const auto a = moe_test::random_vector<TA>(std::size_t(batch * a_stride), 11);
  const auto b = moe_test::random_vector<TB>(std::size_t(batch * b_stride), 12);
  auto c = moe_test::random_vector<TC>(std::size_t(batch * c_stride), 13);
  device_vector<TA> da(a);
  device_vector<TB> db(b);
  device_vector<TC> dc(c);
  using Acc = moe::acc_t<TC>;
  host.batched_gemm(opa, opb, batch, m, n, k, Acc(0.75), a.data(), lda, a_stride, b.data(), ldb, b_stride, Acc(beta),
                    c.data(), ldc, c_stride);
  space.batched_gemm(opa, opb, batch, m, n, k, Acc(0.75), da.p, lda, a_stride, db.p, ldb, b_stride, Acc(beta), dc.p,
                     ldc, c_stride);
  const std::string types = std::string(moe::type_name<TA>()) + "·" + moe::type_name<TB>() + "→" + moe::type_name<TC>();
  INFO("batched_gemm ", types, " opa=", int(opa), " opb=", int(opb), " batch=", batch, " m=", m, " n=", n, " k=", k, " beta=", beta);
  check_close(widened(dc.download()), widened(c), rtol, "batched_gemm");
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

TEST_CASE("batched_gemm matches the host (cuBLAS strided-batched and the per-entry fallback)") {
  using moe::op;
  for (op opa : {op::none, op::transpose})
    for (op opb : {op::none, op::transpose}) {
      batched_case<float, float, float>(opa, opb, 5, 37, 45, 66, 1e-5, 0.5);
      batched_case<moe::bfloat16, moe::bfloat16, moe::bfloat16>(opa, opb, 3, 40, 72, 96, 2e-2, 0.0);
      batched_case<moe::bfloat16, moe::bfloat16, float>(opa, opb, 3, 40, 72, 96, 1e-5, 1.0);
      batched_case<float, moe::bfloat16, float>(opa, opb, 2, 30, 20, 33, 1e-5, 1.0);  // fallback: mixed inputs
    }
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

TEST_CASE("grouped GEMMs through cuBLAS per group (cuda_grouped_gemm::cublas_per_group) match the host") {
  // The same cases as the tiled kernels' (empty first, last and every third group); beta 0.5 takes
  // the scaling of the empty groups' weight gradients, beta 0 their zeroing over random values.
  using moe::op;
  constexpr auto blas = moe::cuda_grouped_gemm::cublas_per_group;
  for (op opb : {op::none, op::transpose}) {
    grouped_case<float, float>(opb, 9, 70, 45, 1e-5, 0.0, false, 0, blas);
    grouped_case<float, float>(opb, 4, 129, 64, 1e-5, 0.5, false, 0, blas);
    grouped_case<double, double>(opb, 6, 33, 20, 1e-12, 1.0, false, 0, blas);
    grouped_case<moe::bfloat16, moe::bfloat16>(opb, 9, 70, 45, 2e-2, 0.0, true, 0, blas);
    grouped_case<moe::float16, float>(opb, 5, 40, 65, 1e-5, 0.5, false, 0, blas);
    grouped_case<float, moe::bfloat16>(opb, 5, 40, 65, 2e-2, 1.0, true, 0, blas);
  }
  grouped_case<float, float>(op::none, 1, 16, 16, 1e-5, 0.0, false, 0, blas);  // one group, which is empty
}

TEST_CASE("cuda_grouped_gemm::cublas_per_group: bad offsets and a captured stream are refused by name") {
  stream_holder stream;
  const moe::cuda space(stream.s, {.grouped_gemm = moe::cuda_grouped_gemm::cublas_per_group});
  CHECK(space.options().grouped_gemm == moe::cuda_grouped_gemm::cublas_per_group);
  const auto a = moe_test::random_vector<float>(64, 1), b = moe_test::random_vector<float>(2 * 64, 2);
  device_vector<float> da(a), db(b), dc(b);  // C: two groups' 8 x 8 weight gradients
  device_vector<int> descending(std::vector<int>{0, 5, 3});
  CHECK_THROWS_WITH_AS(space.grouped_gemm(moe::op::none, 2, descending.p, 8, 8, 1.0f, da.p, 8, db.p, 64, 8, 0.0f,
                                          dc.p, 8),
                       "grouped_gemm: group offsets must ascend from 0 or more: offsets[1]=5, offsets[2]=3",
                       moe::invalid_argument);
  device_vector<int> offsets(std::vector<int>{0, 3, 8});
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  CHECK_THROWS_WITH_AS(space.grouped_gemm_tn(2, offsets.p, 8, 8, 1.0f, da.p, 8, db.p, 8, 0.0f, dc.p, 64, 8),
                       doctest::Contains("cuda_grouped_gemm::cublas_per_group reads the group offsets on the host"),
                       moe::invalid_argument);
  REQUIRE(cudaStreamEndCapture(stream.s, &graph) == cudaSuccess);
  if (graph) cudaGraphDestroy(graph);
}

TEST_CASE("tensor-core grouped GEMMs over several 128 x 128 tiles, 16-byte staging and edges") {
  // A group of more than 128 rows (two row tiles; the draws give 134 and 131), 296 columns (three
  // column tiles, the last partial), depth 72 (two full 32-deep panels and a partial one); aligned
  // operands take the 16-byte staging. Eight groups, not ten: 270 rows instead of 380 (on the kernel
  // emulator under TSan this case took 31 s of CI).
  using moe::op;
  for (op opb : {op::none, op::transpose})
    for (const bool aligned : {true, false}) {
      grouped_case<moe::bfloat16, moe::bfloat16>(opb, 8, 296, 72, 2e-2, 0.0, aligned, 128);
      grouped_case<moe::float16, float>(opb, 7, 136, 40, 1e-5, 1.0, aligned, 128);
    }
}
