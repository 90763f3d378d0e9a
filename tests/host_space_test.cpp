// Tests of the host execution space (moe/host/space.hpp, blas.hpp, thread_pool.hpp) and of the core
// pieces it builds on: workspace_carver, tensor_view, the execution_space concept. Every primitive
// is compared with a plain serial reference (the standard library, or a naive double loop).
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include <moe/core/execution_space.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/workspace.hpp>
#include <moe/host/blas_kernels.hpp>
#include <moe/host/space.hpp>

#if defined(__linux__)
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#endif

static_assert(moe::execution_space<moe::host>);
static_assert(!moe::execution_space<int>);
// A type with most but not all of the members is rejected.
struct not_a_space {
  static constexpr const char* name = "x";
  static constexpr bool host_accessible = true;
  void* allocate(std::size_t) const { return nullptr; }
};
static_assert(!moe::execution_space<not_a_space>);

namespace {

constexpr double nan_d = std::numeric_limits<double>::quiet_NaN();
constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();

// ---- GEMM helpers ------------------------------------------------------------------------------

// A row-major matrix stored with a row stride larger than its width; the padding holds NaN so a
// kernel that reads outside the logical matrix poisons its result.
template <class T>
struct padded_matrix {
  moe::index_t rows, cols, ld;
  std::vector<T> data;
  padded_matrix(moe::index_t r, moe::index_t c, moe::index_t pad, std::mt19937_64& gen)
      : rows(r), cols(c), ld(c + pad), data(std::size_t(std::max<moe::index_t>(r * (c + pad), 1)),
                                             moe::convert<T>(nan_d)) {
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    for (moe::index_t i = 0; i < r; ++i)
      for (moe::index_t j = 0; j < c; ++j) data[std::size_t(i * ld + j)] = moe::convert<T>(dist(gen));
  }
  double at(moe::index_t i, moe::index_t j) const { return double(moe::widen(data[std::size_t(i * ld + j)])); }
};

// op(X)[i][j] of a stored matrix.
template <class T>
double op_at(const padded_matrix<T>& x, moe::op o, moe::index_t i, moe::index_t j) {
  return o == moe::op::none ? x.at(i, j) : x.at(j, i);
}

// Naive C = alpha·op(A)·op(B) + beta·C in double on the widened inputs; also returns the scale
// alpha·Σ|a||b| + |beta·c| of every element, which bounds the rounding error.
template <class TA, class TB, class TC>
void naive_gemm(moe::op opa, moe::op opb, moe::index_t m, moe::index_t n, moe::index_t k, double alpha,
                const padded_matrix<TA>& a, const padded_matrix<TB>& b, double beta, const padded_matrix<TC>& c,
                std::vector<double>& out, std::vector<double>& scale) {
  out.assign(std::size_t(m * n), 0.0);
  scale.assign(std::size_t(m * n), 0.0);
  for (moe::index_t i = 0; i < m; ++i)
    for (moe::index_t j = 0; j < n; ++j) {
      double s = 0, sa = 0;
      for (moe::index_t p = 0; p < k; ++p) {
        const double prod = op_at(a, opa, i, p) * op_at(b, opb, p, j);
        s += prod;
        sa += std::fabs(prod);
      }
      const double prior = beta == 0 ? 0.0 : beta * c.at(i, j);
      out[std::size_t(i * n + j)] = alpha * s + prior;
      scale[std::size_t(i * n + j)] = std::fabs(alpha) * sa + std::fabs(prior);
    }
}

// Relative error bound for accumulating k products in type Acc, with a rounding of the result to TC.
template <class Acc, class TC>
double gemm_tolerance(moe::index_t k) {
  const double eps = std::numeric_limits<Acc>::epsilon();
  double tol = 2.0 * double(k + 2) * eps;
  if constexpr (std::is_same_v<TC, moe::bfloat16>) tol += 0x1p-8;
  if constexpr (std::is_same_v<TC, moe::float16>) tol += 0x1p-11;
  return tol;
}

// Runs `call` (which computes into c) on one shape/op/alpha/beta case and checks it against the
// naive loop; the padding of C must be left untouched.
template <class TA, class TB, class TC, class Call>
void check_gemm_case(moe::op opa, moe::op opb, moe::index_t m, moe::index_t n, moe::index_t k, double alpha,
                     double beta, bool nan_c, std::uint64_t seed, Call&& call) {
  CAPTURE(m);
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(alpha);
  CAPTURE(beta);
  CAPTURE(int(opa));
  CAPTURE(int(opb));
  std::mt19937_64 gen(seed);
  // Stored shapes: A is [m,k] or [k,m]; B is [k,n] or [n,k]; strides exceed the width.
  const padded_matrix<TA> a = opa == moe::op::none ? padded_matrix<TA>(m, k, 3, gen) : padded_matrix<TA>(k, m, 5, gen);
  const padded_matrix<TB> b = opb == moe::op::none ? padded_matrix<TB>(k, n, 2, gen) : padded_matrix<TB>(n, k, 7, gen);
  padded_matrix<TC> c(m, n, 4, gen);
  if (nan_c)
    for (auto& v : c.data) v = moe::convert<TC>(nan_d);
  const std::vector<TC> c_before = c.data;
  std::vector<double> want, scale;
  naive_gemm(opa, opb, m, n, k, alpha, a, b, beta, c, want, scale);

  call(opa, opb, m, n, k, moe::acc_t<TC>(alpha), a.data.data(), a.ld, b.data.data(), b.ld, moe::acc_t<TC>(beta),
       c.data.data(), c.ld);

  using acc = std::conditional_t<std::is_same_v<moe::acc_t<TC>, double>, double, float>;
  const double tol = gemm_tolerance<acc, TC>(k);
  for (moe::index_t i = 0; i < m; ++i) {
    for (moe::index_t j = 0; j < n; ++j) {
      const double got = c.at(i, j), w = want[std::size_t(i * n + j)];
      INFO("C(" << i << ", " << j << ") = " << got << ", want " << w);
      REQUIRE(std::isfinite(got));
      REQUIRE(std::fabs(got - w) <= tol * scale[std::size_t(i * n + j)] + 1e-30);
    }
    for (moe::index_t j = n; j < c.ld; ++j) {  // padding: bit-identical (NaN included)
      const std::size_t at = std::size_t(i * c.ld + j);
      REQUIRE(std::memcmp(&c.data[at], &c_before[at], sizeof(TC)) == 0);
    }
  }
}

struct gemm_shape {
  moe::index_t m, n, k;
};
// Non-square shapes, k both below and above the portable kernel's 256-deep block, and sizes large
// enough for its thread split (m·n·k > 2^15).
constexpr gemm_shape gemm_shapes[] = {{1, 1, 1}, {7, 5, 3}, {5, 9, 17}, {33, 17, 65}, {40, 24, 300}, {3, 70, 520}};
struct alpha_beta {
  double alpha, beta;
};
constexpr alpha_beta gemm_scalars[] = {{1.0, 0.0}, {-0.75, 0.5}, {2.0, 1.0}};
constexpr moe::op ops[] = {moe::op::none, moe::op::transpose};

// Every op combination, shape and alpha/beta, plus beta = 0 over a NaN-filled C.
template <class TA, class TB, class TC, class Call>
void check_gemm_all(Call&& call) {
  std::uint64_t seed = 1;
  for (moe::op opa : ops)
    for (moe::op opb : ops)
      for (const gemm_shape& s : gemm_shapes) {
        for (const alpha_beta& ab : gemm_scalars)
          check_gemm_case<TA, TB, TC>(opa, opb, s.m, s.n, s.k, ab.alpha, ab.beta, false, ++seed, call);
        check_gemm_case<TA, TB, TC>(opa, opb, s.m, s.n, s.k, 1.5, 0.0, true, ++seed, call);
      }
}

// k == 0: C = beta·C (and beta == 0 clears even NaN); m == 0 or n == 0: nothing is written.
template <class TA, class TB, class TC, class Call>
void check_gemm_degenerate(Call&& call) {
  for (moe::op opa : ops)
    for (moe::op opb : ops) {
      check_gemm_case<TA, TB, TC>(opa, opb, 4, 6, 0, 1.0, 0.5, false, 11, call);
      check_gemm_case<TA, TB, TC>(opa, opb, 4, 6, 0, 1.0, 0.0, true, 12, call);
      check_gemm_case<TA, TB, TC>(opa, opb, 0, 6, 5, 1.0, 0.5, false, 13, call);
      check_gemm_case<TA, TB, TC>(opa, opb, 4, 0, 5, 1.0, 0.5, false, 14, call);
    }
}

// Calls through the host space's gemm (CBLAS when available).
struct via_host {
  moe::host space;
  template <class TA, class TB, class TC>
  void operator()(moe::op opa, moe::op opb, moe::index_t m, moe::index_t n, moe::index_t k, moe::acc_t<TC> alpha,
                  const TA* a, moe::index_t lda, const TB* b, moe::index_t ldb, moe::acc_t<TC> beta, TC* c,
                  moe::index_t ldc) const {
    space.gemm(opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
};

// Calls the portable kernel directly, with or without a pool.
struct via_portable {
  moe::detail::thread_pool* pool;
  template <class TA, class TB, class TC>
  void operator()(moe::op opa, moe::op opb, moe::index_t m, moe::index_t n, moe::index_t k, moe::acc_t<TC> alpha,
                  const TA* a, moe::index_t lda, const TB* b, moe::index_t ldb, moe::acc_t<TC> beta, TC* c,
                  moe::index_t ldc) const {
    moe::detail::gemm_portable(pool, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
};

template <class T>
std::vector<T> random_values(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = moe::convert<T>(dist(gen));
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

// ---- memory ------------------------------------------------------------------------------------

TEST_CASE("host: allocate is 256-byte aligned; copy and fill_zero move the bytes") {
  const moe::host h(1);
  CHECK(h.allocate(0) == nullptr);
  h.deallocate(nullptr, 0);
  for (std::size_t bytes : {1u, 100u, 4096u, 100000u}) {
    void* p = h.allocate(bytes);
    REQUIRE(p != nullptr);
    CHECK(reinterpret_cast<std::uintptr_t>(p) % moe::workspace_alignment == 0);
    h.deallocate(p, bytes);
  }
  // From huge_page_bytes (2 MiB) on, buffers start on a 2 MiB boundary (huge-page advice on Linux)
  // and hold what is written to them; sizes on either side of the threshold free correctly.
  for (std::size_t bytes : {moe::host::huge_page_bytes - 1, moe::host::huge_page_bytes, std::size_t(5) << 20}) {
    CAPTURE(bytes);
    auto* p = static_cast<unsigned char*>(h.allocate(bytes));
    REQUIRE(p != nullptr);
    const std::size_t want = bytes < moe::host::huge_page_bytes ? moe::workspace_alignment : moe::host::huge_page_bytes;
    CHECK(reinterpret_cast<std::uintptr_t>(p) % want == 0);
    for (std::size_t i = 0; i < bytes; i += 4093) p[i] = static_cast<unsigned char>(i * 7);
    p[bytes - 1] = 0xab;
    bool same = p[bytes - 1] == 0xab;
    for (std::size_t i = 0; i + 1 < bytes; i += 4093) same = same && p[i] == static_cast<unsigned char>(i * 7);
    CHECK(same);
    h.deallocate(p, bytes);
  }
  // $MOE_HUGE_PAGES: 0 or 1 (the advice only: the alignment stays); anything else is named.
  {
    const char* saved = std::getenv("MOE_HUGE_PAGES");
    const std::string saved_value = saved ? saved : "";
    for (const char* value : {"0", "1"}) {
      ::setenv("MOE_HUGE_PAGES", value, 1);
      void* p = h.allocate(moe::host::huge_page_bytes);
      CHECK(reinterpret_cast<std::uintptr_t>(p) % moe::host::huge_page_bytes == 0);
      h.deallocate(p, moe::host::huge_page_bytes);
    }
    ::setenv("MOE_HUGE_PAGES", "yes", 1);
    CHECK_THROWS_WITH_AS(h.allocate(moe::host::huge_page_bytes),
                         doctest::Contains("MOE_HUGE_PAGES: 'yes' is neither 0 nor 1"), moe::invalid_argument);
    CHECK_NOTHROW(h.deallocate(h.allocate(4096), 4096));  // small buffers never ask
    if (saved)
      ::setenv("MOE_HUGE_PAGES", saved_value.c_str(), 1);
    else
      ::unsetenv("MOE_HUGE_PAGES");
  }
  std::vector<int> src(1000), dst(1000, -1), back(1000, -1);
  std::iota(src.begin(), src.end(), 7);
  h.copy_from_host(dst.data(), src.data(), src.size() * sizeof(int));
  CHECK(dst == src);
  h.copy_to_host(back.data(), dst.data(), dst.size() * sizeof(int));
  CHECK(back == src);
  h.copy(dst.data() + 1, dst.data(), 10 * sizeof(int));  // overlapping: memmove semantics
  CHECK(dst[1] == 7);
  CHECK(dst[10] == 16);
  CHECK(dst[11] == 18);
  h.fill_zero(dst.data() + 5, 3 * sizeof(int));
  CHECK(dst[4] == src[3]);
  CHECK((dst[5] == 0 && dst[6] == 0 && dst[7] == 0));
  CHECK(dst[8] != 0);
  h.copy(nullptr, nullptr, 0);
  h.fill_zero(nullptr, 0);
  h.synchronize();
  CHECK(std::string(moe::host::name) == "host");
  CHECK(moe::host::host_accessible);
}

TEST_CASE("huge pages: $MOE_HUGE_PAGES decides, else no advice on a guest that reports free pages") {
  // The balloon's feature string: bit 5 (VIRTIO_BALLOON_F_REPORTING), counted from the first char.
  CHECK(moe::detail::balloon_reports_free_pages("01100101000000000000000000000000100000000000"));
  CHECK_FALSE(moe::detail::balloon_reports_free_pages("01100001000000000000000000000000100000000000"));
  CHECK_FALSE(moe::detail::balloon_reports_free_pages("11111"));  // too short to have bit 5
  CHECK_FALSE(moe::detail::balloon_reports_free_pages(""));
  for (const bool reporting : {false, true}) {
    CAPTURE(reporting);
    CHECK(moe::detail::choose_huge_pages("1", reporting).advised);
    CHECK_FALSE(moe::detail::choose_huge_pages("0", reporting).advised);
    CHECK(std::string(moe::detail::choose_huge_pages("1", reporting).reason).find("MOE_HUGE_PAGES=1") !=
          std::string::npos);
    CHECK_THROWS_WITH_AS(moe::detail::choose_huge_pages("on", reporting),
                         doctest::Contains("MOE_HUGE_PAGES: 'on' is neither 0 nor 1"), moe::invalid_argument);
    CHECK_THROWS_AS(moe::detail::choose_huge_pages("", reporting), moe::invalid_argument);
  }
  CHECK(moe::detail::choose_huge_pages(nullptr, false).advised);
  const moe::huge_page_choice guest = moe::detail::choose_huge_pages(nullptr, true);
  CHECK_FALSE(guest.advised);
  CHECK(std::string(guest.reason).find("free page reporting") != std::string::npos);
  // The live choice: this machine's answer, wired through the environment variable.
  const char* saved = std::getenv("MOE_HUGE_PAGES");
  const std::string saved_value = saved ? saved : "";
  ::unsetenv("MOE_HUGE_PAGES");
  CHECK(moe::host_huge_pages().advised == !moe::detail::free_page_reporting_active());
  ::setenv("MOE_HUGE_PAGES", "1", 1);
  CHECK(moe::host_huge_pages().advised);
  ::setenv("MOE_HUGE_PAGES", "0", 1);
  CHECK_FALSE(moe::host_huge_pages().advised);
  if (saved)
    ::setenv("MOE_HUGE_PAGES", saved_value.c_str(), 1);
  else
    ::unsetenv("MOE_HUGE_PAGES");
  MESSAGE("this machine: huge pages ", std::string(moe::host_huge_pages().reason));
}

TEST_CASE("host: thread counts, and threads < 1 is rejected") {
  CHECK(moe::host(1).threads() == 1);
  CHECK(moe::host(3).threads() == 3);
  CHECK(moe::host().threads() >= 1);
  CHECK_THROWS_AS(moe::host(0), moe::invalid_argument);
  CHECK_THROWS_AS(moe::host(-2), moe::invalid_argument);
  // Copies share the pool.
  const moe::host a(2);
  const moe::host b = a;
  CHECK(b.threads() == 2);
}

// ---- available CPUs (cpus.hpp) -------------------------------------------------------------------

TEST_CASE("cpus: cgroup quota text becomes a CPU count, rounded up; no limit or bad text is 0") {
  using moe::detail::cpus_from_cpu_max;
  CHECK(cpus_from_cpu_max("max 100000\n") == 0);
  CHECK(cpus_from_cpu_max("200000 100000\n") == 2);
  CHECK(cpus_from_cpu_max("150000 100000") == 2);
  CHECK(cpus_from_cpu_max("50000 100000") == 1);
  CHECK(cpus_from_cpu_max("1000 100000") == 1);
  CHECK(cpus_from_cpu_max("400000 50000") == 8);
  for (const char* bad : {"", "100000", "abc 100000", "100000 abc", "12x 100000", "0 100000", "100 0",
                          "100000 100000 7"}) {
    CAPTURE(bad);
    CHECK(cpus_from_cpu_max(bad) == 0);
  }
  CHECK(moe::detail::cpus_from_quota(-1, 100000) == 0);  // cgroup v1's "no limit"
  CHECK(moe::detail::cpus_from_quota(250000, 100000) == 3);
}

namespace {
// A scratch directory standing in for /sys/fs/cgroup; removed at the end of its scope.
struct fake_cgroup_root {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("moe-cgroup-test-" + std::to_string(std::random_device{}()));
  fake_cgroup_root() { std::filesystem::create_directories(dir); }
  ~fake_cgroup_root() { std::filesystem::remove_all(dir); }
  void write(const std::string& relative, const std::string& text) const {
    const auto path = dir / relative;
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path) << text;
  }
  std::string root() const { return dir.string(); }
};
}  // namespace

TEST_CASE("cpus: the smallest cgroup CPU quota on the path to the root caps the count") {
  using moe::detail::cgroup_cpu_cap;
  SUBCASE("cgroup v2: a child's quota below its parent's wins, and a parent's below its child's") {
    const fake_cgroup_root fs;
    fs.write("cpu.max", "max 100000\n");
    fs.write("kubepods/pod1/cpu.max", "400000 100000\n");
    fs.write("kubepods/pod1/app/cpu.max", "max 100000\n");
    CHECK(cgroup_cpu_cap(fs.root(), "0::/kubepods/pod1/app\n") == 4);
    fs.write("kubepods/pod1/app/cpu.max", "150000 100000\n");
    CHECK(cgroup_cpu_cap(fs.root(), "0::/kubepods/pod1/app\n") == 2);
    fs.write("kubepods/cpu.max", "100000 100000\n");
    CHECK(cgroup_cpu_cap(fs.root(), "0::/kubepods/pod1/app\n") == 1);
  }
  SUBCASE("cgroup v2 in a container: its own cgroup is mounted at the root") {
    const fake_cgroup_root fs;
    fs.write("cpu.max", "300000 100000\n");
    CHECK(cgroup_cpu_cap(fs.root(), "0::/\n") == 3);
    // /proc/self/cgroup may still name the host's path, which does not exist in the container.
    CHECK(cgroup_cpu_cap(fs.root(), "0::/system.slice/docker-1234.scope\n") == 3);
  }
  SUBCASE("cgroup v1: quota and period of the cpu controller, -1 meaning no limit") {
    const fake_cgroup_root fs;
    fs.write("cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    fs.write("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    fs.write("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n");
    fs.write("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    const std::string cgroups = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n";
    CHECK(cgroup_cpu_cap(fs.root(), cgroups) == 3);
    CHECK(cgroup_cpu_cap(fs.root(), "4:cpu,cpuacct:/other\n") == 0);  // only the root, unlimited
    CHECK(cgroup_cpu_cap(fs.root(), "12:memory:/docker/abc\n") == 0);  // no cpu controller line
    CHECK(cgroup_cpu_cap(fs.root(), "4:cpuacct:/docker/abc\n") == 0);  // cpuacct is not cpu
  }
  SUBCASE("no cgroup files, and lines that are not cgroup lines, give no cap") {
    const fake_cgroup_root fs;
    CHECK(cgroup_cpu_cap(fs.root(), "0::/\n") == 0);
    CHECK(cgroup_cpu_cap(fs.root(), "") == 0);
    CHECK(cgroup_cpu_cap(fs.root(), "garbage\n:\n") == 0);
    fs.write("cpu.max", "not a quota\n");
    CHECK(cgroup_cpu_cap(fs.root(), "0::/\n") == 0);
  }
}

TEST_CASE("cpus: the count follows the affinity mask, and a pool polls only when it fits in it") {
  const int cpus = moe::host::available_cpus();
  CHECK(cpus >= 1);
  if (std::thread::hardware_concurrency() > 0) CHECK(unsigned(cpus) <= std::thread::hardware_concurrency());
  const char* spin = std::getenv("MOE_SPIN_US");
  const bool polling_on = spin == nullptr || std::string(spin) != "0";
  CHECK(moe::detail::thread_pool(cpus).polls() == polling_on);
  CHECK_FALSE(moe::detail::thread_pool(cpus + 1).polls());
#if defined(__linux__)
  // A thread pinned to one CPU (as taskset -c 0 would pin a process) sees one CPU, and a
  // two-thread pool made there does not poll.
  int seen = 0;
  bool pool_polls = true;
  std::thread pinned([&] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    if (pthread_setaffinity_np(pthread_self(), sizeof one, &one) != 0) return;
    seen = moe::host::available_cpus();
    pool_polls = moe::detail::thread_pool(2).polls();
  });
  pinned.join();
  CHECK(seen == 1);
  CHECK_FALSE(pool_polls);
#endif
}

// ---- scans and histograms ----------------------------------------------------------------------

TEST_CASE("host: exclusive_scan and offsets_from_counts match std::exclusive_scan") {
  const moe::host h(2);
  std::mt19937 gen(3);
  for (int n : {0, 1, 2, 17, 1000, 65537}) {
    CAPTURE(n);
    std::vector<int> in(static_cast<std::size_t>(n));
    for (auto& v : in) v = int(gen() % 100);
    std::vector<int> want(static_cast<std::size_t>(n));
    std::exclusive_scan(in.begin(), in.end(), want.begin(), 0);

    std::vector<int> out(std::size_t(n), -1);
    h.exclusive_scan(in.data(), out.data(), n);
    CHECK(out == want);
    std::vector<int> inplace = in;  // out may alias in
    h.exclusive_scan(inplace.data(), inplace.data(), n);
    CHECK(inplace == want);

    std::vector<int> offsets(std::size_t(n) + 1, -1);
    h.offsets_from_counts(in.data(), offsets.data(), n);
    CHECK(std::equal(want.begin(), want.end(), offsets.begin()));
    CHECK(offsets[std::size_t(n)] == std::accumulate(in.begin(), in.end(), 0));

    // 64-bit element type too.
    std::vector<std::int64_t> in64(in.begin(), in.end()), out64(static_cast<std::size_t>(n));
    for (auto& v : in64) v *= 1'000'000'007;
    std::vector<std::int64_t> want64(static_cast<std::size_t>(n));
    std::exclusive_scan(in64.begin(), in64.end(), want64.begin(), std::int64_t(0));
    h.exclusive_scan(in64.data(), out64.data(), n);
    CHECK(out64 == want64);
  }
}

TEST_CASE("host: histogram counts keys in [0, bins) and ignores the rest") {
  const moe::host h(2);
  std::mt19937 gen(5);
  const int bins = 13;
  std::vector<int> keys(20000);
  std::vector<int> want(bins, 0);
  for (auto& k : keys) {
    k = int(gen() % 40) - 10;  // -10 .. 29: about two thirds out of range
    if (k >= 0 && k < bins) ++want[std::size_t(k)];
  }
  keys[0] = std::numeric_limits<int>::min();
  keys[1] = std::numeric_limits<int>::max();
  keys[2] = bins;
  keys[3] = -1;
  want.assign(bins, 0);
  for (int k : keys)
    if (k >= 0 && k < bins) ++want[std::size_t(k)];
  std::vector<int> counts(bins, 12345);  // stale values must be overwritten
  h.histogram(keys.data(), moe::index_t(keys.size()), counts.data(), bins);
  CHECK(counts == want);
  CHECK(std::accumulate(counts.begin(), counts.end(), 0) > 0);
  h.histogram(keys.data(), 0, counts.data(), bins);
  CHECK(counts == std::vector<int>(bins, 0));
}

// ---- reduce_sum ----------------------------------------------------------------------------------

// The order reduce_sum documents, written out on its own: blocks of 1024; in a block, lane j of 8 adds
// elements j, j + 8, … in turn, and the lanes are added pairwise; block sums are added in adjacent
// pairs, level by level, an odd last one moving up as it is.
template <class T>
T documented_sum(const std::vector<T>& x) {
  std::vector<T> level;
  for (std::size_t b = 0; b < x.size(); b += 1024) {
    T lane[8] = {};
    for (std::size_t i = b; i < std::min(x.size(), b + 1024); ++i) lane[(i - b) % 8] += x[i];
    level.push_back(((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7])));
  }
  if (level.empty()) return T(0);
  while (level.size() > 1) {
    std::vector<T> up;
    for (std::size_t k = 0; k + 1 < level.size(); k += 2) up.push_back(level[k] + level[k + 1]);
    if (level.size() % 2) up.push_back(level.back());
    level = up;
  }
  return level[0];
}

template <class T>
void check_reduce_sum_order() {
  std::mt19937 gen(17);
  std::uniform_real_distribution<double> value(-1.0, 1.0);
  bool order_mattered = false;  // the data tells this order from a running sum somewhere
  for (const moe::index_t n : {0, 1, 5, 8, 13, 1023, 1024, 1025, 3000, 65536 + 17, 300000}) {
    std::vector<T> x(static_cast<std::size_t>(n));
    for (auto& v : x) v = T(value(gen));
    const T want = documented_sum(x);
    T running = T(0);
    for (T v : x) running += v;
    order_mattered = order_mattered || running != want;
    for (const int threads : {1, 2, 3}) {
      CAPTURE(n);
      CAPTURE(threads);
      T got = T(12345);  // stale: must be overwritten, also for n = 0
      moe::host(threads).reduce_sum(x.data(), n, &got);
      CHECK(std::memcmp(&got, &want, sizeof(T)) == 0);
    }
  }
  CHECK(order_mattered);
}

TEST_CASE("host: reduce_sum adds in its documented order, the same bits on any thread count") {
  check_reduce_sum_order<float>();
  check_reduce_sum_order<double>();
}

TEST_CASE("host: reduce_sum of a million floats is within a few ulps, where a running sum is not") {
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> value(0.5f, 1.5f);
  std::vector<float> x(std::size_t(1) << 20);
  double exact = 0.0;  // exact: multiples of 2^-24 below 2^21
  float running = 0.0f;
  for (auto& v : x) {
    v = value(gen);
    exact += double(v);
    running += v;
  }
  float got = 0.0f;
  moe::host(2).reduce_sum(x.data(), moe::index_t(x.size()), &got);
  const double error = std::fabs(double(got) - exact) / exact;
  const double running_error = std::fabs(double(running) - exact) / exact;
  CAPTURE(error);
  CAPTURE(running_error);
  CHECK(error < 4e-7);          // a few float ulps (2^-23 = 1.2e-7)
  CHECK(running_error > 1e-5);  // what summing in index order gave
}

// ---- radix sort --------------------------------------------------------------------------------

TEST_CASE("host: radix_sort_pairs is a stable sort equal to std::stable_sort on the low key_bits") {
  // Key families: `pooled` (most keys from 37 values, the rest arbitrary), `sparse` (bytes 1 to 3
  // the same in every key: those passes are skipped, two or one left), `equal` (one key: no pass),
  // `proposals` (expert choice's: (expert << 32) | a descending probability key, token-major, 64
  // experts: parts of a power-of-two size, keys differing in 32 bits within a part: the packed sort),
  // `skewed` (nine keys in ten share every bit from bit 32 up: a part too large for the cache, split
  // again). From 2^14 pairs with two digits or more the array is split by its top digit and the
  // parts sorted side by side; from 2^18 pairs a pass over the whole array buffers its stores; from
  // 2^20 its passes are split over the threads: two chunks at 1048583 pairs on two threads, three at
  // 1600003 on three.
  enum class family { pooled, sparse, equal, proposals, skewed };
  struct sort_case {
    int threads;
    moe::index_t n;
    std::vector<int> key_bits;
  };
  const std::vector<int> every_width{0, 1, 8, 20, 33, 40, 64};
  const std::vector<sort_case> cases{{2, 0, every_width},       {2, 1, every_width}, {2, 1000, every_width},
                                     {2, 100003, every_width},  {1, 100003, {33, 64}},
                                     {1, 300007, {40, 64}},     {2, 1048583, {20, 40, 64}},
                                     {3, 1600003, {40}}};
  std::mt19937_64 gen(99);
  for (const sort_case& sc : cases) {
    const moe::host h(sc.threads);
    const moe::index_t n = sc.n;
    for (const int key_bits : sc.key_bits) {
      const std::uint64_t mask = key_bits == 64 ? ~0ull : (1ull << key_bits) - 1;
      for (const family fam : {family::pooled, family::sparse, family::equal, family::proposals, family::skewed}) {
        for (bool garbage_above : {false, true}) {
          if (garbage_above && key_bits == 64) continue;
          CAPTURE(sc.threads);
          CAPTURE(key_bits);
          CAPTURE(n);
          CAPTURE(int(fam));
          CAPTURE(garbage_above);
          std::vector<std::uint64_t> pool(37);
          for (auto& p : pool) p = gen() & mask;
          const std::uint64_t one = gen() & mask;
          std::vector<std::uint64_t> keys(static_cast<std::size_t>(n));
          std::uniform_real_distribution<float> probability(0.0f, 1.0f);
          for (std::size_t i = 0; i < keys.size(); ++i) {
            std::uint64_t& k = keys[i];
            if (fam == family::pooled)
              k = (gen() % 4 != 0) ? pool[gen() % pool.size()] : (gen() & mask);
            else if (fam == family::sparse)
              k = ((gen() & 0xffull) | (0x5a00ull) | ((gen() & 0xffull) << 32)) & mask;
            else if (fam == family::proposals)
              k = ((std::uint64_t(i % 64) << 32) | ~moe::detail::float_bits(probability(gen))) & mask;
            else if (fam == family::skewed)
              k = (gen() % 10 != 0 ? (0x3ull << 40) | (gen() & 0xffffffffull) : gen()) & mask;
            else
              k = one;
            if (garbage_above) k |= gen() & ~mask;  // bits the sort must ignore
          }
          std::vector<int> values(static_cast<std::size_t>(n));
          std::iota(values.begin(), values.end(), 0);
          const auto keys_copy = keys;
          const auto values_copy = values;

          std::vector<int> order(values);
          std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
            return (keys[std::size_t(x)] & mask) < (keys[std::size_t(y)] & mask);
          });
          std::vector<std::uint64_t> want_keys(static_cast<std::size_t>(n));
          for (std::size_t i = 0; i < order.size(); ++i) want_keys[i] = keys[std::size_t(order[i])];

          std::vector<std::uint64_t> keys_out(std::size_t(n), 0xdeadull);
          std::vector<int> values_out(std::size_t(n), -1);
          const std::size_t scratch_bytes = moe::host::radix_sort_scratch_bytes(n);
          void* scratch = h.allocate(scratch_bytes);
          h.radix_sort_pairs(keys.data(), keys_out.data(), values.data(), values_out.data(), n, key_bits, scratch,
                             scratch_bytes);
          h.deallocate(scratch, scratch_bytes);
          CHECK(values_out == order);    // stability: equal keys keep their input order
          CHECK(keys_out == want_keys);  // keys travel whole, high bits included
          CHECK(keys == keys_copy);      // inputs untouched
          CHECK(values == values_copy);
        }
      }
    }
  }
}

TEST_CASE("host: radix_sort_segment_heads orders each segment's first `head` pairs as a stable sort does") {
  // A segment is the keys' low key_bits from segment_shift up. Families: `proposals` (expert
  // choice's: segment i % segments, token-major, a descending probability key drawn from 50 values
  // so that ties are everywhere), `scattered` (random segments of uneven sizes, low bits from a pool
  // of 37 or arbitrary), `one` (every key in segment 5: the whole array is one segment). Sizes take
  // the in-cache LSD sort (1000), the split by segment with parts selected (100003 and up; 2
  // segment digits when segments > 256), a buffered split (300007) and chunked passes (1048583).
  enum class family { proposals, scattered, one };
  struct heads_case {
    int threads;
    moe::index_t n;
    int key_bits, segment_shift, segments;
  };
  const std::vector<heads_case> cases{{2, 1000, 40, 32, 8},      {2, 100003, 40, 32, 64},  {2, 100003, 42, 32, 700},
                                      {1, 300007, 41, 32, 256},  {2, 100003, 30, 20, 40},  {3, 100003, 64, 48, 300},
                                      {2, 1048583, 40, 32, 256}};
  std::mt19937_64 gen(7);
  for (const heads_case& hc : cases) {
    const moe::index_t n = hc.n;
    const std::uint64_t mask = hc.key_bits == 64 ? ~0ull : (1ull << hc.key_bits) - 1;
    const std::uint64_t low_mask = (1ull << hc.segment_shift) - 1;
    for (const family fam : {family::proposals, family::scattered, family::one}) {
      std::vector<std::uint64_t> probability_pool(50), pool(37);
      std::uniform_real_distribution<float> probability(0.0f, 1.0f);
      for (auto& p : probability_pool) p = ~moe::detail::float_bits(probability(gen)) & low_mask;
      for (auto& p : pool) p = gen() & low_mask;
      std::vector<std::uint64_t> keys(static_cast<std::size_t>(n));
      for (std::size_t i = 0; i < keys.size(); ++i) {
        std::uint64_t segment = 0, low = 0;
        if (fam == family::proposals) {
          segment = i % std::size_t(hc.segments);
          low = probability_pool[gen() % probability_pool.size()];
        } else if (fam == family::scattered) {
          segment = gen() % std::uint64_t(hc.segments) % (gen() % 3 == 0 ? 7 : std::uint64_t(hc.segments));
          low = gen() % 2 ? pool[gen() % pool.size()] : gen() & low_mask;
        } else {
          segment = 5;
          low = pool[gen() % pool.size()];
        }
        keys[i] = (segment << hc.segment_shift) | low;
        if (hc.key_bits < 64) keys[i] |= gen() & ~mask;  // bits the sort must ignore
      }
      std::vector<int> values(static_cast<std::size_t>(n));
      std::iota(values.begin(), values.end(), 0);
      const auto keys_copy = keys;
      const auto values_copy = values;
      const auto segment_of = [&](std::uint64_t k) { return (k & mask) >> hc.segment_shift; };
      std::vector<int> order(values);
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
        return (keys[std::size_t(x)] & mask) < (keys[std::size_t(y)] & mask);
      });
      for (const moe::index_t head : {moe::index_t(0), moe::index_t(1), moe::index_t(16), moe::index_t(300), n}) {
        CAPTURE(hc.threads);
        CAPTURE(n);
        CAPTURE(hc.key_bits);
        CAPTURE(hc.segment_shift);
        CAPTURE(hc.segments);
        CAPTURE(int(fam));
        CAPTURE(head);
        std::vector<std::uint64_t> first_keys;
        std::vector<int> first_values;
        for (const int threads : {1, hc.threads}) {
          const moe::host h(threads);
          std::vector<std::uint64_t> keys_out(std::size_t(n), 0xdeadull);
          std::vector<int> values_out(std::size_t(n), -1);
          const std::size_t scratch_bytes = moe::host::radix_sort_scratch_bytes(n);
          void* scratch = h.allocate(scratch_bytes);
          h.radix_sort_segment_heads(keys.data(), keys_out.data(), values.data(), values_out.data(), n, hc.key_bits,
                                     hc.segment_shift, head, scratch, scratch_bytes);
          h.deallocate(scratch, scratch_bytes);
          REQUIRE(keys == keys_copy);  // inputs untouched
          REQUIRE(values == values_copy);
          if (threads == 1) {
            first_keys = keys_out;
            first_values = values_out;
          } else {
            CHECK(keys_out == first_keys);  // the same on any thread count
            CHECK(values_out == first_values);
          }
          // Every pair once, its key with it; segments ascending, in the reference's segment sizes.
          std::vector<int> seen(values_out);
          std::sort(seen.begin(), seen.end());
          REQUIRE(seen == values);
          bool keys_travel = true, grouped = true, heads_equal = true;
          for (std::size_t i = 0; i < std::size_t(n); ++i) {
            keys_travel = keys_travel && keys_out[i] == keys[std::size_t(values_out[i])];
            grouped = grouped && segment_of(keys_out[i]) == segment_of(keys[std::size_t(order[i])]);
          }
          // Each segment's first min(head, size) pairs are the stable sort's.
          for (std::size_t b = 0; b < std::size_t(n);) {
            std::size_t e = b;
            while (e < std::size_t(n) && segment_of(keys[std::size_t(order[e])]) ==
                                             segment_of(keys[std::size_t(order[b])]))
              ++e;
            for (std::size_t i = b; i < std::min(e, b + std::size_t(head)); ++i)
              heads_equal = heads_equal && values_out[i] == order[i];
            b = e;
          }
          CHECK(keys_travel);
          CHECK(grouped);
          CHECK(heads_equal);
        }
      }
    }
  }
}

TEST_CASE("host: radix_sort_segment_heads rejects bad segment_shift, head and scratch") {
  const moe::host h(1);
  const moe::index_t n = 100;
  std::vector<std::uint64_t> keys(std::size_t(n), 1), keys_out(static_cast<std::size_t>(n));
  std::vector<int> values(std::size_t(n), 0), values_out(static_cast<std::size_t>(n));
  const std::size_t need = moe::host::radix_sort_scratch_bytes(n);
  void* scratch = h.allocate(need);
  const auto call = [&](int key_bits, int segment_shift, moe::index_t head, std::size_t bytes) {
    h.radix_sort_segment_heads(keys.data(), keys_out.data(), values.data(), values_out.data(), n, key_bits,
                               segment_shift, head, scratch, bytes);
  };
  CHECK_THROWS_WITH_AS(call(40, 41, 4, need), doctest::Contains("segment_shift=41"), moe::invalid_argument);
  CHECK_THROWS_WITH_AS(call(40, -1, 4, need), doctest::Contains("segment_shift=-1"), moe::invalid_argument);
  CHECK_THROWS_WITH_AS(call(40, 32, -2, need), doctest::Contains("head=-2"), moe::invalid_argument);
  CHECK_THROWS_WITH_AS(call(65, 32, 4, need), doctest::Contains("key_bits=65"), moe::invalid_argument);
  CHECK_THROWS_WITH_AS(call(40, 32, 4, need - 1), doctest::Contains("scratch"), moe::invalid_argument);
  CHECK_NOTHROW(call(40, 32, 4, need));
  CHECK_NOTHROW(call(40, 40, 0, need));
  h.deallocate(scratch, need);
}

TEST_CASE("host: radix_sort_pairs rejects too little scratch and bad key_bits") {
  const moe::host h(1);
  const moe::index_t n = 1000;
  std::vector<std::uint64_t> keys(std::size_t(n), 1), keys_out(static_cast<std::size_t>(n));
  std::vector<int> values(std::size_t(n), 0), values_out(static_cast<std::size_t>(n));
  const std::size_t need = moe::host::radix_sort_scratch_bytes(n);
  CHECK(need >= std::size_t(n) * (sizeof(std::uint64_t) + sizeof(int)));
  std::vector<std::byte> scratch(need + moe::workspace_alignment);
  void* aligned = scratch.data() + (moe::workspace_alignment -
                                    reinterpret_cast<std::uintptr_t>(scratch.data()) % moe::workspace_alignment);
  CHECK_THROWS_AS(h.radix_sort_pairs(keys.data(), keys_out.data(), values.data(), values_out.data(), n, 64, aligned,
                                     need - 1),
                  moe::invalid_argument);
  CHECK_THROWS_WITH_AS(h.radix_sort_pairs(keys.data(), keys_out.data(), values.data(), values_out.data(), n, 64,
                                          nullptr, 0),
                       doctest::Contains("radix_sort_pairs"), moe::invalid_argument);
  CHECK_THROWS_AS(h.radix_sort_pairs(keys.data(), keys_out.data(), values.data(), values_out.data(), n, 65, aligned,
                                     need),
                  moe::invalid_argument);
  CHECK_THROWS_AS(h.radix_sort_pairs(keys.data(), keys_out.data(), values.data(), values_out.data(), n, -1, aligned,
                                     need),
                  moe::invalid_argument);
  CHECK_NOTHROW(h.radix_sort_pairs(keys.data(), keys_out.data(), values.data(), values_out.data(), n, 64, aligned,
                                   need));
  // n = 0 needs no scratch at all.
  CHECK(moe::host::radix_sort_scratch_bytes(0) == 0);
  CHECK_NOTHROW(h.radix_sort_pairs(keys.data(), keys_out.data(), values.data(), values_out.data(), 0, 64, nullptr, 0));
}

// ---- check_finite --------------------------------------------------------------------------------

TEST_CASE("host: check_finite names the first non-finite element") {
  const moe::host h(1);
  std::vector<float> x(12, 1.0f);
  CHECK_NOTHROW(h.check_finite(x.data(), 3, 4, "router logits", "token", "expert"));
  x[7] = std::numeric_limits<float>::infinity();
  x[9] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH_AS(h.check_finite(x.data(), 3, 4, "router logits", "token", "expert"),
                       "router logits: non-finite value inf at token 1, expert 3", moe::numeric_error);
  std::vector<moe::bfloat16> b(6, moe::bfloat16(2.0f));
  b[4] = moe::bfloat16(std::numeric_limits<float>::quiet_NaN());
  CHECK_THROWS_AS(h.check_finite(b.data(), 2, 3, "x", "row", "col"), moe::numeric_error);
}

TEST_CASE("host: check_finite over the pool's threads still names the first non-finite element") {
  // 1000 × 256 elements: scanned in chunks from 65536 elements on a pool of several threads.
  const moe::index_t rows = 1000, cols = 256;
  for (const int threads : {1, 2, 3}) {
    CAPTURE(threads);
    const moe::host h(threads);
    std::vector<float> x(std::size_t(rows * cols), 0.5f);
    CHECK_NOTHROW(h.check_finite(x.data(), rows, cols, "router logits", "token", "expert"));
    x.back() = std::numeric_limits<float>::quiet_NaN();  // the last element of the last chunk
    CHECK_THROWS_WITH_AS(h.check_finite(x.data(), rows, cols, "router logits", "token", "expert"),
                         "router logits: non-finite value nan at token 999, expert 255", moe::numeric_error);
    // One in a late chunk, and an earlier one in a middle chunk: the earlier is named.
    x[std::size_t(900 * cols + 3)] = std::numeric_limits<float>::infinity();
    x[std::size_t(420 * cols + 17)] = -std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH_AS(h.check_finite(x.data(), rows, cols, "router logits", "token", "expert"),
                         "router logits: non-finite value -inf at token 420, expert 17", moe::numeric_error);
  }
}

// ---- parallel_for --------------------------------------------------------------------------------

TEST_CASE("host: parallel_for runs every index exactly once at any thread count") {
  for (int threads : {1, 2, 3, 7}) {
    const moe::host h(threads);
    for (moe::index_t n : {0, 1, 63, 64, 65, 10007}) {
      CAPTURE(threads);
      CAPTURE(n);
      std::vector<std::atomic<int>> hits(std::size_t(n) + 1);
      h.parallel_for(n, [&](moe::index_t i) { hits[std::size_t(i)].fetch_add(1, std::memory_order_relaxed); });
      bool all_once = true;
      for (moe::index_t i = 0; i < n; ++i) all_once = all_once && hits[std::size_t(i)].load() == 1;
      CHECK(all_once);
      CHECK(hits[std::size_t(n)].load() == 0);  // nothing past the end
    }
    // Negative n is an empty range.
    int calls = 0;
    h.parallel_for(-5, [&](moe::index_t) { ++calls; });
    CHECK(calls == 0);
  }
}

TEST_CASE("host: parallel_for spreads large loops over several threads") {
  const moe::host h(3);
  // One contiguous chunk per thread, each run by its own thread (the caller takes the first).
  std::vector<std::thread::id> who(3000);
  h.parallel_for(3000, [&](moe::index_t i) { who[std::size_t(i)] = std::this_thread::get_id(); });
  CHECK(who[0] == std::this_thread::get_id());
  CHECK(std::is_sorted(who.begin(), who.begin() + 1000, [](auto, auto) { return false; }));
  for (int part = 0; part < 3; ++part)
    CHECK(std::all_of(who.begin() + part * 1000, who.begin() + (part + 1) * 1000,
                      [&](std::thread::id t) { return t == who[std::size_t(part) * 1000]; }));
  std::sort(who.begin(), who.end());
  CHECK(std::unique(who.begin(), who.end()) - who.begin() == 3);
}

TEST_CASE("host: nested parallel_for completes and covers the product space") {
  for (int threads : {2, 7}) {
    const moe::host h(threads);
    const moe::host other(3);  // a different pool inside a worker of the first
    const moe::index_t outer = 100, inner = 150;
    std::vector<std::atomic<int>> hits(std::size_t(outer * inner));
    h.parallel_for(outer, [&](moe::index_t i) {
      const moe::host& inner_space = i % 2 ? h : other;
      inner_space.parallel_for(inner, [&](moe::index_t j) { hits[std::size_t(i * inner + j)].fetch_add(1); });
    });
    bool all_once = true;
    for (auto& x : hits) all_once = all_once && x.load() == 1;
    CHECK(all_once);
  }
}

TEST_CASE("host: an exception thrown in a parallel_for body reaches the caller, and the pool survives") {
  for (int threads : {1, 2, 7}) {
    CAPTURE(threads);
    const moe::host h(threads);
    for (moe::index_t n : {10, 1000}) {
      // Thrown in the first chunk (the calling thread) and in the last (a worker).
      for (moe::index_t bad : {moe::index_t(0), n - 1}) {
        CAPTURE(n);
        CAPTURE(bad);
        const std::string message = "body failed at " + std::to_string(bad);
        auto body = [&](moe::index_t i) {
          if (i == bad) throw std::runtime_error("body failed at " + std::to_string(i));
        };
        CHECK_THROWS_WITH_AS(h.parallel_for(n, body), message.c_str(), std::runtime_error);
      }
      // Every chunk throws: exactly one exception comes out.
      auto always = [](moe::index_t) { throw moe::invalid_argument("all"); };
      CHECK_THROWS_AS(h.parallel_for(n, always), moe::invalid_argument);
    }
    std::atomic<moe::index_t> sum{0};
    h.parallel_for(5000, [&](moe::index_t i) { sum += i; });
    CHECK(sum.load() == 5000 * 4999 / 2);
  }
}

// Idle threads poll for $MOE_SPIN_US before they block (thread_pool.hpp): many fork-joins in quick
// succession, and after pauses longer than the polling time (the workers then block and must be
// woken), each cover every index exactly once, with polling on (two threads: not more than any
// machine's cores) and off.
TEST_CASE("host: back-to-back fork-joins, polling and blocking, lose no work and no wake-up") {
  const char* saved = std::getenv("MOE_SPIN_US");
  const std::string saved_value = saved ? saved : "";
  for (const char* spin : {"500", "0", "20"}) {
    CAPTURE(spin);
    ::setenv("MOE_SPIN_US", spin, 1);
    const moe::host h(2);
    std::vector<int> hits(256, 0);
    for (int call = 0; call < 3000; ++call) {
      h.parallel_for(256, [&](moe::index_t i) { hits[std::size_t(i)] += 1; });
      if (call % 500 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // workers block
    }
    CHECK(std::all_of(hits.begin(), hits.end(), [](int x) { return x == 3000; }));
  }
  for (const char* bad : {"-1", "abc", "12us", "", "2000000"}) {
    CAPTURE(bad);
    ::setenv("MOE_SPIN_US", bad, 1);
    const std::string want = "MOE_SPIN_US: '" + std::string(bad) + "' is not a polling time";
    CHECK_THROWS_WITH_AS(moe::host(2), doctest::Contains(want.c_str()), moe::invalid_argument);
  }
  if (saved) ::setenv("MOE_SPIN_US", saved_value.c_str(), 1);
  else ::unsetenv("MOE_SPIN_US");
}

TEST_CASE("host: parallel_tasks runs every index once, on several threads even for two indices") {
  const moe::host h(2);
  for (const moe::index_t n : {0, 1, 2, 5, 100}) {
    CAPTURE(n);
    std::vector<int> hits(std::size_t(n), 0);
    h.parallel_tasks(n, [&](moe::index_t i) { hits[std::size_t(i)] += 1; });
    CHECK(std::all_of(hits.begin(), hits.end(), [](int x) { return x == 1; }));
  }
  // parallel_for runs two indices on the caller; parallel_tasks gives the second to a worker (the
  // pool's split is static: part 1 of 2 is a worker's, however fast the caller is).
  std::thread::id ids[2];
  h.parallel_tasks(2, [&](moe::index_t i) { ids[i] = std::this_thread::get_id(); });
  CHECK(ids[0] != ids[1]);
  CHECK_THROWS_WITH_AS(h.parallel_tasks(3, [](moe::index_t i) { moe::require(i != 2, "task", "index ", i); }),
                       "task: index 2", moe::invalid_argument);
  std::atomic<int> after{0};
  h.parallel_tasks(2, [&](moe::index_t) { after.fetch_add(1); });  // the pool survives the exception
  CHECK(after.load() == 2);
}

TEST_CASE("host: concurrent callers of one pool are serialised correctly") {
  const moe::host h(3);
  std::vector<std::atomic<int>> hits(4 * 5000);
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t)
    callers.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep)
        h.parallel_for(1000, [&](moe::index_t i) { hits[std::size_t(t * 5000 + rep * 1000 + i)].fetch_add(1); });
    });
  for (auto& c : callers) c.join();
  bool all_once = true;
  for (auto& x : hits) all_once = all_once && x.load() == 1;
  CHECK(all_once);
}

