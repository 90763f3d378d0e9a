#!/usr/bin/env bash
# One command for a GPU session (GPU time is scarce): the gpu-labelled tests, moe_bench_cuda and the
# PyTorch reference on the same shapes, moe-train --device cuda against the host, compute-sanitizer
# memcheck and racecheck; a short table at the end, results and logs in OUT (default build/gpu-check).
#
#   scripts/gpu-check.sh [OUT]
#
# Two ways to get the binaries:
#   - built here (default): configures and builds the cuda preset (needs nvcc, cmake, ninja, doctest
#     and Google Benchmark);
#   - prebuilt (MOE_GPU_BIN=DIR): runs the binaries that scripts/gpu-pack.sh built and packed on
#     another x86-64 machine (the GPU machines have no doctest or Google Benchmark and no network).
#
# With the device tool (2026-12: 15 minutes of device time per session, the machine's start
# included; 10 minutes a call; at most 8 files come back from $OUT), after scripts/gpu-pack.sh here,
# one call with carry [".gpu"] and timeout_s 600:
#   MOE_GPU_BIN=.gpu/bin BUDGET_S=540 bash scripts/gpu-check.sh $OUT
# Steps run in the order STEPS names them (default: correctness first, then the numbers the issues'
# targets need, then the rest); with BUDGET_S each step's limit is cut to what is left of the budget
# and a step that would get under MIN_STEP_S (default 30) is skipped and listed as such, so the
# table always comes back before the call's limit. OUT receives at most five files: summary.txt (the
# table, also printed), logs.tar.gz (every step's full log, re-packed after each step, so a killed
# call still returns what ran), bench_targets.json, bench_rest.json, torch_cuda.json.
#
# Steps:
#   tests          the four gpu-labelled doctest binaries (device against host)
#   bench_targets  moe_bench_cuda: copy, dense FFN, each preset's layer, sorted/dropless permute and
#                  combine at uniform routing, expert GEMMs: what issue 5's CUDA targets are judged on
#   torch          benchmarks/torch_reference.py on the same shapes (bf16, d 2048, f 8192, 32k tokens)
#   trainer        tests/trainer/cuda_test.sh: moe-train --device cuda against --device host
#   bench_rest     moe_bench_cuda: everything bench_targets leaves out (routers, padded dispatch, Zipf
#                  dispatch, expert parallelism over NCCL)
#   sanitize       compute-sanitizer (SANITIZE_TOOLS, default memcheck racecheck) on each test binary
# env: STEPS, BUDGET_S, MIN_STEP_S, BENCH_MIN_TIME, TEST_TIMEOUT, TRAINER_TIMEOUT, BENCH_TIMEOUT,
#      TORCH_TIMEOUT, SANITIZE_TIMEOUT, SANITIZE_TOOLS, TORCH_ARGS.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-build/gpu-check}
mkdir -p "$out"
out=$(cd "$out" && pwd)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
steps=${STEPS:-tests bench_targets torch trainer bench_rest sanitize}
budget=${BUDGET_S:-0}
min_step=${MIN_STEP_S:-30}
declare -a table=()
gpu_tests=(cuda_primitives_test cuda_layer_test cuda_layer_modes_test cuda_expert_parallel_test)
# What issue 5's CUDA targets need (docs/benchmarks.md): the ceilings, the layers, the sorted
# dispatcher's permute and combine (vs_copy), the expert GEMMs. Google Benchmark 1.7 has no
# negative filter, so bench_rest names its families instead.
target_filter='^(copy|dense|layer|expert_gemm)/|^dispatch/[a-z_]+/(sorted|dropless)/.*skew:uniform'
rest_filter='^(router|ep)/|^dispatch/[a-z_]+/padded/|^dispatch/.*skew:zipf'

pack_logs() { tar -C "$logs" -czf "$out/logs.tar.gz.tmp" . && mv "$out/logs.tar.gz.tmp" "$out/logs.tar.gz"; }
summary() {
  {
    echo "==== gpu-check: $(head -n 1 "$logs/gpu.txt") ($((SECONDS))s)"
    [[ -s $logs/ldd.txt ]] && { echo "  missing libraries:"; cat "$logs/ldd.txt"; }
    printf '%s\n' "${table[@]}"
    grep -hE "^\[doctest\] (test cases|assertions)" "$logs"/test_*.log 2>/dev/null | sed 's/^/  /'
    grep -hE "^(TEST CASE|.*ERROR:|.*CHECK.*is NOT correct)" "$logs"/test_*.log 2>/dev/null | head -n 20 | cut -c1-200 | sed 's/^/  /'
    grep -HE "ERROR SUMMARY|RACECHECK SUMMARY" "$logs"/sanitize_*.log 2>/dev/null | sed "s|$logs/||; s/^/  /"
    [[ -f $logs/trainer_cuda.log ]] && grep -E "^(dense|switch|glam|st-moe)(/bf16|/fp16)?:|FAIL|Assertion" "$logs/trainer_cuda.log" | sed 's/^/  trainer /'
    for b in bench_targets bench_rest; do
      [[ -f $logs/$b.log ]] || continue
      echo "  $b:"
      grep -E "^(copy|dense|layer|router|dispatch|expert|ep)/|ERROR|error" "$logs/$b.log" | sed -E 's/ +/ /g' | cut -c1-170 | sed 's/^/    /'
    done
    if [[ -f $logs/torch_cuda.log ]]; then
      echo "  torch:"
      tail -n 40 "$logs/torch_cuda.log" | cut -c1-170 | sed 's/^/    /'
    fi
  } >"$out/summary.txt"
}

