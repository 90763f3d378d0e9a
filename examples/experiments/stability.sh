#!/usr/bin/env bash
# The papers' stability recipes, ablated at toy scale over several seeds (DESIGN.md §3's headline
# claims):
#   init     Switch §2.4 / Table 3: weight init scale 0.1 against 1.0 (Switch preset)
#   z-loss   ST-MoE §3 (its stability study): router z-loss c_z = 1e-3 against none (ST-MoE preset, at a
#            learning rate ten times the default, where instability shows first)
#   balance  Switch §2.2: load-balancing loss α = 1e-2 against none (Switch preset)
#   jitter   ST-MoE §3: multiplicative input jitter 1e-2 added for stability (ST-MoE preset at the
#            same learning rate as the z-loss runs, with its z-loss)
#   router precision  Switch §2.4 / Table 2: in a bfloat16 model (--precision bf16), the router in
#            float32 ("selective precision") against a bfloat16 router (--router-precision bf16), at the
#            default learning rate and at the stress one (Switch preset)
# The seeds vary the model's randomness (initialisation, jitter, dropout) on one corpus
# (--data-seed), as the papers' seeds do. Writes OUT/results.md (one table per ablation: mean ±
# standard deviation over the seeds, and the difference to the paper's setting paired by seed), the
# runs' OUT/*.jsonl and OUT/*.txt, and OUT/zloss.png (router logits and z-loss over the z-loss runs).
#
#   examples/experiments/stability.sh [OUT] [extra moe-train flags...]
#   (OUT defaults to build/stability; STEPS, SEEDS, DATA_SEED and STRESS_LR from the environment,
#    defaults 1000, "1 2 3", 1 and 3e-2; JOBS runs at once, default the number of cores, one thread
#    each; ABLATIONS, default "init zloss balance jitter precision", picks which ablations run and
#    are tabulated). Runs already done in OUT (status 0, STEPS lines logged) are kept, not run again:
#    clear OUT after changing anything else.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${1:-build/stability}
shift || true
steps=${STEPS:-1000}
seeds=${SEEDS:-1 2 3}
stress_lr=${STRESS_LR:-3e-2}
data_seed=${DATA_SEED:-1}
jobs=${JOBS:-$(nproc)}
read -r -a ablations <<<"${ABLATIONS:-init zloss balance jitter precision}"

# The configurations (each run once per seed) and the ablations that compare them, the paper's
# setting first.
declare -A config_flags=(
  [init-0.1]="--preset switch --init-scale 0.1"
  [init-1.0]="--preset switch --init-scale 1.0"
  [zloss-1e-3]="--preset st-moe --lr $stress_lr --z-loss 1e-3"
  [zloss-0]="--preset st-moe --lr $stress_lr --z-loss 0"
  [balance-0]="--preset switch --balance-loss 0"
  [jitter-1e-2]="--preset st-moe --lr $stress_lr --jitter 1e-2"
  [bf16-router32]="--preset switch --precision bf16"
  [bf16-router16]="--preset switch --precision bf16 --router-precision bf16"
  [bf16-router32-lr]="--preset switch --precision bf16 --lr $stress_lr"
  [bf16-router16-lr]="--preset switch --precision bf16 --router-precision bf16 --lr $stress_lr"
)
declare -A ablation_configs=(
  [init]="init-0.1 init-1.0"
  [zloss]="zloss-1e-3 zloss-0"
  [balance]="init-0.1 balance-0"
  [jitter]="zloss-1e-3 jitter-1e-2"
  [precision]="bf16-router32 bf16-router16 bf16-router32-lr bf16-router16-lr"
)
configs=()
for a in "${ablations[@]}"; do
  [[ -n ${ablation_configs[$a]+set} ]] || {
    echo "error: ABLATIONS: '$a' is not one of init, zloss, balance, jitter, precision" >&2
    exit 2
  }
  for name in ${ablation_configs[$a]}; do
    [[ " ${configs[*]} " == *" $name "* ]] || configs+=("$name")
  done