// ---- GEMM ----------------------------------------------------------------------------------------

TEST_CASE("gemm: host space, float, all op combinations and strides") {
  check_gemm_all<float, float, float>(via_host{moe::host(2)});
  check_gemm_degenerate<float, float, float>(via_host{moe::host(2)});
}

TEST_CASE("gemm: host space, double") {
  check_gemm_all<double, double, double>(via_host{moe::host(2)});
  check_gemm_degenerate<double, double, double>(via_host{moe::host(2)});
}

TEST_CASE("gemm: host space, bfloat16 and float16 inputs with float output") {
  check_gemm_all<moe::bfloat16, moe::bfloat16, float>(via_host{moe::host(2)});
  check_gemm_all<moe::float16, moe::float16, float>(via_host{moe::host(2)});
  check_gemm_all<float, moe::bfloat16, float>(via_host{moe::host(2)});
  check_gemm_degenerate<moe::bfloat16, moe::bfloat16, float>(via_host{moe::host(2)});
}

TEST_CASE("gemm: host space, 16-bit output is rounded from the float result") {
  check_gemm_all<moe::bfloat16, moe::bfloat16, moe::bfloat16>(via_host{moe::host(2)});
  check_gemm_all<moe::float16, moe::float16, moe::float16>(via_host{moe::host(2)});
  check_gemm_degenerate<moe::float16, moe::float16, moe::float16>(via_host{moe::host(2)});
}

