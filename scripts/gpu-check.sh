#!/usr/bin/env bash
# One command for a GPU session (GPU time is scarce): runs the gpu-labelled tests, compute-sanitizer
# memcheck and racecheck on them, moe_bench_cuda and the PyTorch reference on the same shapes, writes
# full logs to OUT (default build/gpu-check) and prints a short table at the end.
#
#   scripts/gpu-check.sh [OUT]
#
# Two ways to get the binaries:
#   - built here (default): configures and builds the cuda preset (needs nvcc, cmake, ninja, doctest
#     and Google Benchmark);
#   - prebuilt (MOE_GPU_BIN=DIR): runs the binaries that scripts/gpu-pack.sh built and packed on
#     another x86-64 machine (the GPU machines have no doctest or Google Benchmark and no network).
# With the device tool (10 minutes a call, 30 a session), after scripts/gpu-pack.sh here:
#   1. MOE_GPU_BIN=.gpu/bin STEPS="tests trainer" bash scripts/gpu-check.sh $OUT        (carry .gpu)
#   2. ... STEPS="bench torch" BENCH_TIMEOUT=420 ...                                    (the numbers)
#   3. ... STEPS=sanitize SANITIZE_TIMEOUT=120 ...                  (memcheck and racecheck, slow)
# env: STEPS (space-separated subset of: tests trainer sanitize bench torch; default all), BENCH_FILTER,
#      BENCH_MIN_TIME, TEST_TIMEOUT, SANITIZE_TIMEOUT, SANITIZE_TOOLS, BENCH_TIMEOUT, TORCH_ARGS.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-build/gpu-check}
mkdir -p "$out"
steps=" ${STEPS:-tests trainer sanitize bench torch} "
declare -a table=()
gpu_tests=(cuda_primitives_test cuda_layer_test cuda_layer_modes_test cuda_expert_parallel_test)

# run <label> <log> <timeout_s> <command...>: runs one step under a time limit, its output to
# OUT/<log>, and records the outcome (124: ran past its limit).
run() {
  local label=$1 log=$2 limit=$3
  shift 3
  local start=$SECONDS rc=0
  echo "== ${label}: $*"
  timeout --kill-after=10 "$limit" "$@" >"$out/$log" 2>&1 || rc=$?
  table+=("$(printf '  %-40s %-9s %5ds  %s' "$label" "$([[ $rc == 0 ]] && echo ok || echo "FAIL($rc)")" \
    $((SECONDS - start)) "$log")")
  return "$rc"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvcc --version | tail -n 2
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
} >"$out/gpu.txt" 2>&1 || true

if [[ -n ${MOE_GPU_BIN:-} ]]; then
  bin_of() { echo "$MOE_GPU_BIN/$1"; }
  bench_bin=$MOE_GPU_BIN/moe_bench_cuda
  train_bin=$MOE_GPU_BIN/moe-train
  # cuBLAS and NCCL: the toolkit's, else the PyTorch venv's wheels (nvidia-*-cu13).
  wheel_libs=$(python3 -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null |
               xargs -r -I{} find {} -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u)
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib "$MOE_GPU_BIN/../lib" $wheel_libs; do
    [[ -d $d ]] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d
  done
  export LD_LIBRARY_PATH
  for b in "$MOE_GPU_BIN"/*; do ldd "$b" | grep "not found" | sed "s|^|  $(basename "$b"): |"; done >"$out/ldd.txt"
else
  bin_of() { echo "build/cuda/tests/cuda/$1"; }
  bench_bin=build/cuda/benchmarks/moe_bench_cuda
  train_bin=build/cuda/examples/moe-train
  run "configure (cuda preset)" configure.log 600 cmake --preset cuda -DMOE_BUILD_EXAMPLES=ON || true
  run "build" build.log 1800 cmake --build --preset cuda -j "$(nproc)" || true
fi

if [[ $steps == *" tests "* ]]; then
  for t in "${gpu_tests[@]}"; do
    b=$(bin_of "$t")
    [[ -x $b ]] || { table+=("  $t: not built"); continue; }
    run "test $t" "test_$t.log" "${TEST_TIMEOUT:-300}" "$b" || true
  done
fi

# moe-train --device cuda against --device host, each preset (loss gap, tokens/s).
if [[ $steps == *" trainer "* && -x $train_bin ]]; then
  run "trainer: cuda vs host" trainer_cuda.log "${TEST_TIMEOUT:-300}" bash tests/trainer/cuda_test.sh "$train_bin" python3 || true
fi

if [[ $steps == *" sanitize "* ]] && command -v compute-sanitizer >/dev/null 2>&1; then
  for t in "${gpu_tests[@]}"; do
    b=$(bin_of "$t")
    [[ -x $b ]] || continue
    for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
      run "sanitizer $tool $t" "sanitize_${tool}_${t}.log" "${SANITIZE_TIMEOUT:-300}" \
        compute-sanitizer --tool "$tool" --error-exitcode 9 "$b" || true
    done
  done
fi

# The two ceilings first (copy bandwidth, dense bf16 GEMMs), then the layers; JSON for the docs.
if [[ $steps == *" bench "* ]]; then
  run "moe_bench_cuda" bench_cuda.log "${BENCH_TIMEOUT:-400}" "$bench_bin" \
    --benchmark_filter="${BENCH_FILTER:-.}" --benchmark_min_time="${BENCH_MIN_TIME:-0.5}" \
    --benchmark_out="$out/bench_cuda.json" --benchmark_out_format=json || true
fi
if [[ $steps == *" torch "* ]]; then
  # shellcheck disable=SC2086
  run "torch_reference (cuda, bf16)" torch_cuda.log "${TORCH_TIMEOUT:-300}" python3 benchmarks/torch_reference.py \
    --device cuda --dtype bfloat16 --d-model 2048 --d-ff 8192 --tokens 32768 --experts 8 \
    --json "$out/torch_cuda.json" ${TORCH_ARGS:-} || true
fi

echo
echo "==== gpu-check: $(head -n 1 "$out/gpu.txt")"
[[ -s $out/ldd.txt ]] && { echo "  missing libraries:"; cat "$out/ldd.txt"; }
printf '%s\n' "${table[@]}"
grep -hE "^\[doctest\] (test cases|assertions)" "$out"/test_*.log 2>/dev/null | sed 's/^/  /'
grep -HE "ERROR SUMMARY|RACECHECK SUMMARY" "$out"/sanitize_*.log 2>/dev/null | sed "s|$out/||; s/^/  /"
[[ -f $out/trainer_cuda.log ]] && grep -E "^(dense|switch|glam|st-moe)(/bf16|/fp16)?:|FAIL" "$out/trainer_cuda.log" | sed 's/^/  trainer /'
if [[ -f $out/bench_cuda.log ]]; then
  echo "  benchmarks:"
  grep -E "^(copy|dense|layer|router|dispatch|expert|ep)/" "$out/bench_cuda.log" | sed -E 's/ +/ /g' | cut -c1-170 | sed 's/^/    /'
fi
if [[ -f $out/torch_cuda.log ]]; then
  echo "  torch:"
  tail -n 30 "$out/torch_cuda.log" | cut -c1-170 | sed 's/^/    /'
fi
