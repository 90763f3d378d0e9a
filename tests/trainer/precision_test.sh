#!/usr/bin/env bash
# --precision bf16|fp16 (16-bit MoE layers, float32 master weights; fp16 with dynamic loss scaling):
# each MoE preset trains 30 steps and stays within 0.05 nats of the float32 run at every step; an
# fp16 run whose loss scale starts far too high skips updates, halving the scale, until the gradients
# fit, then trains; bf16 and fp16 runs killed mid-way resume bit for bit (the loss scale included);
# a checkpoint of one precision is refused by a run of the other.
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
  for p in bf16 fp16; do
    "$bin" --preset "$preset" "${args[@]}" --precision $p --log "$tmp/$preset.$p.jsonl" >"$tmp/$preset.$p.out"
    grep -q "precision MoE layers $p (float32 master weights" "$tmp/$preset.$p.out"
    "$py" - "$tmp/$preset.fp32.jsonl" "$tmp/$preset.$p.jsonl" "$preset" "$p" <<'PY'
import json, sys
f32 = [json.loads(l) for l in open(sys.argv[1])]
low = [json.loads(l) for l in open(sys.argv[2])]
preset, p = sys.argv[3], sys.argv[4]
assert [r["step"] for r in low] == list(range(1, 31))
gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(f32, low))
assert gap <= 0.05, f"{preset}: {p} and fp32 losses {gap:.4f} nats apart (limit 0.05)"
assert gap > 0, f"{preset}: {p} run identical to fp32: the MoE layers did not run in 16 bits"
assert ("loss_scale" in low[0]) == (p == "fp16"), "loss_scale is logged by fp16 runs only"
first, last = low[0]["loss"], sum(r["loss"] for r in low[-5:]) / 5
assert last < first - 0.5, f"{preset}: {p} loss did not fall by 0.5 nats ({first} -> {last})"
print(f"{preset}: {p} {first:.3f} -> {last:.3f}, largest gap to fp32 {gap:.4f} nats")
PY
  done
done

# fp16 overflow: a loss scale of 2^40 overflows float16; each such step is skipped (grad_norm null,
# parameters and optimiser untouched) and halves the scale, until the gradients fit.
oargs=(--preset glam --precision fp16 --steps 40 --batch 4 --seq 16 --d-model 16 --layers 2 --heads 2 --experts 4
       --eval-every 20 --eval-batches 1 --lr 1e-2 --no-progress --loss-scale 1099511627776)
"$bin" "${oargs[@]}" --log "$tmp/over.jsonl" >/dev/null
"$py" - "$tmp/over.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
skipped = [r["step"] for r in rows if r.get("skipped")]
assert skipped, "a loss scale of 2^40 never overflowed float16"
n = 0  # the run of overflows from step 1 while the scale comes down; the odd later one is normal
while n < len(skipped) and skipped[n] == n + 1:
    n += 1
assert n >= 1 and len(skipped) - n <= 5, f"skipped steps: {skipped}"
for a, b in zip(rows, rows[1:]):
    want = a["loss_scale"] / 2 if a.get("skipped") else a["loss_scale"]
    assert b["loss_scale"] == want, f"step {b['step']}: loss scale {b['loss_scale']}, expected {want}"
assert all(r["grad_norm"] is None for r in rows if r.get("skipped"))
assert all(r["grad_norm"] is not None for r in rows if not r.get("skipped"))
assert n < 30, f"{n} steps skipped"
first, last = rows[n]["loss"], sum(r["loss"] for r in rows[-5:]) / 5
assert last < first - 0.3, f"fp16 after the overflows: loss did not fall ({first} -> {last})"
print(f"fp16 overflow: steps 1-{n} skipped (scale 2^40 -> {rows[n]['loss_scale']:.0f}), later skips "
      f"{skipped[n:]}, loss {first:.3f} -> {last:.3f}")
PY

# Resume: killed at the start of step 17 (after the step-10 checkpoint), resumed: every step equal.
# The fp16 run starts at a loss scale that overflows, so the scale it resumes with has moved.
for p in bf16 fp16; do
  rargs=(--preset glam --precision $p --steps 20 --batch 4 --seq 16 --d-model 16 --layers 2 --heads 2 --experts 4
         --eval-every 10 --eval-batches 1 --checkpoint-every 10 --no-progress)
  [[ $p == fp16 ]] && rargs+=(--loss-scale 1099511627776)
  "$bin" "${rargs[@]}" --checkpoint "$tmp/a.$p" --log "$tmp/a.$p.jsonl" >/dev/null
  status=0
  "$bin" "${rargs[@]}" --checkpoint "$tmp/b.$p" --log "$tmp/b.$p.jsonl" --crash-at-step 17 >/dev/null 2>&1 || status=$?
  [[ $status -eq 137 ]] || { echo "FAIL: the crashing run exited $status, expected 137 (SIGKILL)"; exit 1; }
  "$bin" "${rargs[@]}" --checkpoint "$tmp/b.$p" --log "$tmp/b.$p.jsonl" --resume >"$tmp/b.$p.out"
  grep -q "resuming after step 10" "$tmp/b.$p.out"
  "$py" - "$tmp/a.$p.jsonl" "$tmp/b.$p.jsonl" "$p" <<'PY'
