#!/usr/bin/env bash
# moe-train --device cuda against --device host: each preset (and glam in bf16, st-moe in fp16; glam
# in both also with --grouped-gemm cublas) trains 20 steps with the same seed on both; the first step's loss (same initial weights, same batch) must
# agree to 1e-4 relative, every later step within 0.02 nats (the runs drift apart through summation order and Adam's
# normalisation of tiny gradients), and the CUDA run's loss must fall like the host's.
# Skipped (77) when the CUDA run finds no GPU (moe-train exits 4). With MOE_CUDA_TEST_EMULATED=1 the
# binary is moe-train-emu (tests/emu: --device cuda on the host kernel emulator).
#   usage: cuda_test.sh <moe-train> <python3>
set -uo pipefail
bin=$1
py=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=(--steps 20 --batch 8 --seq 32 --d-model 32 --layers 2 --heads 2 --experts 4 --eval-every 10
      --eval-batches 2 --lr 1e-2 --no-progress)
# compare_to_host <label> <host log> <cuda log> <step-1 relative limit> <nats limit>: same steps; step
# 1 equal to the first limit; every step's loss and validation loss within the second; the cuda
# loss falls.
compare_to_host() {
  "$py" - "$@" <<'PY'
import json, sys
label, step1, limit = sys.argv[1], float(sys.argv[4]), float(sys.argv[5])
host = [json.loads(l) for l in open(sys.argv[2])]
cuda = [json.loads(l) for l in open(sys.argv[3])]
assert [r["step"] for r in cuda] == [r["step"] for r in host] == list(range(1, 21)), f"{label}: one line per step"
h0, c0 = host[0]["loss"], cuda[0]["loss"]
assert abs(h0 - c0) <= step1 * abs(h0), f"{label}: step 1 loss host {h0} vs cuda {c0}"
worst = max(abs(h["loss"] - c["loss"]) for h, c in zip(host, cuda))
assert worst <= limit, f"{label}: losses drift {worst:.4f} nats apart (limit {limit})"
for h, c in zip(host, cuda):
    if "val_loss" in h:
        assert abs(h["val_loss"] - c["val_loss"]) <= limit, f"{label}: val loss {h['val_loss']} vs {c['val_loss']}"
assert cuda[-1]["loss"] < cuda[0]["loss"] - 0.3, f"{label}: cuda loss did not fall ({c0} -> {cuda[-1]['loss']})"
rate = lambda rows: sum(r["tokens_per_s"] for r in rows[5:]) / len(rows[5:])
print(f"{label}: step 1 {h0:.5f} (host) {c0:.5f} (cuda); worst step gap {worst:.5f}; "
      f"tokens/s host {rate(host):.0f}, cuda {rate(cuda):.0f}")
PY
}

# check_layers_built <name> <stdout>: the run built MoE layers of the precision <name> asks for (its
# header names the element type of the layers built: a float32 run prints no precision line). The
# losses alone could not tell a float32 run from a bf16 one within the 16-bit limits below.
check_layers_built() {
  local want=
  [[ $1 == */* ]] && want=${1#*/} && want=${want%% *}
  local got
  got=$(sed -n 's/^  precision MoE layers \([a-z0-9]*\) .*/\1/p' "$2")
  [[ $got == "$want" ]] || { echo "FAIL: $1 built MoE layers '${got:-float32}', not '${want:-float32}'"; return 1; }
}

# read_name <name>: name is preset[/bf16|/fp16]; sets preset, extra (the --precision flag) and the
# limits step1 and limit. 16-bit MoE layers (float32 masters; fp16 with loss scaling) on both spaces
# get 1e-3 at step 1 (16-bit roundings of the layers' outputs may differ by one unit) and 0.05 nats
# after.
read_name() {
  preset=${1%/*}
  extra=()
  step1=1e-4
  limit=0.02
  if [[ $1 == */* ]]; then
    extra=(--precision "${1#*/}")
    step1=1e-3
    limit=0.05
  fi
}

