#!/usr/bin/env bash
# The test command (README, CI's .ci/run): installs missing dependencies, then
#   1. Release build (preset `default`; CUDA targets too when nvcc is found, their host code at -O1,
#      and without the kernel emulator's unit tests, which phases 2 and 3 build and run), every ctest test;
#   2. ASan + UBSan build of the host tests (preset `asan`: no CUDA, no benchmarks or examples), ctest;
#   3. ThreadSanitizer build of the kernel emulator's tests (preset `tsan`: the emu targets only), ctest
#      -L emu: every CUDA thread a TSan fiber, so a missing barrier in a kernel is a reported race.
# Every phase always runs, so one report shows everything that fails; the exit status is non-zero
# when any step failed. Runs from any directory; build trees go to build/default, build/asan and build/tsan.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/install_deps.sh
source scripts/install_deps.sh

jobs=$(nproc)
declare -a summary=()
failed=0

# step <phase/step label> <command...>: runs and times one step; records the outcome.
step() {
  local label=$1
  shift
  echo
  echo "==== ${label}: $*"
  local start=$SECONDS rc=0
  "$@" || rc=$?
  local took=$((SECONDS - start))
  if ((rc == 0)); then
    summary+=("$(printf '  %-34s ok      %4ds' "$label" "$took")")
  else
    summary+=("$(printf '  %-34s FAILED  %4ds  (exit %d)' "$label" "$took" "$rc")")
    failed=1
  fi
  return "$rc"
}

# phase <preset> [-Dvar=value...]: configure, build, test; a failed step skips the rest of its phase only.
phase() {
  local preset=$1
  shift
  step "${preset}: configure" cmake --preset "$preset" "$@" || return 0
  step "${preset}: build" cmake --build --preset "$preset" -j "$jobs" || return 0
  step "${preset}: test" ctest --preset "$preset" -j "$jobs" --timeout 900 || return 0
}

total_start=$SECONDS
step "dependencies" moe_install_deps || true
moe_find_nvcc
if command -v nvcc >/dev/null 2>&1; then
  echo "nvcc: $(command -v nvcc) (CUDA code is compiled; no GPU is needed)"
else
  echo "nvcc: not found (CUDA targets are skipped)"
fi
# Test executables size their thread pools from this; ctest runs several at once.
export MOE_NUM_THREADS=${MOE_NUM_THREADS:-2}

# The kernel emulator's unit tests are left to the sanitizer phases, which run every case of them
# with more checks: compiling the emulated kernels a third time cost about 70 s of CI's Release build.
# The CUDA translation units' host code is compiled at -O1 (nvcc's -O is the host compiler's level;
# device code is optimised as always): without a GPU they are compile checks, and the host compiler's
# -O3 was half of their compile time (cuda_layer_test.cu: 38 s of 75 at -O3, 20 s of 50 at -O1).
# A GPU machine builds with the `cuda` preset (scripts/gpu-pack.sh), at -O3.
phase default -DMOE_EMU_UNIT_TESTS=OFF "-DCMAKE_CUDA_FLAGS_RELEASE=-O1 -DNDEBUG"
phase asan
phase tsan

echo
echo "==== summary ($((SECONDS - total_start))s in all, ${jobs} jobs)"
printf '%s\n' "${summary[@]}"
if ((failed)); then
  echo "FAILED (ctest logs: build/<preset>/Testing/Temporary/LastTest.log)"
  exit 1
fi
echo "all passed"