TEST_CASE("gemm: the portable kernel matches the naive loop, serial and threaded") {
  moe::detail::thread_pool pool(3);
  for (moe::detail::thread_pool* p : {static_cast<moe::detail::thread_pool*>(nullptr), &pool}) {
    CAPTURE(p != nullptr);
    check_gemm_all<float, float, float>(via_portable{p});
    check_gemm_all<double, double, double>(via_portable{p});
    check_gemm_all<moe::bfloat16, moe::bfloat16, float>(via_portable{p});
    check_gemm_all<moe::float16, moe::float16, float>(via_portable{p});
    check_gemm_all<moe::bfloat16, moe::bfloat16, moe::bfloat16>(via_portable{p});
    check_gemm_degenerate<float, float, float>(via_portable{p});
  }
}

TEST_CASE("gemm: results are bit-identical whatever the thread count") {
  const moe::index_t m = 97, n = 61, k = 300;  // m·n·k well above the threading threshold
  const auto a = random_values<float>(std::size_t(m * k), 1), b = random_values<float>(std::size_t(k * n), 2);
  const auto c0 = random_values<float>(std::size_t(m * n), 3);
  const auto ah = random_values<moe::bfloat16>(std::size_t(m * k), 4);
  const auto bh = random_values<moe::bfloat16>(std::size_t(k * n), 5);
  auto run_host = [&](int threads) {
    std::vector<float> c = c0;
    moe::host(threads).gemm(moe::op::none, moe::op::transpose, m, n, k, 0.5f, a.data(), k, b.data(), k, 0.25f,
                            c.data(), n);
    return c;
  };
  auto run_host_half = [&](int threads) {
    std::vector<float> c = c0;
    moe::host(threads).gemm(moe::op::transpose, moe::op::none, m, n, k, 1.0f, ah.data(), m, bh.data(), n, 1.0f,
                            c.data(), n);
    return c;
  };
  auto run_portable = [&](int threads) {
    moe::detail::thread_pool pool(threads);
    std::vector<float> c = c0;
    moe::detail::gemm_portable(&pool, moe::op::transpose, moe::op::transpose, m, n, k, 0.5f, a.data(), m, b.data(), k,
                               0.25f, c.data(), n);
    return c;
  };
  CHECK(same_bits(run_host(1), run_host(4)));
  CHECK(same_bits(run_host(1), run_host(3)));
  CHECK(same_bits(run_host_half(1), run_host_half(4)));
  CHECK(same_bits(run_portable(1), run_portable(4)));
  CHECK(same_bits(run_portable(1), run_portable(7)));
  CHECK_FALSE(same_bits(run_portable(1), c0));  // the comparison is not vacuous
}

