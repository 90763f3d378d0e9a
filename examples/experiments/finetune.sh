#!/usr/bin/env bash
# The papers' fine-tuning recipes at toy scale, over several seeds (DESIGN.md §3, "fine-tuning"):
# models pretrained on the default corpus are fine-tuned on a small new task, and the protocols are
# compared by their held-out loss.
#   task       the synthetic corpus with other chains (--data-seed 2: the same four kinds of domain
#              over the same token slices, different successors), and only TRAIN_SEQUENCES training
#              sequences (--train-sequences), so that fine-tuning overfits as on a small SuperGLUE task
#   switch     all parameters / the MoE ones frozen / the non-MoE ones frozen (ST-MoE's fine-tuning
#              study of parameter subsets) / expert dropout 0.4 / dropout 0.1 elsewhere / both (Switch
#              §2.4's fine-tuning recipe: 0.1 everywhere, 0.4 in the experts) / only the FFNs, dense
#              and MoE (embeddings, attention and norms frozen) / the same model trained from scratch
#   dense      all parameters / dropout 0.1 / only the FFNs / from scratch: the FLOP-matched dense
#              model, for ST-MoE's observation that sparse models overfit small tasks more, and as
#              the control of the frozen-subset results (is an effect the experts' own?)
# Each seed pretrains its own dense and Switch model (PRE_STEPS on --data-seed 1) and fine-tunes
# them with that seed. Writes OUT/results.md (best and final validation loss, final training loss,
# mean ± standard deviation over the seeds, and the difference to fine-tuning all of Switch's
# parameters paired by seed), the runs' OUT/*.jsonl and OUT/*.txt, and OUT/finetune.png.
#
#   examples/experiments/finetune.sh [OUT] [extra moe-train flags...]
#   (OUT defaults to build/finetune; PRE_STEPS, FT_STEPS, TRAIN_SEQUENCES and SEEDS from the
#    environment, defaults 1000, 300, 128 and "1 2 3"; JOBS runs at once, default the number of
#    cores, one thread each). Runs already done in OUT are kept: clear OUT after changing anything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${1:-build/finetune}
shift || true
pre_steps=${PRE_STEPS:-1000}
ft_steps=${FT_STEPS:-300}
train_sequences=${TRAIN_SEQUENCES:-128}
seeds=${SEEDS:-1 2 3}
jobs=${JOBS:-$(nproc)}

source scripts/install_deps.sh
moe_install_deps
moe_find_nvcc
cmake --preset default >/dev/null
cmake --build --preset default --target moe-train -j "$(nproc)"
mkdir -p "$out"
# The experiment's own copy: a rebuild of the tree while it runs does not change it mid-way.
cp build/default/examples/moe-train "$out/moe-train.new" && mv "$out/moe-train.new" "$out/moe-train"
bin=$out/moe-train

# run NAME STEPS FLAGS...: one run, in the background (JOBS at a time); skipped when already done.
run() {
  local name=$1 steps=$2
  shift 2
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n; done
  [[ -f $out/$name.status && $(<"$out/$name.status") == 0 && $(wc -l <"$out/$name.jsonl") == "$steps" ]] && return
  echo "== $name"
  {
    status=0
    "$bin" --steps "$steps" --threads 1 --no-progress --log "$out/$name.jsonl" "$@" >"$out/$name.txt" 2>&1 ||
      status=$?
    echo "$status" >"$out/$name.status"
  } &
}

for seed in $seeds; do
  for preset in dense switch; do
    run "pre-$preset.seed$seed" "$pre_steps" --preset "$preset" --seed "$seed" --data-seed 1 \
      --eval-every "$pre_steps" --checkpoint "$out/pre-$preset.seed$seed" --checkpoint-every "$pre_steps" "$@"
  done
done
wait

# name|preset|flags (PRE: start from that seed's pretrained model)
configs=(
  "switch-all|switch|PRE"
  "switch-freeze-moe|switch|PRE --freeze moe"
  "switch-freeze-non-moe|switch|PRE --freeze non-moe"
  "switch-expert-dropout|switch|PRE --expert-dropout 0.4"
  "switch-dropout|switch|PRE --dropout 0.1"
  "switch-recipe|switch|PRE --dropout 0.1 --expert-dropout 0.4"
  "switch-ffn-only|switch|PRE --freeze embedding,attention,norms"
  "switch-scratch|switch|"
  "dense-all|dense|PRE"
  "dense-dropout|dense|PRE --dropout 0.1"
  "dense-ffn-only|dense|PRE --freeze embedding,attention,norms"
  "dense-scratch|dense|"
)
eval_every=$((ft_steps / 12 > 0 ? ft_steps / 12 : 1))
for seed in $seeds; do
  for c in "${configs[@]}"; do
    IFS='|' read -r name preset flags <<<"$c"
    read -r -a extra <<<"${flags/PRE/--init-from $out/pre-$preset.seed$seed}"
    run "$name.seed$seed" "$ft_steps" --preset "$preset" --seed "$seed" --data-seed 2 \
      --train-sequences "$train_sequences" --eval-every "$eval_every" "${extra[@]}" "$@"
  done