done

source scripts/install_deps.sh
moe_install_deps
moe_find_nvcc
cmake --preset default >/dev/null
cmake --build --preset default --target moe-train -j "$(nproc)"
bin=build/default/examples/moe-train
mkdir -p "$out"

eval_every=$((steps / 10 > 0 ? steps / 10 : 1))
# A run that fails (a non-finite router logit ends it with an error) is recorded, not fatal: its
# status file says so and the table counts it as diverged.
for seed in $seeds; do
  for name in "${configs[@]}"; do
    read -r -a flags <<<"${config_flags[$name]}"
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n; done
    run="$out/$name.seed$seed"
    [[ -f $run.status && $(<"$run.status") == 0 && $(wc -l <"$run.jsonl") == "$steps" ]] && continue
    echo "== $name seed $seed"
    {
      status=0
      "$bin" "${flags[@]}" --steps "$steps" --eval-every "$eval_every" --seed "$seed" --data-seed "$data_seed" \
        --threads 1 --no-progress \
        --log "$run.jsonl" "$@" >"$run.txt" 2>&1 || status=$?
      echo "$status" >"$run.status"
    } &
  done
done
wait

/usr/bin/python3 - "$out" "$steps" "$stress_lr" "$data_seed" "${ablations[*]}" $seeds <<'PY'
import json, math, os, statistics, sys
out, steps, stress_lr, data_seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ablations, seeds = sys.argv[5].split(), sys.argv[6:]
nan = math.nan