import json, sys
keys = ("step", "loss", "val_loss", "aux_loss", "grad_norm", "loss_scale", "skipped")
a = [tuple(r.get(k) for k in keys) for r in map(json.loads, open(sys.argv[1]))]
b = [tuple(r.get(k) for k in keys) for r in map(json.loads, open(sys.argv[2]))]
assert len(a) == 20 and a == b, f"{sys.argv[3]}: the killed and resumed run differs from the uninterrupted one"
PY
  echo "$p resume: 20 steps equal to the uninterrupted run"
done
rargs=(--preset glam --precision bf16 --steps 20 --batch 4 --seq 16 --d-model 16 --layers 2 --heads 2 --experts 4
       --eval-every 10 --eval-batches 1 --checkpoint-every 10 --no-progress)

# The precision is part of the checkpoint's configuration.
status=0
"$bin" "${rargs[@]/bf16/fp32}" --checkpoint "$tmp/a.bf16" --resume >/dev/null 2>"$tmp/mix.err" || status=$?
[[ $status -eq 3 ]] && grep -q "written with precision=bf16, this run has precision=fp32" "$tmp/mix.err" ||
  { echo "FAIL: a bf16 checkpoint was not refused by an fp32 run (exit $status):"; cat "$tmp/mix.err"; exit 1; }
echo "a bf16 checkpoint is refused by an fp32 run"

# fp16 with --ranks 2, an overflow on one rank alone (+inf written into rank 1's own expert gradient
# at step 5): the gradient norm is summed over the ranks, so every rank skips that update and halves
# its loss scale, and the run follows the one-rank run with the same overflow. In float32 the same
# inf ends the run with one error on every rank, never a hang.
iargs=(--preset glam --precision fp16 --steps 12 --batch 4 --seq 16 --d-model 16 --layers 2 --heads 2 --experts 4
       --group-size 32 --eval-every 12 --eval-batches 1 --lr 1e-2 --no-progress)
"$bin" "${iargs[@]}" --ranks 1 --inject-inf-at-step 5 --log "$tmp/inf1.jsonl" >/dev/null
"$bin" "${iargs[@]}" --ranks 2 --inject-inf-at-step 5 --inject-inf-rank 1 --log "$tmp/inf2.jsonl" >/dev/null
"$bin" "${iargs[@]}" --ranks 2 --log "$tmp/clean2.jsonl" >/dev/null
"$py" - "$tmp/inf1.jsonl" "$tmp/inf2.jsonl" "$tmp/clean2.jsonl" <<'PY'
import json, sys
one, two, clean = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
for name, run in (("--ranks 1", one), ("--ranks 2, inf on rank 1", two)):
    assert [r["step"] for r in run if r.get("skipped")] == [5], (name, [r["step"] for r in run if r.get("skipped")])
    assert run[4]["grad_norm"] is None and run[5]["loss_scale"] == run[4]["loss_scale"] / 2, name
assert not any(r.get("skipped") for r in clean) and clean[5]["loss_scale"] == clean[4]["loss_scale"]
for a, b in zip(one, two):
    assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]) + 1e-7, (a["step"], a["loss"], b["loss"])
assert two[5]["loss"] != clean[5]["loss"], "the skipped update left the run unchanged"
print(f"fp16 --ranks 2: an inf on rank 1 alone skipped step 5 on both ranks (scale {two[4]['loss_scale']:.0f} -> "
      f"{two[5]['loss_scale']:.0f}); 12 steps follow the one-rank run")
PY
status=0
"$bin" "${iargs[@]/fp16/fp32}" --ranks 2 --inject-inf-at-step 5 --inject-inf-rank 1 >/dev/null 2>"$tmp/inf.err" ||
  status=$?
if [[ $status -eq 0 ]] || [[ $(wc -l <"$tmp/inf.err") -ne 1 ]] ||
  ! grep -q "gradient norm is inf at update 5" "$tmp/inf.err"; then
  echo "FAIL: fp32 --ranks 2 with an inf gradient on rank 1: exit $status, stderr:"
  cat "$tmp/inf.err"
  exit 1
fi
echo "fp32 --ranks 2: the inf gradient on rank 1 ends the run: $(cat "$tmp/inf.err")"