done
wait

/usr/bin/python3 - "$out" "$ft_steps" "$train_sequences" $seeds <<'PY'
import json, math, statistics, sys
out, steps, sequences, seeds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

def summary(name, seed):
    path = f"{out}/{name}.seed{seed}"
    if open(f"{path}.status").read().strip() != "0":
        sys.exit(f"{name} seed {seed} failed: {open(path + '.txt').read().strip().splitlines()[-1]}")
    rows = [json.loads(line) for line in open(f"{path}.jsonl")]
    evals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    best_step, best = min(evals, key=lambda e: e[1])
    return {"best": best, "best_step": best_step, "final": evals[-1][1], "first": evals[0][1],
            "train": statistics.mean(r["loss"] for r in rows[-10:]), "curve": evals}

def cell(values, fmt, signed=False):
    f = fmt.replace("{:", "{:+") if signed else fmt
    if len(values) == 1: return f.format(values[0])
    return (f + " ± " + fmt).format(statistics.mean(values), statistics.stdev(values))

labels = {
    "switch-all": "Switch, all parameters (from pretraining)",
    "switch-freeze-moe": "Switch, MoE parameters frozen",
    "switch-freeze-non-moe": "Switch, non-MoE parameters frozen",
    "switch-expert-dropout": "Switch, expert dropout 0.4",
    "switch-dropout": "Switch, dropout 0.1 (not in the experts)",
    "switch-recipe": "Switch, dropout 0.1 + expert dropout 0.4 (Switch §2.4)",
    "switch-ffn-only": "Switch, FFNs only (embeddings, attention, norms frozen)",
    "switch-scratch": "Switch from scratch",
    "dense-all": "dense, all parameters (from pretraining)",
    "dense-dropout": "dense, dropout 0.1",
    "dense-ffn-only": "dense, FFNs only (embeddings, attention, norms frozen)",
    "dense-scratch": "dense from scratch",
}
floor = next(float(l.split()[1]) for l in open(f"{out}/switch-all.seed{seeds[0]}.txt") if l.startswith("  floor"))
ref = [summary("switch-all", s) for s in seeds]
lines = [f"Fine-tuning on {sequences} sequences of a new task (--data-seed 2), {steps} steps; {len(seeds)} seeds "
         f"({', '.join(seeds)}), each with its own pretrained models; mean ± sd over seeds. The task's entropy "
         f"floor is {floor:.4f} nats.", "",
         "| protocol | first eval | best val loss (step) | Δ best vs Switch all (paired) | final val loss | "
         "final train loss |", "|---|---|---|---|---|---|"]
summaries = {}
for name, label in labels.items():
    runs = [summary(name, s) for s in seeds]
    summaries[name] = runs
    delta = "—" if name == "switch-all" else cell([r["best"] - q["best"] for r, q in zip(runs, ref)], "{:.4f}", True)
    lines.append(" | ".join([
        f"| {label}",
        cell([r["first"] for r in runs], "{:.3f}"),
        cell([r["best"] for r in runs], "{:.4f}") + f" ({statistics.mean(r['best_step'] for r in runs):.0f})",
        delta,
        cell([r["final"] for r in runs], "{:.3f}"),
        cell([r["train"] for r in runs], "{:.3f}"),
    ]) + " |")
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib not installed: no plot")
    sys.exit(0)
fig, ax = plt.subplots(figsize=(11.5, 5))
for k, (name, label) in enumerate(labels.items()):
    runs = summaries[name]
    steps_axis = [s for s, _ in runs[0]["curve"]]
    mean = [statistics.mean(r["curve"][i][1] for r in runs) for i in range(len(steps_axis))]
    ax.plot(steps_axis, mean, label=label, color=plt.cm.tab20.colors[(2 * k) % 20 + (2 * k) // 20],
            linestyle="--" if "scratch" in name else "-")
ax.axhline(floor, color="gray", linewidth=0.8, label="entropy floor")
ax.set_xlabel("fine-tuning step")
ax.set_ylabel("validation loss (nats/token), mean over seeds")
ax.set_title(f"Fine-tuning on {sequences} sequences of a new task")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
fig.tight_layout()
fig.savefig(f"{out}/finetune.png", dpi=110)
print(f"wrote {out}/results.md and {out}/finetune.png")
PY