#if defined(MOE_HAVE_CBLAS)
// Products large enough to be cut into tiles of C (one BLAS call each): edge tiles in both
// directions, tiles halved for parallelism, a transposed operand's column offsets.
constexpr gemm_shape tiled_shapes[] = {{600, 300, 70}, {40, 530, 1100}, {1000, 20, 200}};

TEST_CASE("gemm: CBLAS products are computed in tiles of C, every op combination") {
  for (const gemm_shape& s : tiled_shapes) {
    const auto t = moe::detail::host_gemm_tiling(s.m, s.n, s.k);
    CAPTURE(s.m);
    CAPTURE(s.n);
    REQUIRE(t.count() > 1);  // the shapes exercise the tiling
    CHECK(t.count_m * t.tile_m >= s.m);
    CHECK((t.count_m - 1) * t.tile_m < s.m);
    CHECK(t.count_n * t.tile_n >= s.n);
    CHECK((t.count_n - 1) * t.tile_n < s.n);
    // Balanced: the last tile is shorter than the others by less than the tile count.
    CHECK(t.count_m * t.tile_m - s.m < t.count_m);
    CHECK(t.count_n * t.tile_n - s.n < t.count_n);
  }
  const auto t600 = moe::detail::host_gemm_tiling(600, 300, 70);
  CHECK((t600.tile_m == 200 && t600.count_m == 3 && t600.tile_n == 150 && t600.count_n == 2));  // not 256 + 256 + 88
  const auto t384 = moe::detail::host_gemm_tiling(128, 384, 96);  // an expert's FFN product in moe-train
  CHECK((t384.count() == 2 && t384.tile_n == 192));                // not 256 + 128 columns
  const auto t530 = moe::detail::host_gemm_tiling(40, 530, 1100);  // doubled along n while < 8 tiles
  CHECK((t530.count_m == 1 && t530.count_n == 6 && t530.tile_n == 89));
  CHECK(moe::detail::host_gemm_tiling(64, 64, 64).count() == 1);  // small: one call
  std::uint64_t seed = 1000;
  for (moe::op opa : ops)
    for (moe::op opb : ops)
      for (const gemm_shape& s : tiled_shapes) {
        check_gemm_case<float, float, float>(opa, opb, s.m, s.n, s.k, -0.75, 0.5, false, ++seed,
                                             via_host{moe::host(3)});
        check_gemm_case<float, float, float>(opa, opb, s.m, s.n, s.k, 1.0, 0.0, true, ++seed, via_host{moe::host(1)});
        check_gemm_case<double, double, double>(opa, opb, s.m, s.n, s.k, 2.0, 1.0, false, ++seed,
                                                via_host{moe::host(2)});
        check_gemm_case<moe::bfloat16, moe::bfloat16, moe::bfloat16>(opa, opb, s.m, s.n, s.k, 1.0, 0.5, false, ++seed,
                                                                     via_host{moe::host(2)});
      }
}