def summary(name, seed):
    path = f"{out}/{name}.seed{seed}"
    rows = [json.loads(line) for line in open(f"{path}.jsonl")] if os.path.exists(f"{path}.jsonl") else []
    failed = open(f"{path}.status").read().strip() != "0" or len(rows) != steps
    if failed:
        print(f"{name} seed {seed} failed: {open(path + '.txt').read().strip().splitlines()[-1]}")
    if not rows:
        return {"val": nan, "diverged": True, "logit_max": nan, "z": nan, "load_max": nan, "dropped": nan}
    tail = rows[-max(1, len(rows) // 10):]  # the last tenth of the run
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    return {
        "val": vals[-1] if vals and not failed else nan,
        "diverged": failed or not all(math.isfinite(r["loss"]) for r in rows),
        "logit_max": max(r["router_logit_max"] for r in tail),
        "z": statistics.mean(r["z_loss"] for r in tail),
        "load_max": statistics.mean(max(max(layer) for layer in r["expert_load"]) for r in tail),
        "dropped": statistics.mean(r["dropped_fraction"] for r in tail),
    }

def cell(values, fmt, signed=False):
    values = [v for v in values if math.isfinite(v)]
    if not values: return "n/a"
    f = fmt.replace("{:", "{:+") if signed else fmt
    if len(values) == 1: return f.format(values[0])
    return (f + " ± " + fmt).format(statistics.mean(values), statistics.stdev(values))

def table(title, note, names, labels):
    lines = [f"### {title}", "", note, "",
             "| configuration | final val loss | Δ val loss vs the paper's setting (paired by seed) | diverged | "
             "router logit max | z-loss value | busiest expert's share | dropped |",
             "|---|---|---|---|---|---|---|---|"]
    ref = [summary(names[0], s) for s in seeds]
    for name, label in zip(names, labels):
        runs = [summary(name, s) for s in seeds]
        delta = "—" if name == names[0] else cell([r["val"] - q["val"] for r, q in zip(runs, ref)], "{:.4f}", True)
        lines.append(" | ".join([
            f"| {label}",
            cell([r["val"] for r in runs], "{:.4f}"),
            delta,
            f"{sum(r['diverged'] for r in runs)}/{len(runs)}",
            cell([r["logit_max"] for r in runs], "{:.2f}"),
            cell([r["z"] for r in runs], "{:.3f}"),
            cell([r["load_max"] for r in runs], "{:.3f}"),
            cell([r["dropped"] for r in runs], "{:.3f}"),
        ]) + " |")
    return "\n".join(lines) + "\n"

header = (f"{steps} steps; seeds {', '.join(seeds)} (initialisation, jitter, dropout) on the corpus of data seed "
          f"{data_seed}; mean ± standard deviation over the seeds. Columns: validation loss at the end; its "
          "difference "
          "to the paper's setting with the same seed; runs that failed or logged a non-finite loss; over the last "
          "tenth of the run: the largest |router logit|, the mean z-loss value (mean logsumexp², unweighted), the "
          "busiest expert's share of the kept tokens (1/8 = balanced), and the fraction of (token, expert) pairs "
          "dropped.\n")
tables = {  # built only for the ablations asked for (the others' runs need not exist)
    "init": lambda: [
        table("Initialisation scale (Switch §2.4, Table 3)", "Switch preset, default learning rate.",
              ["init-0.1", "init-1.0"], ["init scale 0.1 (Switch)", "init scale 1.0"])],
    "zloss": lambda: [
        table("Router z-loss (ST-MoE §3)", f"ST-MoE preset, learning rate {stress_lr} (ten times the default).",
              ["zloss-1e-3", "zloss-0"], ["c_z = 1e-3 (ST-MoE)", "no z-loss"])],
    "balance": lambda: [
        table("Load-balancing loss (Switch §2.2)", "Switch preset, default learning rate.",
              ["init-0.1", "balance-0"], ["α = 1e-2 (Switch)", "α = 0"])],
    "jitter": lambda: [
        table("Input jitter (ST-MoE §3)", f"ST-MoE preset with its z-loss, learning rate {stress_lr}.",
              ["zloss-1e-3", "jitter-1e-2"], ["no jitter (ST-MoE)", "jitter ε = 1e-2"])],
    "precision": lambda: [
        table("Router precision (Switch §2.4, Table 2)", "Switch preset, MoE layers in bfloat16 (--precision bf16), "
              "default learning rate.", ["bf16-router32", "bf16-router16"],
              ["float32 router (Switch)", "bfloat16 router"]),
        table("Router precision at the stress learning rate", f"As above, learning rate {stress_lr}.",
              ["bf16-router32-lr", "bf16-router16-lr"], ["float32 router (Switch)", "bfloat16 router"])],
}
text = "\n".join([header] + [t for a in ablations for t in tables[a]()])
open(f"{out}/results.md", "w").write(text)
print(text)

# What the z-loss does over a run: the largest |router logit| and the z-loss value, every seed.
if "zloss" not in ablations:
    sys.exit(0)
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for name, label, color in (("zloss-1e-3", "c_z = 1e-3 (ST-MoE)", "tab:blue"), ("zloss-0", "no z-loss", "tab:red")):
    for i, seed in enumerate(seeds):
        rows = [json.loads(line) for line in open(f"{out}/{name}.seed{seed}.jsonl")]
        x = [r["step"] for r in rows]
        kw = dict(color=color, alpha=0.7, lw=0.8, label=label if i == 0 else None)
        left.plot(x, [r["router_logit_max"] for r in rows], **kw)
        right.semilogy(x, [r["z_loss"] for r in rows], **kw)
left.set(xlabel="step", ylabel="largest |router logit|", title="router logits")
right.set(xlabel="step", ylabel="z-loss value (mean logsumexp²)", title="z-loss value")
for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend()
fig.suptitle(f"ST-MoE preset, lr {stress_lr}, seeds {', '.join(seeds)}")
fig.tight_layout()
fig.savefig(f"{out}/zloss.png", dpi=110)
PY
echo "wrote $out/results.md$([[ " ${ablations[*]} " == *" zloss "* ]] && echo " and $out/zloss.png")"
