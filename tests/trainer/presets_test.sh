#!/usr/bin/env bash
# Each preset trains 30 steps on the host and its loss falls; the JSONL log has the documented
# fields.   usage: presets_test.sh <moe-train> <python3>
set -euo pipefail
bin=$1
py=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for preset in dense switch glam st-moe; do
  "$bin" --preset "$preset" --steps 30 --batch 8 --seq 32 --d-model 32 --layers 2 --heads 2 --experts 4 \
    --eval-every 15 --eval-batches 2 --lr 1e-2 --no-progress --log "$tmp/$preset.jsonl" >"$tmp/$preset.out"
  "$py" - "$tmp/$preset.jsonl" "$preset" <<'PY'
import json, sys
path, preset = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(path)]
assert [r["step"] for r in rows] == list(range(1, 31)), "one line per step"
for key in ("loss", "aux_loss", "z_loss", "dropped_fraction", "expert_load", "router_logit_max", "tokens_per_s"):
    assert all(key in r for r in rows), f"missing {key}"
assert "val_loss" in rows[14] and "val_loss" in rows[29] and "val_loss" not in rows[3]
first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-5:]) / 5
moe_layers = len(rows[0]["expert_load"])
if preset == "dense":
    assert moe_layers == 0 and rows[0]["aux_loss"] == 0
else:
    assert moe_layers >= 1 and rows[0]["aux_loss"] > 0
    for loads in rows[-1]["expert_load"]:
        assert len(loads) == 4 and abs(sum(loads) - 1) < 1e-3, loads
print(f"{preset}: loss {first:.3f} -> {last:.3f} (mean of the last 5 steps), val {rows[14]['val_loss']:.3f} -> "
      f"{rows[29]['val_loss']:.3f}, {moe_layers} MoE layer(s)")
assert last < first - 0.5, f"{preset}: training loss did not fall by 0.5 nats ({first} -> {last})"
assert rows[29]["val_loss"] < rows[14]["val_loss"] < rows[0]["loss"], f"{preset}: validation loss did not fall"
PY
done
