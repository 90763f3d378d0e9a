#!/usr/bin/env bash
# moe-train refuses bad input with one line on stderr, nothing on stdout (no work done) and a
# non-zero exit status.   usage: cli_test.sh <moe-train>
set -uo pipefail
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/empty.txt"
mkdir -p "$tmp/no_checkpoint"
failures=0

# expect <exit status> <regex the stderr line must match> <args...>
expect() {
  local want=$1 pattern=$2
  shift 2
  local status=0
  "$bin" "$@" >"$tmp/out" 2>"$tmp/err" || status=$?
  local lines
  lines=$(wc -l <"$tmp/err")
  if [[ $status -ne $want ]] || ! grep -Eq -- "$pattern" "$tmp/err" || [[ $lines -ne 1 ]] || [[ -s "$tmp/out" ]]; then
    echo "FAIL: moe-train $* -> exit $status (want $want), $lines stderr line(s):"
    sed 's/^/    /' "$tmp/err" "$tmp/out"
    failures=$((failures + 1))
  else
    echo "ok:   moe-train $*  ->  $(cat "$tmp/err")"
  fi
}

expect 2 'unknown flag' --bogus
expect 2 "--steps: 'abc' is not an integer" --steps abc
expect 2 '--steps: missing value' --steps
expect 2 "--steps: '0' is not an integer in \[1," --steps 0
expect 2 "--preset: 'foo' is not one of dense, switch, glam, st-moe" --preset foo
expect 2 "--device: 'gpu' is not one of host, cuda" --device gpu
expect 2 "--precision: 'fp8' is not one of fp32, bf16, fp16" --precision fp8
expect 2 "--loss-scale: '3' is not a power of two" --precision fp16 --loss-scale 3
expect 2 '--loss-scale: only fp16 scales the loss \(this run has --precision bf16\)' --precision bf16 --loss-scale 1024
expect 2 "--grouped-gemm: 'cutlass' is not one of device, cublas" --device cuda --grouped-gemm cutlass
expect 2 '--grouped-gemm: it chooses how --device cuda runs the expert GEMMs \(this run has --device host\)' --grouped-gemm cublas
expect 2 '--grouped-gemm: it applies to the MoE layers, and the dense preset has none' --preset dense --device cuda --grouped-gemm cublas
expect 2 '--precision bf16: it applies to the MoE layers, and the dense preset has none' --preset dense --precision bf16
expect 2 "--lr: '-1' is not a number" --lr -1
expect 2 '--heads: 5 does not divide --d-model 96' --heads 5 --d-model 96
expect 2 '--experts: 1 is fewer than the 2 experts per token of --preset glam' --preset glam --experts 1
expect 2 '--group-size: 100 does not divide the 1024 tokens' --group-size 100
expect 2 '--resume: needs --checkpoint' --resume
expect 2 '--ranks: 3 does not divide --batch 16' --ranks 3
expect 2 '--ranks: 16 does not divide --experts 8' --ranks 16 --batch 32
expect 2 '--group-size: 512 does not divide the 256 tokens of a batch share \(per rank\)' --ranks 4 --group-size 512
expect 2 '--resume: takes no value' --resume=yes --checkpoint "$tmp/x"
expect 2 "--init-scale: '0' is not a number in" --init-scale 0
expect 2 "--data-seed: '-1' is not an integer" --data-seed -1
expect 2 "--jitter: '1' is not a number in \[0.0+, 0.99" --jitter 1
expect 2 "--capacity-factor: 'x' is not a number" --capacity-factor x
expect 2 "--balance-loss: '-0.1' is not a number" --balance-loss -0.1
expect 2 '--z-loss: the switch preset.s MoE layers have no router z-loss \(st-moe.s do\)' --z-loss 1e-3
expect 2 '--balance-loss: it applies to the MoE layers, and the dense preset has none' --preset dense --balance-loss 0
expect 2 "--expert-dropout: '0.99' is not a number in" --expert-dropout 0.99
expect 2 '--expert-dropout: it applies to the MoE layers, and the dense preset has none' \
  --preset dense --expert-dropout 0.1
expect 2 "--dropout: '0.99' is not a number in" --dropout 0.99
expect 2 "--dropout: '-0.1' is not a number in" --preset dense --dropout -0.1
expect 2 "--dropout: 'nan' is not a number in" --dropout nan
expect 2 "--router-precision: 'fp16' is not one of fp32, bf16" --router-precision fp16
expect 2 '--router-precision: it applies to the MoE layers, and the dense preset has none' \
  --preset dense --router-precision bf16
expect 2 '--freeze router/experts: it applies to the MoE layers' --preset dense --freeze router
expect 2 "--freeze: '' is not one of embedding" --freeze experts,
expect 2 '--freeze: every parameter group is frozen, nothing trains' --freeze moe,non-moe
expect 2 "--train-sequences: '0' is not an integer in" --train-sequences 0
expect 2 '--init-from: empty directory name' --init-from ""
expect 3 "no checkpoint at '$tmp/no_checkpoint/checkpoint.bin'" --init-from "$tmp/no_checkpoint"
expect 1 "--data: cannot open '$tmp/missing.txt'" --data "$tmp/missing.txt"
expect 1 "--data: '$tmp/empty.txt' is empty" --data "$tmp/empty.txt"
expect 3 'no checkpoint at' --resume --checkpoint "$tmp/no_checkpoint"

if ((failures)); then
  echo "$failures case(s) failed"
  exit 1
fi
echo "all bad-input cases refused"
