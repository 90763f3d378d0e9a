#!/usr/bin/env bash
# Dense vs Switch vs GLaM vs ST-MoE at equal FLOPs per token and equal steps on the default
# synthetic corpus. Writes OUT/results.md (a markdown table), OUT/*.jsonl, OUT/*.txt and the plots
# OUT/loss.png, OUT/expert_load_<preset>.png.
#
#   examples/experiments/compare.sh [OUT] [extra moe-train flags...]
#   (OUT defaults to build/compare; STEPS, EVAL_EVERY and SEED from the environment, defaults
#    3000, 100 and 1)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${1:-build/compare}
shift || true
steps=${STEPS:-3000}
eval_every=${EVAL_EVERY:-100}
seed=${SEED:-1}

source scripts/install_deps.sh
moe_install_deps  # includes python3-matplotlib for the plots
moe_find_nvcc
cmake --preset default >/dev/null
cmake --build --preset default --target moe-train -j "$(nproc)"
bin=build/default/examples/moe-train
mkdir -p "$out"

for preset in dense switch glam st-moe; do
  echo "== $preset"
  "$bin" --preset "$preset" --steps "$steps" --eval-every "$eval_every" --seed "$seed" --no-progress \
    --log "$out/$preset.jsonl" "$@" | tee "$out/$preset.txt"
done

/usr/bin/python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
presets = ["dense", "switch", "glam", "st-moe"]
runs = {p: [json.loads(l) for l in open(f"{out}/{p}.jsonl")] for p in presets}
text = {p: open(f"{out}/{p}.txt").read() for p in presets}
def grab(p, pattern):
    m = re.search(pattern, text[p])
    return m.group(1) if m else "?"
floor = float(grab("dense", r"floor\s+([0-9.]+)"))
val = {p: [(r["step"], r["val_loss"]) for r in runs[p] if "val_loss" in r] for p in presets}
dense_final = val["dense"][-1][1]
rows = []
for p in presets:
    final = val[p][-1][1]
    reach = next((s for s, v in val[p] if v <= dense_final), None)
    if p == "dense":
        reach_txt = f"{val[p][-1][0]} (baseline)"
    elif reach is None:
        reach_txt = "not reached"
    else:
        reach_txt = f"{reach} ({val['dense'][-1][0] / reach:.2f}x fewer)"
    tps = sum(r["tokens_per_s"] for r in runs[p]) / len(runs[p])
    total = grab(p, r"params\s+([0-9.]+M) total")
    active = grab(p, r"total, ([0-9.]+M) active")
    flops = grab(p, r"FLOPs/token ([0-9.]+M) forward")
    rows.append(f"| {p} | {final:.4f} | {final - floor:.4f} | {reach_txt} | {tps:,.0f} | {total} / {active} | {flops} |")
steps = runs["dense"][-1]["step"]
table = "\n".join([
    f"Validation loss after {steps} steps (entropy floor {floor:.4f} nats/token); 'steps to dense' is the first",
    "evaluation at which the model's validation loss is at or below the dense model's final one.",
    "",
    "| preset | final val loss | gap to floor | steps to reach dense's final val loss | tokens/s | params total / active | FLOPs/token (fwd) |",
    "|---|---|---|---|---|---|---|",
    *rows,
])
open(f"{out}/results.md", "w").write(table + "\n")
print(table)
PY
/usr/bin/python3 scripts/plot.py --out "$out" --title "moe-train, equal FLOPs per token" \
  --floor "$(grep -oP 'floor\s+\K[0-9.]+' "$out/dense.txt" | head -n 1)" \
  "$out/dense.jsonl=dense" "$out/switch.jsonl=switch" "$out/glam.jsonl=glam" "$out/st-moe.jsonl=st-moe"
echo "wrote $out/results.md, $out/loss.png and $out/expert_load_*.png"
