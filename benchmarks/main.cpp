// benchmarks/main.cpp — moe_bench_host: Google Benchmark binary of the host execution space.
//
//   moe_bench_host [--smoke] [--benchmark_filter=REGEX] [--benchmark_repetitions=N] [--benchmark_min_time=SECONDS] ...
//
// --smoke registers every family at tiny sizes (d_model 64, d_ff 128, 512 tokens, 8 experts): CI runs
// it to show that every benchmark runs; its timings mean nothing.
// Families (see each source file): host/, router/, dispatch/, expert_gemm/, dense/, layer/, ep/. docs/benchmarks.md
// says how the numbers in it were taken. The context block records the thread counts and the BLAS.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common.hpp"

#if defined(MOE_HAVE_CBLAS)
#include <cblas.h>
#endif

namespace {

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moe_bench;
  // Our own flag first (Google Benchmark rejects flags it does not know).
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--smoke") == 0)
      sizes() = bench_sizes::tiny();
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  benchmark::AddCustomContext("moe_version", std::to_string(MOE_VERSION_MAJOR) + "." +
                                                 std::to_string(MOE_VERSION_MINOR) + "." +
                                                 std::to_string(MOE_VERSION_PATCH));
  benchmark::AddCustomContext("moe_host_threads", std::to_string(space().threads()));
  benchmark::AddCustomContext("sizes", std::string(sizes().smoke ? "smoke (timings meaningless)" : "full") +
                                           ": d_model " + std::to_string(sizes().d_model) + ", d_ff " +
                                           std::to_string(sizes().d_ff));
  const moe::host_blas_report blas = moe::host_blas_info();
  std::string blas_context = blas.library;
#if defined(OPENBLAS_VERSION)
  blas_context += ", " + std::to_string(openblas_get_num_threads()) + " threads";
#endif
  benchmark::AddCustomContext("blas", blas_context);
  benchmark::AddCustomContext("OPENBLAS_CORETYPE", env_or("OPENBLAS_CORETYPE", "(unset)"));
  if (!blas.advice.empty()) {
    benchmark::AddCustomContext("blas_warning", blas.advice);
    std::fprintf(stderr, "moe_bench_host: warning: %s\n", blas.advice.c_str());
  }
  benchmark::AddCustomContext("huge_pages", moe::host_huge_pages().reason);
  benchmark::AddCustomContext("compiler", __VERSION__);

  // Run order: the cheap families first.
  register_host_space_benchmarks();
  register_dense_benchmarks();
  register_routing_benchmarks();
  register_dispatch_benchmarks();
  register_expert_benchmarks();
  register_layer_top1_benchmarks();
  register_layer_top2_benchmarks();
  register_expert_parallel_benchmarks();

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
