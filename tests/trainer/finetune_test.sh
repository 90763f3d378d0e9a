#!/usr/bin/env bash
# Fine-tuning flags: --init-from starts from a checkpoint's parameters (not its optimiser state or
# step), --freeze holds parameter groups fixed, --expert-dropout regularises the experts,
# --train-sequences makes the training set small and fixed.
#   - a frozen group's tensors end the fine-tuning bit for bit as the pretrained checkpoint had them
#     (which also shows they were loaded: the pretrained values are not the initialisation), and
#     every other group moves; with --ranks 2 too (the router's gradient exchange is then skipped);
#   - a fine-tuning run killed and resumed follows the uninterrupted one bit for bit;
#   - --expert-dropout 0 is the Switch preset's own value, 0.4 changes step 1;
#   - a checkpoint of another model shape, a resume under another --freeze, a group the model
#     lacks and a --freeze that leaves nothing to train are refused with one line.
#   usage: finetune_test.sh <moe-train> <python3>
set -euo pipefail
bin=$1
py=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
small=(--batch 4 --seq 16 --d-model 16 --layers 2 --heads 2 --experts 4 --group-size 32 --eval-every 4
       --eval-batches 1 --no-progress)
fine=(--steps 8 --data-seed 2 --init-from "$tmp/pre" --checkpoint-every 8)

"$bin" "${small[@]}" --preset switch --steps 10 --checkpoint "$tmp/pre" --checkpoint-every 10 >/dev/null
"$bin" "${small[@]}" --preset glam --steps 2 --checkpoint "$tmp/glam" --checkpoint-every 2 >/dev/null

run() {  # run NAME ARGS...: fine-tunes the Switch checkpoint; log and final checkpoint under $tmp/NAME
  local name=$1
  shift
  "$bin" "${small[@]}" --preset switch "${fine[@]}" --checkpoint "$tmp/$name" --log "$tmp/$name.jsonl" "$@" \
    >"$tmp/$name.out"
}
run all
run no_moe --freeze moe
run no_moe_r2 --freeze moe --ranks 2
run only_moe --freeze non-moe
run no_router_r2 --freeze router --ranks 2
run attention_only --freeze embedding,dense-ffn,norms,moe
run drop0 --expert-dropout 0
run drop4 --expert-dropout 0.4
# --train-sequences: a fixed set of 4 sequences is memorised. Against the same run on fresh data,
# the training loss ends far lower and the held-out loss higher.
for set in 4 all; do
  "$bin" "${small[@]}" --preset switch --steps 60 --lr 1e-2 --eval-every 60 --log "$tmp/memorise_$set.jsonl" \
    $([[ $set == all ]] || echo --train-sequences $set) >"$tmp/memorise_$set.out"
done
grep -q "training on a fixed set of 4 sequences" "$tmp/memorise_4.out"
grep -q "init     the parameters of '$tmp/pre'" "$tmp/all.out"
grep -q "frozen   router,experts: " "$tmp/no_moe.out"
grep -q "frozen   embedding,attention,dense-ffn,norms: " "$tmp/only_moe.out"

# Killed after the checkpoint of step 4, resumed: the same run.
status=0
run crash --freeze router --checkpoint-every 4 --crash-at-step 6 2>/dev/null || status=$?
[[ $status -eq 137 ]] || { echo "FAIL: the fine-tuning run exited $status, expected 137 (SIGKILL)"; exit 1; }
run crash --freeze router --checkpoint-every 4 --resume
grep -q "resuming after step 4" "$tmp/crash.out"
run uninterrupted --freeze router --checkpoint-every 4

"$py" - "$tmp" <<'PY'
import json, struct, sys
tmp = sys.argv[1]

def checkpoint(name):  # tensor name -> bytes (the layout of examples/trainer/checkpoint.hpp)
    b = open(f"{tmp}/{name}/checkpoint.bin", "rb").read()
    assert b[:8] == b"MOECKPT1"
    pos = 8
    def u(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, b, pos)[0]
        pos += struct.calcsize(fmt)
        return v
    header = u("<Q")
    pos += header  # the header text
    out = {}
    for _ in range(u("<Q")):
        length = u("<I")
        name = b[pos:pos + length].decode()
        pos += length
        count, size = u("<Q"), u("<I")
        out[name] = b[pos:pos + count * size]
        pos += count * size
    return out