TEST_CASE("gemm: CBLAS results are bit-identical at any thread count, whatever the BLAS's own setting") {
#if defined(MOE_HAVE_OPENBLAS)
  // Set by the ctest that runs these cases on OpenBLAS's OpenMP build (2): the swap took effect.
  if (const char* want = std::getenv("MOE_EXPECT_OPENBLAS_PARALLEL"))
    REQUIRE(openblas_get_parallel() == std::atoi(want));
#endif
  for (const gemm_shape& s : tiled_shapes) {
    CAPTURE(s.m);
    const auto a = random_values<float>(std::size_t(s.m * s.k), 11);
    const auto b = random_values<float>(std::size_t(s.n * s.k), 12);
    const auto c0 = random_values<float>(std::size_t(s.m * s.n), 13);
    auto run = [&](int threads) {
      std::vector<float> c = c0;
      moe::host(threads).gemm(moe::op::none, moe::op::transpose, s.m, s.n, s.k, 0.5f, a.data(), s.k, b.data(), s.k,
                              0.25f, c.data(), s.n);
      return c;
    };
    const std::vector<float> one = run(1);
    CHECK_FALSE(same_bits(one, c0));
    CHECK(same_bits(one, run(2)));
    CHECK(same_bits(one, run(3)));
    CHECK(same_bits(one, run(8)));
#if defined(MOE_HAVE_OPENBLAS)
    // OpenBLAS's thread count, set by other code in the process, is put back to one: its own split
    // would change the last bits (and start threads beside the pool's).
    openblas_set_num_threads(4);
    CHECK(same_bits(one, run(2)));
    CHECK(openblas_get_num_threads() == 1);
#endif
  }
}
#endif

