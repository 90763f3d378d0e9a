#!/usr/bin/env python3
"""Plots moe-train JSONL logs: loss curves of several runs, and each run's expert load over steps.

usage: plot.py --out DIR [--floor NATS] [--title TEXT] RUN.jsonl[=LABEL] ...

Writes DIR/loss.png (training loss, smoothed, and validation loss of every run; the entropy floor
as a dashed line when given) and DIR/expert_load_<LABEL>.png for each run with MoE layers (a heat
map per MoE layer: fraction of the kept tokens each expert received, over steps).
Needs matplotlib (Debian: apt-get install python3-matplotlib; run with /usr/bin/python3).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def read_run(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"plot.py: {path}:{n}: not JSON ({e})")
    if not rows:
        sys.exit(f"plot.py: {path}: no log lines")
    return rows


def smooth(values, window):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="JSONL log, optionally =LABEL")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--floor", type=float, help="entropy floor (nats/token) to draw")
    ap.add_argument("--title", default="moe-train")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    runs = []
    for spec in args.runs:
        path, _, label = spec.partition("=")
        runs.append((label or os.path.splitext(os.path.basename(path))[0], read_run(path)))

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, rows) in enumerate(runs):
        color = f"C{i}"
        steps = [r["step"] for r in rows]
        losses = [r["loss"] for r in rows]
        ax.plot(steps, smooth(losses, max(1, len(rows) // 50)), color=color, alpha=0.5, lw=1)
        val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if val:
            ax.plot(*zip(*val), color=color, marker="o", ms=3, lw=2, label=f"{label} (validation)")
    if args.floor is not None:
        ax.axhline(args.floor, color="k", ls="--", lw=1, label=f"entropy floor {args.floor:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{args.title}: training loss (thin, smoothed) and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss.png"), dpi=120)
    plt.close(fig)

    for label, rows in runs:
        loads = [r.get("expert_load") or [] for r in rows]
        layers = len(loads[0])
        if layers == 0:
            continue
        fig, axes = plt.subplots(layers, 1, figsize=(8, 1.2 + 1.6 * layers), squeeze=False)
        steps = [r["step"] for r in rows]
        for l in range(layers):
            ax = axes[l][0]
            grid = [[step_loads[l][e] for step_loads in loads] for e in range(len(loads[0][l]))]
            im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                           extent=[steps[0] - 0.5, steps[-1] + 0.5, len(grid) - 0.5, -0.5])
            ax.set_ylabel(f"MoE layer {l}\nexpert")
            fig.colorbar(im, ax=ax, label="load fraction")
        axes[-1][0].set_xlabel("step")
        axes[0][0].set_title(f"{label}: fraction of kept tokens per expert")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, f"expert_load_{label}.png"), dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    main()