def group(name):  # examples/trainer/layout.hpp: group_of
    if name.startswith("moe"):
        return "router" if ".router." in name else "experts"
    if name in ("tok_emb", "pos_emb"):
        return "embedding"
    if name.endswith("norm"):
        return "norms"
    return "dense-ffn" if ".ffn" in name else "attention"

pre = checkpoint("pre")
params = [n for n in pre if not n.startswith("opt.")]  # "opt.*": the optimiser's state
groups = {group(n) for n in params}
assert groups == {"embedding", "attention", "dense-ffn", "norms", "router", "experts"}, groups
for run, frozen in (("all", set()), ("no_moe", {"router", "experts"}), ("no_moe_r2", {"router", "experts"}),
                    ("only_moe", groups - {"router", "experts"}), ("no_router_r2", {"router"}),
                    ("attention_only", groups - {"attention"})):
    ck = checkpoint(run)
    for n in params:
        if group(n) in frozen:
            assert ck[n] == pre[n], f"{run}: frozen {n} changed"
        else:
            assert ck[n] != pre[n], f"{run}: {n} ({group(n)}) did not train"

def log(name):
    return [json.loads(line) for line in open(f"{tmp}/{name}.jsonl")]
def core(rows):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]
assert core(log("crash")) == core(log("uninterrupted")), "a resumed fine-tuning run must follow the uninterrupted one"
assert [r["step"] for r in log("crash")] == list(range(1, 9))
assert core(log("drop0")) == core(log("all")), "--expert-dropout 0 is the Switch preset's value: the same run"
assert log("drop4")[0]["loss"] != log("all")[0]["loss"], "--expert-dropout 0.4 must change step 1"
fixed, fresh = log("memorise_4"), log("memorise_all")
def tail_loss(rows): return sum(r["loss"] for r in rows[-10:]) / 10
assert tail_loss(fixed) < tail_loss(fresh) - 1.0, ("4 sequences must be memorised", tail_loss(fixed), tail_loss(fresh))
assert fixed[-1]["val_loss"] > fresh[-1]["val_loss"] + 0.5, (fixed[-1]["val_loss"], fresh[-1]["val_loss"])
for a, b in zip(log("no_moe"), log("no_moe_r2")):  # data-parallel sums differ in rounding only
    assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a["step"], a["loss"], b["loss"])
PY

refused() {  # refused EXPECTED ARGS...: the run fails with one line containing EXPECTED
  local want=$1
  shift
  local out status=0
  out=$("$bin" "${small[@]}" --steps 2 "$@" 2>&1 >/dev/null) || status=$?
  if [[ $status -eq 0 || $(printf '%s\n' "$out" | wc -l) -ne 1 || $out != *"$want"* ]]; then
    echo "FAIL: moe-train $* exited $status with: $out (expected one line with: $want)"
    exit 1
  fi
}
refused "--init-from: the checkpoint's model has preset=glam, this run has preset=switch" \
  --preset switch --init-from "$tmp/glam"
refused "--init-from: the checkpoint's model has d_model=16, this run has d_model=32" \
  --preset switch --init-from "$tmp/pre" --d-model 32
refused "no checkpoint at '$tmp/none/checkpoint.bin'" --preset switch --init-from "$tmp/none"
refused "--resume: the checkpoint was written with freeze=router, this run has freeze=router,experts" \
  --preset switch "${fine[@]}" --checkpoint "$tmp/crash" --resume --freeze moe
refused "--freeze: this switch model has no router parameters" --preset switch --layers 1 --freeze router
refused "--freeze: every parameter group is frozen" --preset switch --freeze moe,non-moe
refused "--freeze: 'bogus' is not one of embedding," --preset switch --freeze experts,bogus
echo "finetune_test: ok"