#if defined(MOE_HAVE_OPENBLAS) && defined(__linux__)
TEST_CASE("gemm: the calling thread's OpenMP thread count is as it was after a host GEMM") {
  // OpenBLAS's OpenMP build brings an OpenMP runtime, and openblas_set_num_threads(1), which the
  // host GEMMs call, sets the calling thread's OpenMP count. The ctest that runs these cases on
  // that build (host_space_test.openblas_openmp) sets MOE_EXPECT_OPENBLAS_PARALLEL=2; the pthreads
  // build has no OpenMP count to disturb.
  const char* want = std::getenv("MOE_EXPECT_OPENBLAS_PARALLEL");
  if (!want || std::atoi(want) != 2) return;
  REQUIRE(openblas_get_parallel() == 2);
  const auto get = reinterpret_cast<int (*)()>(::dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
  const auto set = reinterpret_cast<void (*)(int)>(::dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  const bool runtime_found = get && set;  // the OpenMP build of OpenBLAS links one
  REQUIRE(runtime_found);
  const int before = get();
  // One call on the caller (below the tiling threshold) and a tiled product, at one and two threads.
  for (const gemm_shape& s : {gemm_shape{8, 8, 8}, tiled_shapes[0]})
    for (const int threads : {1, 2}) {
      CAPTURE(s.m);
      CAPTURE(threads);
      const auto a = random_values<float>(std::size_t(s.m * s.k), 21);
      const auto b = random_values<float>(std::size_t(s.k * s.n), 22);
      std::vector<float> c(std::size_t(s.m * s.n));
      set(3);
      moe::host(threads).gemm(moe::op::none, moe::op::none, s.m, s.n, s.k, 1.0f, a.data(), s.k, b.data(), s.n, 0.0f,
                              c.data(), s.n);
      CHECK(get() == 3);
    }
  set(before);
}
#endif

TEST_CASE("blas kernels: OpenBLAS kernels without AVX2 on a CPU with it get advice naming OPENBLAS_CORETYPE") {
  const moe::cpu_vector_features none{}, avx2{.avx2_fma = true}, avx512{.avx2_fma = true, .avx512 = true};
  // The mis-detection this exists for: OpenBLAS 0.3.21 on an Intel family 6 model 207 CPU.
  const std::string prescott = moe::openblas_kernel_advice("Prescott", avx512);
  CHECK(prescott.find("Prescott kernels") != std::string::npos);
  CHECK(prescott.find("OPENBLAS_CORETYPE=SkylakeX") != std::string::npos);
  CHECK(moe::openblas_kernel_advice("Prescott", avx2).find("OPENBLAS_CORETYPE=Haswell") != std::string::npos);
  CHECK(moe::openblas_kernel_advice("SANDYBRIDGE", avx2).find("OPENBLAS_CORETYPE=Haswell") != std::string::npos);
  CHECK(moe::openblas_kernel_advice("Nehalem", avx2) != "");
  // A CPU without AVX2 is served right by old kernels; AVX2 kernels need no advice.
  CHECK(moe::openblas_kernel_advice("Prescott", none) == "");
  for (const char* good : {"Haswell", "SkylakeX", "Cooperlake", "Zen", "Excavator", "SapphireRapids"}) {
    CAPTURE(good);
    CHECK(moe::openblas_kernel_advice(good, avx512) == "");
    CHECK(moe::openblas_kernel_advice(good, avx2) == "");
  }
  CHECK(moe::openblas_kernel_advice("Prescot", avx2) == "");  // whole names only
}

TEST_CASE("blas kernels: host_blas_info reports the kernels OpenBLAS loaded") {
  const moe::host_blas_report r = moe::host_blas_info();
  CHECK(!r.library.empty());
#if defined(MOE_HAVE_OPENBLAS)
  CHECK(r.library.find("OpenBLAS") != std::string::npos);
  CHECK(!r.kernels.empty());
  // openblas_get_config names its kernels too (upper case in builds for one target: compare lowered).
  const auto lowered = [](std::string t) {
    for (char& ch : t) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return t;
  };
  CHECK(lowered(r.library).find(lowered(r.kernels)) != std::string::npos);
  // host_space_test.blas_prescott runs this case with OPENBLAS_CORETYPE=Prescott (OpenBLAS's SSE3
  // kernels, which it falls back to on CPU models it does not know): the advice appears exactly
  // where the CPU has AVX2 and FMA.
  if (const char* want = std::getenv("MOE_EXPECT_OPENBLAS_KERNELS")) {
    CHECK(r.kernels == want);
    CHECK(r.advice.empty() == !moe::this_cpu_vector_features().avx2_fma);
  }
#else
  CHECK(r.kernels.empty());
  CHECK(r.advice.empty());
#endif
}

TEST_CASE("gemm: negative sizes are rejected") {
  const moe::host h(1);
  float x = 0;
  const auto n = moe::op::none;
  CHECK_THROWS_AS(h.gemm(n, n, -1, 1, 1, 1.0f, &x, 1, &x, 1, 0.0f, &x, 1), moe::invalid_argument);
  CHECK_THROWS_AS(h.gemm(n, n, 1, 1, -1, 1.0f, &x, 1, &x, 1, 0.0f, &x, 1), moe::invalid_argument);
  CHECK(x == 0);
}

// ---- grouped GEMM --------------------------------------------------------------------------------

namespace {

// Group sizes with empty groups at the start, in the middle and at the end.
const std::vector<int> group_sizes = {0, 5, 1, 0, 0, 17, 3, 0};

std::vector<int> offsets_of(const std::vector<int>& sizes) {
  std::vector<int> off(sizes.size() + 1, 0);
  std::inclusive_scan(sizes.begin(), sizes.end(), off.begin() + 1);
  return off;
}

template <class TA, class TB, class TC>
void check_grouped_gemm(moe::op opb, const moe::host& h) {
  CAPTURE(int(opb));
  const auto off = offsets_of(group_sizes);
  const int groups = int(group_sizes.size());
  const moe::index_t rows = off.back(), n = 11, k = 9;
  const moe::index_t lda = k + 2, ldc = n + 3;
  const moe::index_t b_rows = opb == moe::op::none ? k : n, b_cols = opb == moe::op::none ? n : k;
  const moe::index_t ldb = b_cols + 1, b_stride = b_rows * ldb + 5;
  const auto a = random_values<TA>(std::size_t(rows * lda), 21);
  const auto b = random_values<TB>(std::size_t(groups * b_stride), 22);
  const auto c0 = random_values<TC>(std::size_t(rows * ldc), 23);
  for (double beta : {0.0, 0.5}) {
    CAPTURE(beta);
    const double alpha = -1.25;
    std::vector<TC> c = c0;
    h.grouped_gemm(opb, groups, off.data(), n, k, moe::acc_t<TC>(alpha), a.data(), lda, b.data(), b_stride, ldb,
                   moe::acc_t<TC>(beta), c.data(), ldc);
    for (int g = 0; g < groups; ++g)
      for (moe::index_t r = off[std::size_t(g)]; r < off[std::size_t(g) + 1]; ++r)
        for (moe::index_t j = 0; j < ldc; ++j) {
          const double got = double(moe::widen(c[std::size_t(r * ldc + j)]));
          if (j >= n) {  // padding untouched
            REQUIRE(got == double(moe::widen(c0[std::size_t(r * ldc + j)])));
            continue;
          }
          double s = 0, sa = 0;
          for (moe::index_t p = 0; p < k; ++p) {
            const std::size_t bi = std::size_t(g * b_stride + (opb == moe::op::none ? p * ldb + j : j * ldb + p));
            const double prod = double(moe::widen(a[std::size_t(r * lda + p)])) * double(moe::widen(b[bi]));
            s += prod;
            sa += std::fabs(prod);
          }
          const double prior = beta * double(moe::widen(c0[std::size_t(r * ldc + j)]));
          const double want = alpha * s + prior;
          const double tol = 1e-5 * (std::fabs(alpha) * sa + std::fabs(prior)) + 1e-30;
          INFO("group " << g << " row " << r << " col " << j);
          REQUIRE(std::fabs(got - want) <= tol);
        }
  }
}

template <class TA, class TB, class TC>
void check_grouped_gemm_tn(const moe::host& h) {
  const auto off = offsets_of(group_sizes);
  const int groups = int(group_sizes.size());
  const moe::index_t rows = off.back(), m = 6, n = 10;
  const moe::index_t lda = m + 1, ldb = n + 2, ldc = n + 3, c_stride = m * ldc + 7;
  const auto a = random_values<TA>(std::size_t(rows * lda), 31);
  const auto b = random_values<TB>(std::size_t(rows * ldb), 32);
  const auto c0 = random_values<TC>(std::size_t(groups * c_stride), 33);
  for (double beta : {0.0, 0.5}) {
    CAPTURE(beta);
    const double alpha = 0.75;
    std::vector<TC> c = c0;
    h.grouped_gemm_tn(groups, off.data(), m, n, moe::acc_t<TC>(alpha), a.data(), lda, b.data(), ldb,
                      moe::acc_t<TC>(beta), c.data(), c_stride, ldc);
    for (int g = 0; g < groups; ++g)
      for (moe::index_t i = 0; i < m; ++i)
        for (moe::index_t j = 0; j < ldc; ++j) {
          const std::size_t at = std::size_t(g * c_stride + i * ldc + j);
          const double got = double(moe::widen(c[at]));
          if (j >= n) {
            REQUIRE(got == double(moe::widen(c0[at])));
            continue;
          }
          double s = 0, sa = 0;
          for (moe::index_t r = off[std::size_t(g)]; r < off[std::size_t(g) + 1]; ++r) {
            const double prod =
                double(moe::widen(a[std::size_t(r * lda + i)])) * double(moe::widen(b[std::size_t(r * ldb + j)]));
            s += prod;
            sa += std::fabs(prod);
          }
          // Empty groups still get C_g = beta·C_g.
          const double prior = beta * double(moe::widen(c0[at]));
          const double want = alpha * s + prior;
          INFO("group " << g << " C(" << i << ", " << j << ")");
          REQUIRE(std::fabs(got - want) <= 1e-5 * (std::fabs(alpha) * sa + std::fabs(prior)) + 1e-30);
        }
    // Elements between groups' blocks (c_stride padding) untouched.
    for (int g = 0; g < groups; ++g)
      for (moe::index_t x = m * ldc; x < c_stride; ++x) {
        const std::size_t at = std::size_t(g * c_stride + x);
        REQUIRE(double(moe::widen(c[at])) == double(moe::widen(c0[at])));
      }
  }
}

}  // namespace

TEST_CASE("grouped_gemm matches per-group naive loops, empty groups included") {
  const moe::host h(2);
  for (moe::op opb : ops) {
    check_grouped_gemm<float, float, float>(opb, h);
    check_grouped_gemm<double, double, double>(opb, h);
    check_grouped_gemm<moe::bfloat16, moe::bfloat16, float>(opb, h);
  }
  // Rows outside every group are never written.
  const std::vector<int> off = {2, 4, 4, 6};  // rows 0, 1 and 6, 7 belong to no group
  const moe::index_t n = 3, k = 2;
  const auto a = random_values<float>(8 * k, 41), b = random_values<float>(3 * k * n, 42);
  std::vector<float> c(8 * n, std::numeric_limits<float>::quiet_NaN());
  h.grouped_gemm(moe::op::none, 3, off.data(), n, k, 1.0f, a.data(), k, b.data(), k * n, n, 0.0f, c.data(), n);
  for (moe::index_t r = 0; r < 8; ++r)
    for (moe::index_t j = 0; j < n; ++j) CHECK(std::isnan(c[std::size_t(r * n + j)]) == (r < 2 || r >= 6));
}

TEST_CASE("grouped_gemm_tn matches per-group naive loops, empty groups scaled by beta") {
  const moe::host h(2);
  check_grouped_gemm_tn<float, float, float>(h);
  check_grouped_gemm_tn<double, double, double>(h);
  check_grouped_gemm_tn<moe::bfloat16, moe::bfloat16, float>(h);
  check_grouped_gemm_tn<moe::float16, moe::float16, float>(h);
}

// The grouped GEMMs run the products too small to be cut side by side on the pool's threads: a
// group's bits must still be those of gemm on its rows alone, at any thread count. Sizes: empty groups, one row, products of one tile (at n = 200, k = 64: up to 256 rows;
// those run side by side) and of several (at n = 384, k = 96 every group from 17 rows).
template <class T>
void check_grouped_bits(moe::op opb, moe::index_t n, moe::index_t k) {
  CAPTURE(int(opb));
  CAPTURE(n);
  const std::vector<int> sizes = {0, 300, 17, 1, 520, 64, 0, 129};
  const auto off = offsets_of(sizes);
  const int groups = int(sizes.size());
  const moe::index_t rows = off.back();
  const auto a = random_values<T>(std::size_t(rows * k), 71);
  const auto b = random_values<T>(std::size_t(groups) * std::size_t(k * n), 72);
  const auto c0 = random_values<T>(std::size_t(rows * n), 73);
  const auto w0 = random_values<T>(std::size_t(groups) * std::size_t(k * n), 74);
  const moe::index_t ldb = opb == moe::op::none ? n : k;
  const moe::host serial(1);
  std::vector<T> ref = c0, ref_tn = w0;
  for (int g = 0; g < groups; ++g) {
    const moe::index_t r0 = off[std::size_t(g)], m = off[std::size_t(g) + 1] - r0;
    if (m > 0)
      serial.gemm(moe::op::none, opb, m, n, k, T(0.5), a.data() + r0 * k, k, b.data() + g * k * n, ldb, T(2),
                  ref.data() + r0 * n, n);
    // Weight gradients: [k, n] = A[rows]ᵀ · C[rows], an empty group scaled by beta.
    serial.gemm(moe::op::transpose, moe::op::none, k, n, m, T(0.5), a.data() + r0 * k, k, c0.data() + r0 * n, n,
                T(2), ref_tn.data() + g * k * n, n);
  }
  for (const int threads : {1, 2, 3}) {
    CAPTURE(threads);
    const moe::host h(threads);
    std::vector<T> c = c0, w = w0;
    h.grouped_gemm(opb, groups, off.data(), n, k, T(0.5), a.data(), k, b.data(), k * n, ldb, T(2), c.data(), n);
    CHECK(std::memcmp(c.data(), ref.data(), c.size() * sizeof(T)) == 0);
    h.grouped_gemm_tn(groups, off.data(), k, n, T(0.5), a.data(), k, c0.data(), n, T(2), w.data(), k * n, n);
    CHECK(std::memcmp(w.data(), ref_tn.data(), w.size() * sizeof(T)) == 0);
  }
  CHECK(ref != c0);
  CHECK(ref_tn != w0);
}

TEST_CASE("grouped_gemm and grouped_gemm_tn: each group the bits of gemm on its rows, at any thread count") {
  for (moe::op opb : ops)
    for (const auto& [n, k] : {std::pair<moe::index_t, moe::index_t>{384, 96}, {200, 64}}) {
      check_grouped_bits<float>(opb, n, k);
      check_grouped_bits<double>(opb, n, k);
    }
}

TEST_CASE("group_row_sums: per-group column sums in row order, empty rows give zeros") {
  // Column blocks of 16 (a partial last block at 33 and 257 columns), and sums large enough to be
  // spread over the pool (2 × 300 × 257), on one, two and three threads.
  for (const int threads : {1, 2, 3}) {
    const moe::host h(threads);
    for (const auto& [groups, rows, cols] :
         {std::tuple{1, 1000, 8}, std::tuple{5, 37, 1}, std::tuple{3, 64, 33}, std::tuple{2, 300, 257}}) {
      CAPTURE(threads);
      CAPTURE(groups);
      CAPTURE(rows);
      CAPTURE(cols);
      const auto v = random_values<float>(std::size_t(groups) * std::size_t(rows) * std::size_t(cols), 61);
      std::vector<float> out(std::size_t(groups * cols), nan_f);
      h.group_row_sums(groups, rows, cols,
                       [&](moe::index_t r, moe::index_t c) { return v[std::size_t(r * cols + c)]; }, out.data());
      for (int g = 0; g < groups; ++g)
        for (moe::index_t c = 0; c < cols; ++c) {
          float want = 0;  // the documented order: rows ascending, in float
          for (moe::index_t r = 0; r < rows; ++r) want += v[std::size_t((g * rows + r) * cols + c)];
          REQUIRE(out[std::size_t(g * cols + c)] == want);
        }
    }
  }
  const moe::host h(2);
  std::vector<double> out(6, nan_d);
  h.group_row_sums(2, 0, 3, [](moe::index_t, moe::index_t) { return 1.0; }, out.data());
  for (double x : out) CHECK(x == 0.0);
}

TEST_CASE("group_pair_sums: the bits of group_row_sums over the cells, pairs with no column or a shared one") {
  // Rows hand values to a few columns each: some pairs name no column (-1), some rows name one
  // column twice (a cell of two values), values of either sign. Sums large enough to go to the pool
  // (6 groups x 3000 rows x 3 pairs) and small ones, on one, two and three threads; float and double.
  const auto check = [](auto zero, int threads, int groups, moe::index_t rows, moe::index_t cols, int pairs) {
    using T = decltype(zero);
    CAPTURE(threads);
    CAPTURE(groups);
    CAPTURE(rows);
    CAPTURE(cols);
    CAPTURE(pairs);
    const moe::host h(threads);
    const std::size_t n = std::size_t(groups) * std::size_t(rows) * std::size_t(pairs);
    std::mt19937_64 gen(std::uint64_t(71 + 13 * pairs + cols));
    std::vector<moe::index_t> column(n);
    for (auto& c : column) {
      const std::uint64_t u = gen() % 8;  // 1 in 8: no column; 1 in 8: the column of the row's first pair
      c = u == 0 ? -1 : moe::index_t(gen() % std::uint64_t(cols));
      if (u == 1 && (&c - column.data()) % pairs != 0) c = column[std::size_t((&c - column.data()) / pairs * pairs)];
    }
    const auto value = random_values<T>(n, 72);
    const auto column_of = [&](moe::index_t r, int j) { return column[std::size_t(r * pairs + j)]; };
    const auto value_of = [&](moe::index_t r, int j) { return value[std::size_t(r * pairs + j)]; };
    const auto cell = [&](moe::index_t r, moe::index_t c) {
      T sum = 0;  // the documented cell: the row's values on column c in pair order
      for (int j = 0; j < pairs; ++j)
        if (column_of(r, j) == c) sum += value_of(r, j);
      return sum;
    };
    std::vector<T> want(std::size_t(groups * cols), T(-7)), got(want.size(), T(-7));
    h.group_row_sums(groups, rows, cols, cell, want.data());
    h.group_pair_sums(groups, rows, cols, pairs, column_of, value_of, got.data());
    REQUIRE(same_bits(got, want));
    bool shared = false;  // the case of a cell of two values did occur
    for (std::size_t r = 0; r < n / std::size_t(pairs); ++r)
      for (int j = 1; j < pairs; ++j) {
        const moe::index_t c = column[r * std::size_t(pairs) + std::size_t(j)];
        shared |= c >= 0 && c == column[r * std::size_t(pairs)];
      }
    CHECK((pairs == 1 || shared));
  };
  for (const int threads : {1, 2, 3})
    for (const auto& [groups, rows, cols, pairs] :
         {std::tuple{1, 500, 8, 2}, std::tuple{6, 3000, 64, 3}, std::tuple{3, 40, 1, 4}, std::tuple{2, 300, 257, 1}}) {
      check(0.0f, threads, groups, rows, cols, pairs);
      check(0.0, threads, groups, rows, cols, pairs);
    }
  const moe::host h(2);
  std::vector<float> out(6, nan_f);
  h.group_pair_sums(
      2, 0, 3, 2, [](moe::index_t, int) { return moe::index_t(0); }, [](moe::index_t, int) { return 1.0f; },
      out.data());
  for (float x : out) CHECK(x == 0.0f);
  // A column past the end is a caller's error, named with its row and pair.
  CHECK_THROWS_WITH_AS(h.group_pair_sums(
                           1, 4, 3, 2, [](moe::index_t r, int j) { return moe::index_t(r == 2 && j == 1 ? 3 : 0); },
                           [](moe::index_t, int) { return 1.0f; }, out.data()),
                       doctest::Contains("row 2 pair 1: column=3 is not below cols=3"), moe::invalid_argument);
}

TEST_CASE("batched_gemm: entries small or tiled, all in one fork-join: one gemm's bits, any thread count") {
  struct shape {
    int batch;
    moe::index_t m, n, k;
  };
  // 40·48·64 multiply-adds: one call per entry, entries on the pool; 300·200·40: tiled per entry.
  for (const shape s : {shape{7, 40, 48, 64}, shape{3, 300, 200, 40}}) {
    CAPTURE(s.m);
    const moe::index_t a_stride = s.m * s.k, b_stride = s.k * s.n, c_stride = s.m * s.n;
    const auto a = random_values<float>(std::size_t(s.batch * a_stride), 61);
    const auto b = random_values<float>(std::size_t(s.batch * b_stride), 62);
    const auto c0 = random_values<float>(std::size_t(s.batch * c_stride), 63);
    std::vector<float> ref = c0;
    const moe::host serial(1);
    for (int i = 0; i < s.batch; ++i)
      serial.gemm(moe::op::none, moe::op::transpose, s.m, s.n, s.k, 0.5f, a.data() + i * a_stride, s.k,
                  b.data() + i * b_stride, s.k, 2.0f, ref.data() + i * c_stride, s.n);
    for (const int threads : {1, 2, 3}) {
      CAPTURE(threads);
      std::vector<float> c = c0;
      moe::host(threads).batched_gemm(moe::op::none, moe::op::transpose, s.batch, s.m, s.n, s.k, 0.5f, a.data(), s.k,
                                      a_stride, b.data(), s.k, b_stride, 2.0f, c.data(), s.n, c_stride);
      CHECK(std::memcmp(c.data(), ref.data(), c.size() * sizeof(float)) == 0);
    }
    CHECK(ref != c0);
  }
}

TEST_CASE("batched_gemm equals one gemm per batch entry (bits) and naive loops, every transposition") {
  const moe::host h(2);
  const int batch = 4;
  const moe::index_t m = 7, n = 9, k = 5;
  for (moe::op opa : ops)
    for (moe::op opb : ops) {
      CAPTURE(int(opa));
      CAPTURE(int(opb));
      const moe::index_t lda = (opa == moe::op::none ? k : m) + 1, ldb = (opb == moe::op::none ? n : k) + 2;
      const moe::index_t ldc = n + 3;
      const moe::index_t a_stride = (opa == moe::op::none ? m : k) * lda + 3;
      const moe::index_t b_stride = (opb == moe::op::none ? k : n) * ldb + 1, c_stride = m * ldc + 2;
      const auto a = random_values<float>(std::size_t(batch * a_stride), 51);
      const auto b = random_values<float>(std::size_t(batch * b_stride), 52);
      const auto c0 = random_values<float>(std::size_t(batch * c_stride), 53);
      std::vector<float> c = c0, ref = c0;
      h.batched_gemm(opa, opb, batch, m, n, k, 1.5f, a.data(), lda, a_stride, b.data(), ldb, b_stride, 0.5f, c.data(),
                     ldc, c_stride);
      for (int i = 0; i < batch; ++i)
        h.gemm(opa, opb, m, n, k, 1.5f, a.data() + i * a_stride, lda, b.data() + i * b_stride, ldb, 0.5f,
               ref.data() + i * c_stride, ldc);
      REQUIRE(c == ref);  // the same calls: the same bits
      for (int i = 0; i < batch; ++i)
        for (moe::index_t r = 0; r < m; ++r)
          for (moe::index_t j = 0; j < n; ++j) {
            double s = 0, sa = 0;
            for (moe::index_t p = 0; p < k; ++p) {
              const double av = a[std::size_t(i * a_stride + (opa == moe::op::none ? r * lda + p : p * lda + r))];
              const double bv = b[std::size_t(i * b_stride + (opb == moe::op::none ? p * ldb + j : j * ldb + p))];
              s += av * bv;
              sa += std::fabs(av * bv);
            }
            const std::size_t at = std::size_t(i * c_stride + r * ldc + j);
            const double want = 1.5 * s + 0.5 * double(c0[at]);
            INFO("entry " << i << " C(" << r << ", " << j << ")");
            REQUIRE(std::fabs(double(c[at]) - want) <= 1e-5 * (1.5 * sa + 0.5 * std::fabs(double(c0[at]))) + 1e-30);
          }
    }
}

// ---- workspace -----------------------------------------------------------------------------------

namespace {

struct carved {
  float* a;
  double* b;
  int* c;
  std::uint8_t* d;
  int* empty;
};

// One description of the scratch, used for both phases.
carved carve(moe::workspace_carver& w) {
  carved r{};
  r.a = w.take<float>(10);          // 40 bytes
  r.b = w.take<double>(100);        // 800 bytes
  r.c = w.take<int>(1);             // 4 bytes
  r.d = w.take<std::uint8_t>(257);  // 257 bytes
  r.empty = w.take<int>(0);
  return r;
}

}  // namespace

TEST_CASE("workspace_carver: measuring counts aligned bytes and hands out null") {
  moe::workspace_carver w;
  CHECK(w.measuring());
  CHECK(w.bytes() == 0);
  const carved r = carve(w);
  CHECK(r.a == nullptr);
  CHECK(r.b == nullptr);
  CHECK(r.c == nullptr);
  CHECK(r.d == nullptr);
  CHECK(r.empty == nullptr);
  // Blocks at 0, 256, 1280, 1536; the last one (257 bytes) ends at 1793; the empty block starts
  // at 2048; plus 255 bytes of slack for aligning the start of a buffer of any alignment.
  CHECK(w.bytes() == 2048 + 255);
  CHECK(moe::align_up(0, 256) == 0);
  CHECK(moe::align_up(1, 256) == 256);
  CHECK(moe::align_up(256, 256) == 256);
  CHECK(moe::align_up(257, 256) == 512);
}

TEST_CASE("workspace_carver: carving hands out aligned, ordered, disjoint blocks") {
  moe::workspace_carver measure;
  carve(measure);
  const moe::host h(1);
  const std::size_t bytes = measure.bytes();
  auto* base = static_cast<std::byte*>(h.allocate(bytes));
  moe::workspace_carver w(base, bytes);
  CHECK_FALSE(w.measuring());
  const carved r = carve(w);
  CHECK(reinterpret_cast<std::byte*>(r.a) == base);
  CHECK(reinterpret_cast<std::byte*>(r.b) == base + 256);
  CHECK(reinterpret_cast<std::byte*>(r.c) == base + 1280);
  CHECK(reinterpret_cast<std::byte*>(r.d) == base + 1536);
  CHECK(reinterpret_cast<std::byte*>(r.empty) == base + 2048);  // zero-size: one past, never written
  for (const void* p : {static_cast<const void*>(r.a), static_cast<const void*>(r.b),
                        static_cast<const void*>(r.c), static_cast<const void*>(r.d)})
    CHECK(reinterpret_cast<std::uintptr_t>(p) % moe::workspace_alignment == 0);
  CHECK(w.bytes() == bytes);  // both phases agree
  // The blocks are usable memory (ASan checks the bounds).
  std::fill(r.a, r.a + 10, 1.0f);
  std::fill(r.b, r.b + 100, 2.0);
  std::fill(r.d, r.d + 257, std::uint8_t(3));
  CHECK(r.a[9] == 1.0f);
  CHECK(r.b[0] == 2.0);
  h.deallocate(base, bytes);
}

TEST_CASE("workspace_carver: a buffer of any alignment works when it has the measured size") {
  moe::workspace_carver measure;
  carve(measure);
  const moe::host h(1);
  auto* raw = static_cast<std::byte*>(h.allocate(measure.bytes() + 256));
  for (std::size_t shift : {0, 1, 8, 100, 255}) {
    CAPTURE(shift);
    moe::workspace_carver w(raw + shift, measure.bytes());
    const carved r = carve(w);
    for (const void* p : {static_cast<const void*>(r.a), static_cast<const void*>(r.b),
                          static_cast<const void*>(r.c), static_cast<const void*>(r.d)})
      CHECK(reinterpret_cast<std::uintptr_t>(p) % moe::workspace_alignment == 0);
    CHECK(reinterpret_cast<std::byte*>(r.d) + 257 <= raw + shift + measure.bytes());
    CHECK(reinterpret_cast<std::byte*>(r.a) >= raw + shift);
  }
  h.deallocate(raw, measure.bytes() + 256);
}

TEST_CASE("workspace_carver: too small a buffer and negative sizes throw, naming the workspace") {
  moe::workspace_carver measure;
  carve(measure);
  const moe::host h(1);
  auto* small = static_cast<std::byte*>(h.allocate(1600));  // aligned: room for the first three blocks only
  moe::workspace_carver w(small, 1600);
  CHECK_THROWS_WITH_AS(carve(w), doctest::Contains("workspace"), moe::invalid_argument);
  moe::workspace_carver w2(small, 0);
  CHECK_THROWS_AS(w2.take<float>(1), moe::invalid_argument);
  moe::workspace_carver w3(small, 1600);
  CHECK_NOTHROW(w3.take<std::byte>(1600));  // exactly the capacity fits (the base is aligned)
  CHECK_THROWS_AS(w3.take<std::byte>(1), moe::invalid_argument);
  h.deallocate(small, 1600);
  moe::workspace_carver m;
  CHECK_THROWS_WITH_AS(m.take<int>(-1), doctest::Contains("workspace"), moe::invalid_argument);
}

// ---- tensor_view ---------------------------------------------------------------------------------

TEST_CASE("tensor_view: extents, sizes and row-major indexing") {
  std::vector<int> data(2 * 3 * 4);
  std::iota(data.begin(), data.end(), 0);

  const moe::vector_view<int> v(data.data(), 24);
  static_assert(decltype(v)::rank == 1);
  static_assert(std::is_same_v<moe::vector_view<int>::element_type, int>);
  CHECK(v.size() == 24);
  CHECK(v.rows() == 24);
  CHECK(v(5) == 5);
  CHECK(v[23] == 23);

  const moe::matrix_view<int> m(data.data(), 6, 4);
  CHECK(m.rows() == 6);
  CHECK(m.cols() == 4);
  CHECK(m.size() == 24);
  CHECK(m(0, 0) == 0);
  CHECK(m(2, 3) == 11);
  CHECK(m(5, 1) == 21);
  CHECK(m.row(3) == data.data() + 12);
  m(1, 2) = -7;  // views write through
  CHECK(data[6] == -7);
  data[6] = 6;

  const moe::tensor_view<int, 3> t(data.data(), 2, 3, 4);
  CHECK(t.size() == 24);
  CHECK(t.cols() == 4);
  CHECK(t(1, 2, 3) == 23);
  CHECK(t(1, 0, 2) == 14);
  CHECK(t(0, 2, 1) == 9);
  CHECK(t.row(1) == data.data() + 12);  // slab 1 of [2, 3, 4]

  const moe::tensor_view<int, 4> q(data.data(), 2, 1, 3, 4);
  CHECK(q.size() == 24);
  CHECK(q.row(1) == data.data() + 12);
  CHECK(q.extent[2] == 3);

  // Mixed integer types for extents.
  const moe::matrix_view<int> mixed(data.data(), std::size_t(3), moe::index_t(8));
  CHECK(mixed(2, 7) == 23);

  // A view of const from a view of non-const keeps data and extents.
  const moe::matrix_view<const int> cm = m;
  CHECK(cm.data == m.data);
  CHECK(cm.extent[0] == 6);
  CHECK(cm.extent[1] == 4);
  CHECK(cm(4, 2) == 18);
  static_assert(std::is_convertible_v<moe::matrix_view<int>, moe::matrix_view<const int>>);
  static_assert(!std::is_convertible_v<moe::matrix_view<const int>, moe::matrix_view<int>>);

  const moe::matrix_view<float> none;
  CHECK(none.data == nullptr);
  CHECK(none.empty());
  CHECK(moe::matrix_view<int>(data.data(), 0, 4).empty());
  CHECK_FALSE(m.empty());
}
