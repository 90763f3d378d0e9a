#!/usr/bin/env bash
# One command for a GPU session (GPU time is scarce): builds with CUDA, runs the gpu-labelled tests,
# compute-sanitizer memcheck and racecheck on them, moe_bench_cuda and the PyTorch reference on the
# same shapes, writes full logs to OUT (default build/gpu-check) and prints a short table at the end.
#
#   scripts/gpu-check.sh [OUT]          (env: BENCH_FILTER, BENCH_MIN_TIME, SKIP_SANITIZE=1, SKIP_TORCH=1)
#
# Needs nvcc, cmake, ninja, doctest and Google Benchmark (the GPU machines' image has nvcc, CMake,
# ninja and PyTorch; doctest and benchmark come from apt where it works, else from the carried tree).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-build/gpu-check}
mkdir -p "$out"
declare -a table=()

# run <label> <log> <command...>: runs one step, its output to OUT/<log>, and records the outcome.
run() {
  local label=$1 log=$2
  shift 2
  local start=$SECONDS rc=0
  echo "== ${label}: $*"
  "$@" >"$out/$log" 2>&1 || rc=$?
  table+=("$(printf '  %-38s %-8s %5ds  %s' "$label" "$([[ $rc == 0 ]] && echo ok || echo "FAIL($rc)")" \
    $((SECONDS - start)) "$out/$log")")
  return "$rc"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/gpu.txt" 2>&1 || true
nvcc --version >>"$out/gpu.txt" 2>&1 || true

run "configure (cuda preset)" configure.log cmake --preset cuda -DMOE_BUILD_EXAMPLES=ON || true
run "build" build.log cmake --build --preset cuda -j "$(nproc)" || true
run "ctest -L gpu" ctest_gpu.log ctest --preset cuda -L gpu --output-on-failure || true
run "ctest (everything else)" ctest_rest.log ctest --preset cuda -LE gpu -j "$(nproc)" --output-on-failure || true

if [[ ${SKIP_SANITIZE:-0} != 1 ]] && command -v compute-sanitizer >/dev/null 2>&1; then
  for t in cuda_primitives_test cuda_layer_test cuda_layer_modes_test cuda_expert_parallel_test; do
    bin=build/cuda/tests/cuda/$t
    [[ -x $bin ]] || continue
    for tool in memcheck racecheck; do
      run "sanitizer $tool $t" "sanitize_${tool}_${t}.log" compute-sanitizer --tool "$tool" --error-exitcode 9 "$bin" || true
    done
  done
fi

# The two ceilings first (copy bandwidth, dense bf16 GEMMs), then the layers; JSON for the docs.
run "moe_bench_cuda" bench_cuda.log build/cuda/benchmarks/moe_bench_cuda \
  --benchmark_filter="${BENCH_FILTER:-.}" --benchmark_min_time="${BENCH_MIN_TIME:-0.5}" \
  --benchmark_out="$out/bench_cuda.json" --benchmark_out_format=json || true
if [[ ${SKIP_TORCH:-0} != 1 ]]; then
  run "torch_reference (cuda, bf16)" torch_cuda.log python3 benchmarks/torch_reference.py --device cuda \
    --dtype bfloat16 --d-model 2048 --d-ff 8192 --tokens 32768 --experts 8 --json "$out/torch_cuda.json" || true
fi

echo
echo "==== gpu-check: $(head -n 1 "$out/gpu.txt")"
printf '%s\n' "${table[@]}"
grep -E "tests passed|tests failed" "$out/ctest_gpu.log" 2>/dev/null | sed 's/^/  gpu tests: /'
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$out"/sanitize_*.log 2>/dev/null | sed 's/^/  /'
if [[ -f $out/bench_cuda.log ]]; then
  echo "  layer benchmarks (vs_dense):"
  grep -E "^layer/" "$out/bench_cuda.log" | sed -E 's/ +/ /g' | cut -c1-160 | sed 's/^/    /'
fi
