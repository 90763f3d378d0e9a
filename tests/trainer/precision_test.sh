#!/usr/bin/env bash
# --precision bf16 (16-bit MoE layers, float32 master weights): each MoE preset trains 30 steps and
# stays within 0.05 nats of the float32 run at every step; a bf16 run killed mid-way resumes bit for
# bit; a checkpoint of one precision is refused by a run of the other.
#   usage: precision_test.sh <moe-train> <python3>
set -euo pipefail
bin=$1
py=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=(--steps 30 --batch 8 --seq 32 --d-model 32 --layers 2 --heads 2 --experts 4 --eval-every 15 --eval-batches 2
      --lr 1e-2 --no-progress)
for preset in switch glam st-moe; do
  "$bin" --preset "$preset" "${args[@]}" --log "$tmp/$preset.fp32.jsonl" >/dev/null
  "$bin" --preset "$preset" "${args[@]}" --precision bf16 --log "$tmp/$preset.bf16.jsonl" >"$tmp/$preset.bf16.out"
  grep -q "precision MoE layers bf16 (float32 master weights)" "$tmp/$preset.bf16.out"
  "$py" - "$tmp/$preset.fp32.jsonl" "$tmp/$preset.bf16.jsonl" "$preset" <<'PY'
import json, sys
f32 = [json.loads(l) for l in open(sys.argv[1])]
b16 = [json.loads(l) for l in open(sys.argv[2])]
preset = sys.argv[3]
assert [r["step"] for r in b16] == list(range(1, 31))
gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(f32, b16))
assert gap <= 0.05, f"{preset}: bf16 and fp32 losses {gap:.4f} nats apart (limit 0.05)"
assert gap > 0, f"{preset}: bf16 run identical to fp32: the MoE layers did not run in bf16"
first, last = b16[0]["loss"], sum(r["loss"] for r in b16[-5:]) / 5
assert last < first - 0.5, f"{preset}: bf16 loss did not fall by 0.5 nats ({first} -> {last})"
print(f"{preset}: bf16 {first:.3f} -> {last:.3f}, largest gap to fp32 {gap:.4f} nats")
PY
done

# Resume: killed at the start of step 17 (after the step-10 checkpoint), resumed: every step equal.
rargs=(--preset glam --precision bf16 --steps 20 --batch 4 --seq 16 --d-model 16 --layers 2 --heads 2 --experts 4
       --eval-every 10 --eval-batches 1 --checkpoint-every 10 --no-progress)
"$bin" "${rargs[@]}" --checkpoint "$tmp/a" --log "$tmp/a.jsonl" >/dev/null
status=0
"$bin" "${rargs[@]}" --checkpoint "$tmp/b" --log "$tmp/b.jsonl" --crash-at-step 17 >/dev/null 2>&1 || status=$?
[[ $status -eq 137 ]] || { echo "FAIL: the crashing run exited $status, expected 137 (SIGKILL)"; exit 1; }
"$bin" "${rargs[@]}" --checkpoint "$tmp/b" --log "$tmp/b.jsonl" --resume >"$tmp/b.out"
grep -q "resuming after step 10" "$tmp/b.out"
cmp "$tmp/a.jsonl" "$tmp/b.jsonl" >/dev/null || "$py" - "$tmp/a.jsonl" "$tmp/b.jsonl" <<'PY'
import json, sys
a = [(r["step"], r["loss"], r.get("val_loss")) for r in map(json.loads, open(sys.argv[1]))]
b = [(r["step"], r["loss"], r.get("val_loss")) for r in map(json.loads, open(sys.argv[2]))]
assert a == b, "bf16: the killed and resumed run differs from the uninterrupted one"
PY
echo "bf16 resume: 20 steps equal to the uninterrupted run"

# The precision is part of the checkpoint's configuration.
status=0
"$bin" "${rargs[@]/bf16/fp32}" --checkpoint "$tmp/a" --resume >/dev/null 2>"$tmp/mix.err" || status=$?
[[ $status -eq 3 ]] && grep -q "written with precision=bf16, this run has precision=fp32" "$tmp/mix.err" ||
  { echo "FAIL: a bf16 checkpoint was not refused by an fp32 run (exit $status):"; cat "$tmp/mix.err"; exit 1; }
echo "a bf16 checkpoint is refused by an fp32 run"
