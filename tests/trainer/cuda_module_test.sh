#!/usr/bin/env bash
# moe-train in a CUDA build keeps its CUDA half in a module it loads for --device cuda
# (examples/moe_train_cuda_loader.cpp): the executable does not link the CUDA libraries, the module
# exports its entry only, --device cuda goes through the module (trains on a GPU, or exits 4 saying
# no device is usable), and a moe-train without its module still trains on the host and refuses
# --device cuda with one clear line.   usage: cuda_module_test.sh <moe-train> <module>
set -uo pipefail
bin=$1
module=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}
tiny=(--steps 1 --batch 8 --seq 32 --d-model 32 --layers 1 --heads 2 --experts 4 --eval-every 1 --eval-batches 1
      --no-progress)

# 1. What the executable and the module link and export.
needed=$(readelf -d "$bin" | awk '/NEEDED/ {print $NF}')
if grep -Eq 'cublas|cudart|nccl' <<<"$needed"; then
  fail "moe-train links CUDA libraries itself: $(tr '\n' ' ' <<<"$needed")"
else
  echo "ok:   moe-train's own libraries: $(tr '\n' ' ' <<<"$needed")"
fi
[[ -f $module ]] || fail "no module at $module"
# Mangled names: the trainer's and the library's own functions, vtables and type information are
# hidden (std:: templates instantiated on their types stay visible, as libstdc++ declares them).
exported=$(nm -D --defined-only "$module" | awk '{print $3}')
own=$(grep -E '^_Z(T[VIS])?NK?(7trainer|3moe)[0-9]' <<<"$exported")
if ! grep -qx 'moe_train_cuda_module_entry' <<<"$exported"; then
  fail "the module does not export moe_train_cuda_module_entry"
elif [[ -n $own ]]; then
  fail "the module exports the trainer's or the library's own symbols: $(head -3 <<<"$own" | c++filt)"
else
  echo "ok:   the module exports moe_train_cuda_module_entry and none of trainer::'s or moe::'s own symbols"
fi

# 2. --device cuda through the module: trains (a GPU) or exits 4 naming the cause (none).
status=0
"$bin" --device cuda "${tiny[@]}" >"$tmp/out" 2>"$tmp/err" || status=$?
if ((status == 0)); then
  echo "ok:   --device cuda trained a step on the GPU"
elif ((status == 4)) && grep -q 'no usable CUDA device' "$tmp/err"; then
  echo "ok:   --device cuda loaded the module and found no device: $(cat "$tmp/err")"
else
  fail "--device cuda exited $status: $(cat "$tmp/err")"
fi

# 3. A moe-train without its module: host runs work, --device cuda is refused with one line.
mkdir "$tmp/alone" && cp "$bin" "$tmp/alone/moe-train"
if ! "$tmp/alone/moe-train" "${tiny[@]}" >"$tmp/out" 2>"$tmp/err" || ! grep -q 'step' "$tmp/out"; then
  fail "moe-train without its module did not train on the host: $(cat "$tmp/err")"
else
  echo "ok:   moe-train without its module trains on the host"
fi
status=0
"$tmp/alone/moe-train" --device cuda "${tiny[@]}" >"$tmp/out" 2>"$tmp/err" || status=$?
if ((status != 1)) || [[ $(wc -l <"$tmp/err") -ne 1 ]] || [[ -s $tmp/out ]] ||
  ! grep -q "cannot load the CUDA trainer: $tmp/alone/$(basename "$module")" "$tmp/err"; then
  fail "moe-train without its module, --device cuda: exit $status (want 1), stderr: $(cat "$tmp/err")"
else
  echo "ok:   without its module, --device cuda -> $(cat "$tmp/err")"
fi

if ((failures)); then
  echo "$failures check(s) failed"
  exit 1
fi
echo "moe-train loads its CUDA half as a module"
