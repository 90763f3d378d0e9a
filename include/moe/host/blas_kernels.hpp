// moe/host/blas_kernels.hpp — which kernels the host's BLAS runs, and what to set when they use
// less of the CPU than it has.
//
// OpenBLAS's DYNAMIC_ARCH build (Debian's) picks its kernels when it loads, by the CPU's model
// number. On a model newer than the OpenBLAS release it can fall back to its oldest x86-64 kernels:
// OpenBLAS 0.3.21 on an Intel Xeon of family 6, model 207 (AVX2, FMA, AVX-512) runs "Prescott"
// (SSE3) kernels, and the host GEMMs run several times slower than with OPENBLAS_CORETYPE=SkylakeX
// (docs/benchmarks.md, "When OpenBLAS does not know the CPU"). The choice is made before main runs
// and cannot be changed after, so the library reports it and says what to set; it changes nothing.
// The reference programs (moe-train, moe-preset-tour, moe_bench_host) print the advice when there
// is one.
#pragma once

#include <string>
#include <string_view>

#if defined(MOE_HAVE_OPENBLAS)
#include <cblas.h>
#endif

namespace moe {

// The vector instructions of the CPU that matter to a BLAS's choice of kernels.
struct cpu_vector_features {
  bool avx2_fma = false;  // AVX2 and FMA3 (OpenBLAS's Haswell kernels and later)
  bool avx512 = false;    // AVX-512 F (OpenBLAS's SkylakeX kernels)
};

// What this CPU has (and its operating system enables: GCC's cpu tests check both). False for
// both off x86-64.
inline cpu_vector_features this_cpu_vector_features() {
  cpu_vector_features f;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  f.avx512 = f.avx2_fma && __builtin_cpu_supports("avx512f");
#endif
  return f;
}

namespace detail {

inline bool same_name_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

}  // namespace detail

// The advice for OpenBLAS kernels named `kernels` (openblas_get_corename) on a CPU with features f:
// empty when the kernels use AVX2/FMA or the CPU has neither; otherwise what to set. Only the
// x86-64 kernel families without AVX2 count (OpenBLAS's choice among AVX2 and AVX-512 kernels, e.g.
// Haswell kernels on some AVX-512 CPUs, can be deliberate and is left alone).
inline std::string openblas_kernel_advice(std::string_view kernels, cpu_vector_features f) {
  static constexpr std::string_view without_avx2[] = {
      "Katmai",    "Coppermine", "Northwood",  "Prescott", "Banias",      "Atom",      "Core2",
      "Penryn",    "Dunnington", "Nehalem",    "Athlon",   "Opteron",     "Opteron_SSE3",
      "Barcelona", "Nano",       "Sandybridge", "Bobcat",  "Bulldozer",   "Piledriver", "Steamroller",
      "Unknown"};
  if (!f.avx2_fma) return {};
  bool old = false;
  for (std::string_view name : without_avx2) old |= detail::same_name_ignoring_case(kernels, name);
  if (!old) return {};
  const std::string suggested = f.avx512 ? "SkylakeX" : "Haswell";
  return "OpenBLAS runs its " + std::string(kernels) + " kernels (no AVX2) on a CPU with AVX2/FMA" +
         (f.avx512 ? " and AVX-512" : "") +
         ": it did not recognise the CPU model. Host GEMMs run several times slower than they can; set "
         "OPENBLAS_CORETYPE=" + suggested + " in the environment before starting the program.";
}

// What runs the host GEMMs.
struct host_blas_report {
  std::string library;  // openblas_get_config() for OpenBLAS; "CBLAS (not OpenBLAS)"; "portable kernel"
  std::string kernels;  // OpenBLAS's kernel family (openblas_get_corename), empty for the others
  std::string advice;   // empty, or what to set (openblas_kernel_advice)
};

inline host_blas_report host_blas_info() {
  host_blas_report r;
#if defined(MOE_HAVE_OPENBLAS)
  r.library = openblas_get_config();
  r.kernels = openblas_get_corename();
  r.advice = openblas_kernel_advice(r.kernels, this_cpu_vector_features());
#elif defined(MOE_HAVE_CBLAS)
  r.library = "CBLAS (not OpenBLAS)";
#else
  r.library = "portable kernel (no CBLAS found at configure time)";
#endif
  return r;
}

}  // namespace moe