# limit_for <own limit>: the step's limit under the budget (0: no time left for it).
limit_for() {
  local own=$1
  ((budget > 0)) || { echo "$own"; return; }
  local left=$((budget - SECONDS - 10))
  ((left < min_step)) && { echo 0; return; }
  echo $((own < left ? own : left))
}

# run <label> <log> <own limit> <command...>: runs one step under its limit (cut to the budget), its
# output to the log, and records the outcome (124: ran past its limit; skipped: no budget left).
run() {
  local label=$1 log=$2 limit
  limit=$(limit_for "$3")
  shift 3
  if ((limit == 0)); then
    table+=("$(printf '  %-40s %-9s %5s  %s' "$label" skipped - "budget spent")")
    return 0
  fi
  local start=$SECONDS rc=0
  echo "== ${label} (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$logs/$log" 2>&1 || rc=$?
  local outcome="FAIL($rc)"
  ((rc == 0)) && outcome=ok
  ((rc == 77)) && outcome="skip(77)"  # no GPU visible
  table+=("$(printf '  %-40s %-9s %5ds  %s' "$label" "$outcome" $((SECONDS - start)) "$log")")
  pack_logs
  return "$rc"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvcc --version | tail -n 2
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
  nproc
} >"$logs/gpu.txt" 2>&1 || true

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
  for b in "$MOE_GPU_BIN"/*; do ldd "$b" | grep "not found" | sed "s|^|  $(basename "$b"): |"; done >"$logs/ldd.txt"
else
  bin_of() { echo "build/cuda/tests/cuda/$1"; }
  bench_bin=build/cuda/benchmarks/moe_bench_cuda
  train_bin=build/cuda/examples/moe-train
  run "configure (cuda preset)" configure.log 600 cmake --preset cuda -DMOE_BUILD_EXAMPLES=ON || true
  run "build" build.log 1800 cmake --build --preset cuda -j "$(nproc)" || true
fi

bench() {  # bench <name> <filter>
  run "moe_bench_cuda ($1)" "$1.log" "${BENCH_TIMEOUT:-400}" "$bench_bin" --benchmark_filter="$2" \
    --benchmark_min_time="${BENCH_MIN_TIME:-0.3}" --benchmark_out="$out/$1.json" --benchmark_out_format=json || true
}

for step in $steps; do
  case $step in
    tests)
      for t in "${gpu_tests[@]}"; do
        b=$(bin_of "$t")
        [[ -x $b ]] || { table+=("  $t: not built"); continue; }
        run "test $t" "test_$t.log" "${TEST_TIMEOUT:-180}" "$b" || true
      done ;;
    bench_targets) bench bench_targets "$target_filter" ;;
    bench_rest) bench bench_rest "$rest_filter" ;;
    torch)
      # shellcheck disable=SC2086
      run "torch_reference (cuda, bf16)" torch_cuda.log "${TORCH_TIMEOUT:-240}" python3 benchmarks/torch_reference.py \
        --device cuda --dtype bfloat16 --d-model 2048 --d-ff 8192 --tokens 32768 --experts 8 \
        --json "$out/torch_cuda.json" ${TORCH_ARGS:-} || true ;;
    trainer)
      if [[ -x $train_bin ]]; then
        run "trainer: cuda vs host" trainer_cuda.log "${TRAINER_TIMEOUT:-240}" bash tests/trainer/cuda_test.sh "$train_bin" python3 || true
      else
        table+=("  moe-train: not built")
      fi ;;
    sanitize)
      command -v compute-sanitizer >/dev/null 2>&1 || { table+=("  compute-sanitizer: not found"); continue; }
      for t in "${gpu_tests[@]}"; do
        b=$(bin_of "$t")
        [[ -x $b ]] || continue
        for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
          run "sanitizer $tool $t" "sanitize_${tool}_${t}.log" "${SANITIZE_TIMEOUT:-300}" \
            compute-sanitizer --tool "$tool" --error-exitcode 9 "$b" || true
        done
      done ;;
    *) table+=("  unknown step '$step' (tests bench_targets torch trainer bench_rest sanitize)") ;;
  esac
done

summary
pack_logs
echo
cat "$out/summary.txt"