for name in dense switch glam st-moe glam/bf16 st-moe/fp16; do
  read_name "$name"
  "$bin" --preset "$preset" --device cuda "${args[@]}" "${extra[@]}" --log "$tmp/$preset.cuda.jsonl" >"$tmp/$preset.cuda.out" 2>&1
  rc=$?
  if [[ $rc == 4 ]]; then
    cat "$tmp/$preset.cuda.out"
    exit 77
  fi
  [[ $rc == 0 ]] || { cat "$tmp/$preset.cuda.out"; echo "FAIL: $name --device cuda exited $rc"; exit 1; }
  check_layers_built "$name" "$tmp/$preset.cuda.out" || exit 1
  "$bin" --preset "$preset" --device host "${args[@]}" "${extra[@]}" --log "$tmp/$preset.host.jsonl" >"$tmp/$preset.host.out" 2>&1 ||
    { cat "$tmp/$preset.host.out"; echo "FAIL: $name --device host"; exit 1; }
  compare_to_host "$name" "$tmp/$preset.host.jsonl" "$tmp/$preset.cuda.jsonl" "$step1" "$limit" || exit 1
  # The expert GEMMs through cuBLAS per expert, offsets read on the host (--grouped-gemm cublas):
  # the same training within the same limits.
  if [[ $preset == glam ]]; then
    "$bin" --preset "$preset" --device cuda --grouped-gemm cublas "${args[@]}" "${extra[@]}" \
      --log "$tmp/$preset.cublas.jsonl" >"$tmp/$preset.cublas.out" 2>&1 ||
      { cat "$tmp/$preset.cublas.out"; echo "FAIL: $name --grouped-gemm cublas"; exit 1; }
    grep -q "experts: cuBLAS per expert" "$tmp/$preset.cublas.out" ||
      { cat "$tmp/$preset.cublas.out"; echo "FAIL: $name --grouped-gemm cublas: the header names another path"; exit 1; }
    compare_to_host "$name --grouped-gemm cublas" "$tmp/$preset.host.jsonl" "$tmp/$preset.cublas.jsonl" "$step1" \
      "$limit" || exit 1
  fi
done

# Fine-tuning on cuda: the parameters of a host-pretrained Switch checkpoint, on other data, with
# the experts frozen (their weight-gradient GEMMs skipped on the device), expert dropout and dropout
# elsewhere (the same masks on both spaces: they are keyed by position, not drawn in sequence).
"$bin" --preset switch --device host "${args[@]}" --checkpoint "$tmp/pre" --checkpoint-every 20 >/dev/null 2>&1 ||
  { echo "FAIL: switch pretraining for the fine-tuning case"; exit 1; }
ft=(--preset switch "${args[@]}" --init-from "$tmp/pre" --data-seed 2 --freeze experts --expert-dropout 0.2
    --dropout 0.1)
for space in cuda host; do
  "$bin" "${ft[@]}" --device $space --log "$tmp/ft.$space.jsonl" >"$tmp/ft.$space.out" 2>&1 ||
    { cat "$tmp/ft.$space.out"; echo "FAIL: switch fine-tuning --device $space"; exit 1; }
done
compare_to_host "switch fine-tuned (experts frozen)" "$tmp/ft.host.jsonl" "$tmp/ft.cuda.jsonl" 1e-4 0.02 || exit 1

# --ranks 2 on cuda (one GPU per rank, NCCL): with two GPUs it must follow the host's two-rank run;
# with fewer it must refuse, naming the GPUs it needs. On the kernel emulator
# (MOE_CUDA_TEST_EMULATED=1, moe-train-emu) the GPUs are MOE_EMU_DEVICES emulated ones with NCCL
# emulated between them.
if [[ ${MOE_CUDA_TEST_EMULATED:-0} == 1 ]]; then
  gpus=${MOE_EMU_DEVICES:-1}
  where="emulated GPUs"
else
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  where="GPUs"
fi
if [[ ${gpus:-0} -ge 2 ]]; then
  # The 16-bit runs with the single-GPU runs' limits. st-moe/fp16 overflows on rank 1 alone at step
  # 5 (+inf written into its own expert gradient): the gradient norm, summed over the ranks through
  # NCCL, is non-finite on both, so both skip that update and keep one loss scale. Switch trains with
  # its router frozen (the ranks then skip the router's gradient exchange) and with dropout (masks
  # keyed by global position on every rank).
  for name in switch st-moe glam/bf16 st-moe/fp16; do
    read_name "$name"
    [[ $name == */fp16 ]] && extra+=(--inject-inf-at-step 5 --inject-inf-rank 1)
    [[ $name == switch ]] && extra+=(--freeze router --dropout 0.1 --expert-dropout 0.2)
    "$bin" --preset "$preset" --device cuda --ranks 2 "${args[@]}" "${extra[@]}" --log "$tmp/r2.cuda.jsonl" \
      >"$tmp/r2.cuda.out" 2>&1 || { cat "$tmp/r2.cuda.out"; echo "FAIL: $name --ranks 2 --device cuda"; exit 1; }
    check_layers_built "$name --ranks 2" "$tmp/r2.cuda.out" || exit 1
    "$bin" --preset "$preset" --device host --ranks 2 "${args[@]}" "${extra[@]}" --log "$tmp/r2.host.jsonl" \
      >/dev/null 2>&1 || { echo "FAIL: $name --ranks 2 --device host"; exit 1; }
    compare_to_host "$name --ranks 2 (NCCL, 2 $where)" "$tmp/r2.host.jsonl" "$tmp/r2.cuda.jsonl" "$step1" "$limit" ||
      exit 1
    if [[ $name == */fp16 ]]; then
      "$py" - "$tmp/r2.host.jsonl" "$tmp/r2.cuda.jsonl" <<'PY' ||
