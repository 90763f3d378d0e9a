#!/usr/bin/env bash
# The recipe flags (--init-scale, --balance-loss, --z-loss, --jitter, --capacity-factor, --dropout,
# --router-precision) change what
# they name and nothing else: a flag set to the preset's own value reproduces the preset's run bit
# for bit, another value changes the logged quantity it drives, and a checkpoint refuses to resume
# under a different recipe or data seed. --data-seed keeps the data while --seed changes the model's randomness.
#   usage: recipe_test.sh <moe-train> <python3>
set -euo pipefail
bin=$1
py=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
small=(--steps 6 --batch 4 --seq 32 --d-model 32 --layers 2 --heads 2 --experts 4 --eval-every 3
       --eval-batches 1 --no-progress)
run() {  # run NAME ARGS...: log to $tmp/NAME.jsonl
  local name=$1
  shift
  "$bin" "${small[@]}" "$@" --log "$tmp/$name.jsonl" >"$tmp/$name.out"
}

run switch --preset switch
run switch_same --preset switch --init-scale 0.1 --jitter 0.01 --balance-loss 0.01 --capacity-factor 1.25
run switch_init1 --preset switch --init-scale 1
run switch_nobalance --preset switch --balance-loss 0
run switch_cf --preset switch --capacity-factor 0.5
run switch_nojitter --preset switch --jitter 0
run switch_dropout0 --preset switch --dropout 0
run switch_dropout --preset switch --dropout 0.1
run switch_router32 --preset switch --router-precision fp32
run switch_router16 --preset switch --router-precision bf16
run switch_bf16 --preset switch --precision bf16
run switch_bf16_router16 --preset switch --precision bf16 --router-precision bf16
run dense --preset dense
run dense_dropout --preset dense --dropout 0.1
run glam --preset glam
run glam_init1 --preset glam --init-scale 1
run stmoe --preset st-moe
run stmoe_z0 --preset st-moe --z-loss 0
run stmoe_z1 --preset st-moe --z-loss 1
run switch_seed1_data1 --preset switch --seed 1 --data-seed 1
run switch_seed2_data1 --preset switch --seed 2 --data-seed 1
run switch_seed2 --preset switch --seed 2
floor() { sed -n 's/^  floor    \([0-9.]*\) .*/\1/p' "$tmp/$1.out"; }
if [[ $(floor switch_seed2_data1) != "$(floor switch)" || $(floor switch_seed2) == "$(floor switch)" ]]; then
  echo "FAIL: --data-seed 1 must keep seed 1's data (floor $(floor switch)): --seed 2 --data-seed 1 has floor" \
    "$(floor switch_seed2_data1), --seed 2 has $(floor switch_seed2)"
  exit 1
fi
grep -q "recipe   init_scale=1 (the rest as the preset)" "$tmp/switch_init1.out"
grep -q "recipe   router_precision=bfloat16 (the rest as the preset)" "$tmp/switch_router16.out"
if grep -q "recipe" "$tmp/switch.out"; then
  echo "FAIL: a run without recipe flags printed a recipe line"
  exit 1
fi

"$py" - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
def log(name):
    return [json.loads(line) for line in open(f"{tmp}/{name}.jsonl")]
def core(rows):  # everything but the wall-clock fields
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]
base = log("switch")
assert core(log("switch_same")) == core(base), "the Switch preset's own values must reproduce its run bit for bit"
assert core(log("glam_init1")) == core(log("glam")), "GLaM's init scale is already 1: same run"
assert log("switch_init1")[0]["loss"] != base[0]["loss"], "--init-scale 1 must change the initial weights"
assert log("switch_nojitter")[0]["loss"] != base[0]["loss"], "--jitter 0 must change Switch's routing"
assert core(log("switch_dropout0")) == core(base), "--dropout 0 is every preset's value: the same run"
for name, ref in (("switch_dropout", base), ("dense_dropout", log("dense"))):
    # Same weights at step 1: only the dropout masks change the training loss. Evaluation has no
    # dropout, but the first evaluation (step 3) follows two updates that differed.
    assert log(name)[0]["loss"] != ref[0]["loss"], f"{name}: --dropout 0.1 must change step 1"
