#!/usr/bin/env bash
# Checkpoints survive crashes and resuming reproduces the uninterrupted run bit for bit; corrupt
# or truncated checkpoints are refused.   usage: resume_test.sh <moe-train> <python3>
set -euo pipefail
bin=$1
py=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=(--preset st-moe --steps 40 --batch 4 --seq 16 --d-model 16 --layers 2 --heads 2 --experts 4
      --eval-every 20 --eval-batches 1 --checkpoint-every 10 --no-progress)

# A: uninterrupted.
"$bin" "${args[@]}" --checkpoint "$tmp/a" --log "$tmp/a.jsonl" >/dev/null

# B: killed at the start of step 27 (after the step-20 checkpoint), then resumed.
status=0
"$bin" "${args[@]}" --checkpoint "$tmp/b" --log "$tmp/b.jsonl" --crash-at-step 27 >/dev/null 2>&1 || status=$?
[[ $status -eq 137 ]] || { echo "FAIL: the crashing run exited $status, expected 137 (SIGKILL)"; exit 1; }
"$bin" "${args[@]}" --checkpoint "$tmp/b" --log "$tmp/b.jsonl" --resume >"$tmp/b.out"
grep -q "resuming after step 20" "$tmp/b.out"

# C: killed in the middle of writing the step-30 checkpoint: the step-20 one must still be intact.
status=0
"$bin" "${args[@]}" --checkpoint "$tmp/c" --log "$tmp/c.jsonl" --crash-in-checkpoint-at-step 30 >/dev/null 2>&1 ||
  status=$?
[[ $status -eq 137 ]] || { echo "FAIL: the run crashing in a checkpoint exited $status, expected 137"; exit 1; }
"$bin" "${args[@]}" --checkpoint "$tmp/c" --log "$tmp/c.jsonl" --resume >"$tmp/c.out"
grep -q "resuming after step 20" "$tmp/c.out"

"$py" - "$tmp/a.jsonl" "$tmp/b.jsonl" "$tmp/c.jsonl" <<'PY'
import sys
def losses(path):
    import json
    return [(r["step"], r["loss"], r.get("val_loss"), r["aux_loss"]) for r in map(json.loads, open(path))]
a, b, c = (losses(p) for p in sys.argv[1:])
assert [s for s, *_ in a] == list(range(1, 41)), "uninterrupted run logs every step once"
assert b == a, "killed + resumed run differs from the uninterrupted one"
assert c == a, "run killed while checkpointing differs after resuming"
print("resumed runs reproduce all 40 steps exactly (loss, val_loss, aux_loss)")
PY

# Corrupt and truncated checkpoints are refused (exit 3, one line naming the problem).
cp -r "$tmp/a" "$tmp/flip"
"$py" -c "
import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[len(b)//2]^=0x40; open(p,'wb').write(b)" "$tmp/flip/checkpoint.bin"
status=0
"$bin" "${args[@]}" --checkpoint "$tmp/flip" --resume >/dev/null 2>"$tmp/flip.err" || status=$?
[[ $status -eq 3 ]] && grep -q "corrupt or truncated (checksum mismatch" "$tmp/flip.err" ||
  { echo "FAIL: a flipped byte was not refused (exit $status):"; cat "$tmp/flip.err"; exit 1; }
cp -r "$tmp/a" "$tmp/cut"
truncate -s 1000 "$tmp/cut/checkpoint.bin"
status=0
"$bin" "${args[@]}" --checkpoint "$tmp/cut" --resume >/dev/null 2>"$tmp/cut.err" || status=$?
[[ $status -eq 3 ]] && grep -q "corrupt or truncated" "$tmp/cut.err" ||
  { echo "FAIL: a truncated checkpoint was not refused (exit $status):"; cat "$tmp/cut.err"; exit 1; }
# A checkpoint of another configuration is refused too.
status=0
"$bin" "${args[@]}" --d-model 32 --checkpoint "$tmp/a" --resume >/dev/null 2>"$tmp/cfg.err" || status=$?
[[ $status -eq 3 ]] && grep -q "written with d_model=16, this run has d_model=32" "$tmp/cfg.err" ||
  { echo "FAIL: a mismatched checkpoint was not refused (exit $status):"; cat "$tmp/cfg.err"; exit 1; }
echo "corrupt, truncated and mismatched checkpoints refused: $(cat "$tmp/flip.err")"