import json, sys
for path, space in zip(sys.argv[1:], ("host", "cuda")):
    rows = [json.loads(l) for l in open(path)]
    skipped = [r["step"] for r in rows if r.get("skipped")]
    assert skipped == [5], f"{space}: skipped steps {skipped}, expected [5]"
    assert rows[5]["loss_scale"] == rows[4]["loss_scale"] / 2, f"{space}: the loss scale was not halved"
print("st-moe/fp16 --ranks 2: the inf on rank 1 alone skipped step 5 on both ranks, host and cuda")
PY
        { echo "FAIL: $name --ranks 2 overflow on rank 1"; exit 1; }
    fi
  done
  # Checkpoints of a two-GPU run are rank-independent: GLaM saved at --ranks 2 (killed at the start
  # of step 11) and resumed at --ranks 1 on one GPU follows the uninterrupted one-GPU run (1e-5
  # relative: the dense gradients are sums of two partial GEMMs instead of one). --group-size 64:
  # routing groups are the same at R = 1 and 2.
  ck=(--preset glam --device cuda "${args[@]}" --group-size 64)
  "$bin" "${ck[@]}" --ranks 1 --log "$tmp/ck.one.jsonl" >/dev/null 2>&1 || { echo "FAIL: glam --ranks 1"; exit 1; }
  rc=0
  "$bin" "${ck[@]}" --ranks 2 --checkpoint "$tmp/ck" --checkpoint-every 10 --crash-at-step 11 \
    --log "$tmp/ck.two.jsonl" >/dev/null 2>&1 || rc=$?
  [[ $rc == 137 ]] || { echo "FAIL: glam --ranks 2 with --crash-at-step 11 exited $rc, expected 137 (SIGKILL)"; exit 1; }
  "$bin" "${ck[@]}" --ranks 1 --checkpoint "$tmp/ck" --resume --log "$tmp/ck.two.jsonl" >"$tmp/ck.resume.out" 2>&1 ||
    { cat "$tmp/ck.resume.out"; echo "FAIL: glam --ranks 1 --resume"; exit 1; }
  grep -q "resuming after step 10" "$tmp/ck.resume.out" || { cat "$tmp/ck.resume.out"; echo "FAIL: no resume"; exit 1; }
  "$py" - "$tmp/ck.one.jsonl" "$tmp/ck.two.jsonl" "$where" <<'PY' || exit 1
import json, sys
one = [json.loads(l) for l in open(sys.argv[1])]
two = [json.loads(l) for l in open(sys.argv[2])]
assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 21)), "one line per step"
worst = max(abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(one, two))
assert worst <= 1e-5, f"glam saved at --ranks 2, resumed at --ranks 1: {worst:.1e} relative from the one-GPU run"
print(f"glam checkpoint saved at --ranks 2, resumed at --ranks 1 ({sys.argv[3]}): 20 steps follow the "
      f"uninterrupted one-GPU run (largest relative loss difference {worst:.1e})")
PY
fi
# More ranks than there are GPUs (the next power of two, with as many sequences and experts): refused,
# naming what it needs.
more=2
while (( more <= ${gpus:-0} )); do more=$(( more * 2 )); done
rc=0
"$bin" --preset switch --device cuda --ranks "$more" --batch "$more" --experts "$more" --steps 1 --seq 8 --d-model 16 \
  --layers 1 --heads 2 --no-progress >/dev/null 2>"$tmp/rmore.err" || rc=$?
[[ $rc == 2 ]] && grep -q "needs $more GPUs (one per rank), ${gpus:-0} visible" "$tmp/rmore.err" ||
  { cat "$tmp/rmore.err"; echo "FAIL: --ranks $more on ${gpus:-0} GPU(s) exited $rc"; exit 1; }
echo "--ranks $more on ${gpus:-0} $where: refused ($(cat "$tmp/rmore.err"))"