# The router computes in float32 in every preset; rounding its inputs, weights and outputs to bfloat16
# changes the gates a little at step 1 (same weights), in a float32 and in a bfloat16 model.
assert core(log("switch_router32")) == core(base), "--router-precision fp32 is every preset's: the same run"
for name, ref in (("switch_router16", base), ("switch_bf16_router16", log("switch_bf16"))):
    a, b = log(name)[0]["loss"], ref[0]["loss"]
    assert a != b and abs(a - b) < 1e-2 * abs(b), f"{name}: a bfloat16 router must change step 1 a little: {a} vs {b}"
assert core(log("switch_seed1_data1")) == core(base), "--data-seed equal to --seed: the same run"
assert log("switch_seed2_data1")[0]["loss"] != base[0]["loss"], "--seed 2 must change the initial weights"

nobal = log("switch_nobalance")
assert all(r["aux_loss"] == 0 for r in nobal), "--balance-loss 0: Switch's only auxiliary loss must weigh 0"
assert base[0]["aux_loss"] > 0
# Step 1 sees the same weights, so the loss is the same; the load-balancing term alone differs.
assert nobal[0]["loss"] == base[0]["loss"]

# Capacity factor 0.5 keeps at most 0.5·T/E tokens per expert: at least half of them are dropped.
cf = log("switch_cf")
assert all(r["dropped_fraction"] >= 0.5 for r in cf), [r["dropped_fraction"] for r in cf]
assert base[0]["dropped_fraction"] < 0.5, base[0]["dropped_fraction"]

# ST-MoE's auxiliary loss is c_B·L_B + c_z·L_z (one MoE layer at this depth); at step 1 the routing
# is the same, so the totals differ by exactly the change in c_z times the logged L_z.
st, z0, z1 = log("stmoe"), log("stmoe_z0"), log("stmoe_z1")
lz = st[0]["z_loss"]
assert lz > 0 and z0[0]["z_loss"] == lz == z1[0]["z_loss"]
for got, c_z in ((z0[0]["aux_loss"], 0.0), (z1[0]["aux_loss"], 1.0)):
    want = st[0]["aux_loss"] + (c_z - 1e-3) * lz
    assert abs(got - want) <= 1e-6 * max(1.0, abs(want)), (c_z, got, want)
print(f"recipe flags: preset values reproduce the presets; switch step-1 loss {base[0]['loss']:.4f} -> "
      f"{log('switch_init1')[0]['loss']:.4f} at init scale 1; capacity factor 0.5 drops "
      f"{cf[0]['dropped_fraction']:.2f}; st-moe aux {z0[0]['aux_loss']:.5f} / {st[0]['aux_loss']:.5f} / "
      f"{z1[0]['aux_loss']:.5f} at c_z 0 / 1e-3 / 1 (L_z {lz:.4f})")
PY

# A checkpoint records the recipe: resuming under another is refused, naming both.
"$bin" "${small[@]}" --preset switch --balance-loss 0 --checkpoint "$tmp/ck" --checkpoint-every 3 >/dev/null
status=0
"$bin" "${small[@]}" --preset switch --checkpoint "$tmp/ck" --resume >/dev/null 2>"$tmp/err" || status=$?
if [[ $status -eq 0 ]] || ! grep -q "written with recipe=balance_loss=0, this run has recipe=preset" "$tmp/err"; then
  echo "FAIL: resuming a --balance-loss 0 checkpoint without the flag: exit $status, $(cat "$tmp/err")"
  exit 1
fi
"$bin" "${small[@]}" --preset switch --balance-loss 0 --checkpoint "$tmp/ck" --resume >/dev/null
# ... and its data: resuming on another corpus (--data-seed) is refused too.
status=0
"$bin" "${small[@]}" --preset switch --balance-loss 0 --data-seed 2 --checkpoint "$tmp/ck" --resume >/dev/null \
  2>"$tmp/err" || status=$?
if [[ $status -eq 0 ]] || ! grep -q "written with data_seed=1, this run has data_seed=2" "$tmp/err"; then
  echo "FAIL: resuming a --data-seed 1 checkpoint with --data-seed 2: exit $status, $(cat "$tmp/err")"
  exit 1
fi
echo "a checkpoint resumes under its own recipe and data only"
