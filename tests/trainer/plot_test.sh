#!/usr/bin/env bash
# scripts/plot.py draws the loss curves and the expert-load heat maps of moe-train logs.
#   usage: plot_test.sh <moe-train> <repo root>
set -euo pipefail
bin=$1
root=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for preset in dense glam; do
  "$bin" --preset "$preset" --steps 12 --batch 4 --seq 16 --d-model 16 --layers 2 --heads 2 --experts 4 \
    --eval-every 6 --eval-batches 1 --no-progress --log "$tmp/$preset.jsonl" >/dev/null
done
/usr/bin/python3 "$root/scripts/plot.py" --out "$tmp/plots" --floor 1.4 "$tmp/dense.jsonl=dense" "$tmp/glam.jsonl=glam"
for png in loss.png expert_load_glam.png; do
  [[ $(head -c 8 "$tmp/plots/$png" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]] ||
    { echo "FAIL: $png is not a PNG"; exit 1; }
done
[[ ! -e "$tmp/plots/expert_load_dense.png" ]] || { echo "FAIL: a dense run has no expert load to plot"; exit 1; }
echo "plots: $(ls "$tmp/plots" | tr '\n' ' ')"
