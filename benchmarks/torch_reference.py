#!/usr/bin/env python3
"""PyTorch reference for moe_bench_host's layer benchmarks: the same layers, shapes and counters.

The MoE layers are written the way practitioners write them in PyTorch model code:
  loop     a Python loop over experts, each gathering its tokens with index_select and scattering
           the weighted outputs back with index_add_ (HF Mixtral / fairseq style; torch.where per
           expert, so one host synchronisation per expert on a GPU);
  grouped  tokens sorted by expert, one torch._grouped_mm per projection (torchtitan style); only
           when the installed PyTorch has torch._grouped_mm and it runs for this device and dtype.
Routing follows each preset (moe_bench_host's layer/ family): fp32 router, top-k, renormalised
gates for top-2, GShard/fairseq capacity positions (first choices before second choices), the
load-balancing loss (and the z-loss for ST-MoE), Switch's input jitter. The dense FFN of equal active
FLOPs (width k·d_ff, same activation) is timed right before each MoE layer, and
  vs_dense = dense time / MoE time     (1.0 = parity)
as in the C++ benchmarks. Routing skew (uniform or Zipf-like) is imposed the same way as there:
router weights [I_E; 0] + noise, and inputs whose first E columns put 4.0 on the first choice and
3.0 on the second. Nothing here needs a network connection.

  /usr/bin/python3 benchmarks/torch_reference.py                        # CPU, float32
  python3 benchmarks/torch_reference.py --device cuda --dtype bfloat16  # GPU (CUDA-event timing)
  ... --filter 'fwd_bwd/E:8/' --reps 7 --json out.json
"""

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # ctest's smoke run skips (77) where no PyTorch is installed
    print("torch_reference.py: PyTorch is not installed for this python (Debian: apt-get install python3-torch, "
          "then run /usr/bin/python3)", file=sys.stderr)
    sys.exit(77 if "--smoke" in sys.argv else 1)

# ---- presets (moe/presets/*.hpp) ------------------------------------------------------------------
PRESETS = {
    # name: k, gated, activation, capacity factor (train; None = dropless), renormalise, jitter, z-loss
    "switch_transformer": dict(k=1, gated=False, act="relu", cf=1.25, renorm=False, jitter=1e-2, z=0.0),
    "glam": dict(k=2, gated=True, act="gelu", cf=2.0, renorm=True, jitter=0.0, z=0.0),
    "st_moe": dict(k=2, gated=True, act="gelu", cf=1.25, renorm=True, jitter=0.0, z=1e-3),
    "top2_dropless": dict(k=2, gated=True, act="gelu", cf=None, renorm=True, jitter=0.0, z=0.0),
}
LB_WEIGHT = 1e-2


def activation(name, v):
    return F.relu(v) if name == "relu" else F.gelu(v, approximate="tanh")


def capacity(cf, tokens, experts):
    # moe::capacity_factor: max(4, min(S, floor(CF·S/E)))
    return max(4, min(tokens, int(math.floor(cf * tokens / experts))))


# ---- inputs with imposed routing (common.cpp: make_routed_inputs) --------------------------------
def routed_inputs(tokens, d, experts, k, skew, gen, device):
    if skew == "uniform":
        order = torch.randperm(tokens, generator=gen)
        i = torch.arange(tokens)
        first = torch.empty(tokens, dtype=torch.long)
        first[order] = i % experts
        second = None
        if k == 2:
            second = torch.empty(tokens, dtype=torch.long)
            second[order] = (i % experts + 1 + (i // experts) % (experts - 1)) % experts
    else:
        w = 1.0 / torch.arange(1, experts + 1, dtype=torch.float64)
        first = torch.multinomial(w, tokens, replacement=True, generator=gen)
        second = None
        if k == 2:
            w2 = w.expand(tokens, experts).clone()
            w2[torch.arange(tokens), first] = 0
            second = torch.multinomial(w2, 1, generator=gen).squeeze(1)

    def signed(n, lo, hi):
        mag = lo + (hi - lo) * torch.rand(n, generator=gen)
        return torch.where(torch.rand(n, generator=gen) < 0.5, -mag, mag)

    x = signed((tokens, d), 0.1, 1.0)
    x[:, :experts] = signed((tokens, experts), 0.1, 0.5)
    x[torch.arange(tokens), first] = 4.0
    if second is not None:
        x[torch.arange(tokens), second] = 3.0
    w_r = signed((d, experts), 1e-4, 1e-3)
    w_r[torch.arange(experts), torch.arange(experts)] += 1.0
    return x.to(device), w_r.to(device)


# ---- the layers ---------------------------------------------------------------------------------
class Params:
    def __init__(self, experts, d, f, gated, dtype, device, gen):
        def w(*shape, fan_in):
            t = torch.randn(*shape, generator=gen) / math.sqrt(fan_in)
            return t.to(device=device, dtype=dtype).requires_grad_()

        # [E, f, d] / [E, d, f]: nn.Linear layout (out, in), the layout torch._grouped_mm wants transposed
        self.w_in = w(experts, f, d, fan_in=d)
        self.w_up = w(experts, f, d, fan_in=d) if gated else None
        self.w_out = w(experts, d, f, fan_in=f)


def route(x, w_r, p, training=True):
    """Router (fp32), top-k, capacity. Returns gates [T, k] (0 where dropped), experts [T, k],
    keep [T, k] and the auxiliary loss."""
    tokens, experts = x.shape[0], w_r.shape[1]
    xr = x.float()
    if training and p["jitter"] > 0:
        eps = p["jitter"]
        xr = xr * torch.empty_like(xr).uniform_(1.0 - eps, 1.0 + eps)
    logits = xr @ w_r
    probs = logits.softmax(dim=-1)
    gate, expert = probs.topk(p["k"], dim=-1)
    if p["renorm"]:
        gate = gate / gate.sum(dim=-1, keepdim=True)
    mask = F.one_hot(expert, experts)  # [T, k, E]
    if p["cf"] is not None:
        # GShard / fairseq top2gating: position in the expert's buffer, all first choices first.
        c = capacity(p["cf"], tokens, experts)
        m = mask.transpose(0, 1).reshape(-1, experts)
        pos = ((m.cumsum(dim=0) - 1) * m).sum(dim=-1).reshape(p["k"], tokens).t()
        keep = pos < c
    else:
        keep = torch.ones_like(expert, dtype=torch.bool)
    # Switch load balancing (f from first choices), ST-MoE z-loss.
    f_i = mask[:, 0].float().mean(dim=0)
    aux = LB_WEIGHT * experts * (f_i * probs.mean(dim=0)).sum()
    if p["z"] > 0:
        aux = aux + p["z"] * torch.logsumexp(logits, dim=-1).pow(2).mean()
    return gate * keep, expert, keep, aux


def expert_ffn(xe, w_in, w_up, w_out, act):
    h = activation(act, xe @ w_in.t())
    if w_up is not None:
        h = h * (xe @ w_up.t())
    return h @ w_out.t()


def moe_loop(x, w_r, prm, p):
    gate, expert, keep, aux = route(x, w_r, p)
    y = torch.zeros_like(x)
    for e in range(prm.w_in.shape[0]):
        tok, slot = torch.where((expert == e) & keep)
        if tok.numel() == 0:
            continue
        xe = x.index_select(0, tok)
        out = expert_ffn(xe, prm.w_in[e], None if prm.w_up is None else prm.w_up[e], prm.w_out[e], p["act"])
        y.index_add_(0, tok, out * gate[tok, slot, None].to(out.dtype))
    return y, aux


def moe_grouped(x, w_r, prm, p):
    gate, expert, keep, aux = route(x, w_r, p)
    experts, k = prm.w_in.shape[0], p["k"]
    key = torch.where(keep, expert, experts).reshape(-1)  # dropped pairs sort last
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=experts + 1)[:experts]
    offs = counts.cumsum(dim=0).to(torch.int32)
    # Kept rows only: one host synchronisation (the loop has one per expert). Rows past offs[-1]
    # would come back undefined from _grouped_mm, and their gradients with them.
    rows = order[: int(offs[-1])]
    tok = rows // k
    xs = x.index_select(0, tok)
    h = activation(p["act"], torch._grouped_mm(xs, prm.w_in.transpose(-2, -1), offs=offs))
    if prm.w_up is not None:
        h = h * torch._grouped_mm(xs, prm.w_up.transpose(-2, -1), offs=offs)
    out = torch._grouped_mm(h, prm.w_out.transpose(-2, -1), offs=offs)
    out = out * gate.reshape(-1)[rows, None].to(out.dtype)
    return torch.zeros_like(x).index_add(0, tok, out), aux


def grouped_mm_available(device, dtype):
    if not hasattr(torch, "_grouped_mm"):
        return False, "torch._grouped_mm not in this PyTorch"
    try:
        a = torch.randn(32, 16, device=device, dtype=dtype, requires_grad=True)
        b = torch.randn(2, 16, 16, device=device, dtype=dtype).transpose(-2, -1).requires_grad_()
        out = torch._grouped_mm(a, b, offs=torch.tensor([16, 32], device=device, dtype=torch.int32))
        out.sum().backward()  # training needs its backward too
        return True, ""
    except Exception as err:  # unsupported device, dtype or architecture
        return False, f"torch._grouped_mm failed here: {str(err).splitlines()[0][:80]}"


class Dense:
    def __init__(self, d, f, gated, dtype, device, gen):
        def w(*shape, fan_in):
            t = torch.randn(*shape, generator=gen) / math.sqrt(fan_in)
            return t.to(device=device, dtype=dtype).requires_grad_()

        self.w_in = w(f, d, fan_in=d)
        self.w_up = w(f, d, fan_in=d) if gated else None
        self.w_out = w(d, f, fan_in=f)

    def __call__(self, x, act):
        return expert_ffn(x, self.w_in, self.w_up, self.w_out, act)


# ---- timing ---------------------------------------------------------------------------------------
class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def run_case(name, p, impl, experts, tokens, skew, backward, args, device, dtype, timer):
    gen = torch.Generator().manual_seed(1234)
    d, f, k = args.d_model, args.d_ff, p["k"]
    x32, w_r = routed_inputs(tokens, d, experts, k, skew, gen, device)
    x = x32.to(dtype).requires_grad_(backward)
    dy = (0.01 + 0.09 * torch.rand(tokens, d, generator=gen)).to(device=device, dtype=dtype)
    prm = Params(experts, d, f, p["gated"], dtype, device, gen)
    dense = Dense(d, k * f, p["gated"], dtype, device, gen)
    layer = moe_loop if impl == "loop" else moe_grouped

    def moe_pass():
        x.grad = None
        y, aux = layer(x, w_r, prm, p)
        if backward:
            torch.autograd.backward([y, aux], [dy, torch.ones_like(aux)])

    def dense_pass():
        x.grad = None
        y = dense(x, p["act"])
        if backward:
            y.backward(dy)

    for _ in range(args.warmup):
        dense_pass()
        moe_pass()
    t_moe, t_dense = [], []
    for _ in range(args.reps):  # paired: the dense reference measured right before each MoE run
        t_dense.append(timer(dense_pass))
        t_moe.append(timer(moe_pass))
    with torch.no_grad():
        gate, expert, keep, _ = route(x.detach(), w_r, p)
        loads = torch.bincount(expert.reshape(-1), minlength=experts).float()
        kept = int(keep.sum())
    tm, td = statistics.median(t_moe), statistics.median(t_dense)
    flops = kept * 2.0 * d * f * (3 if p["gated"] else 2) * (3 if backward else 1)
    return {
        "name": f"layer/{name}/torch_{impl}/{'fwd_bwd' if backward else 'fwd'}/E:{experts}/T:{tokens}/skew:{skew}",
        "ms": tm * 1e3,
        "ms_min": min(t_moe) * 1e3,
        "tokens_per_s": tokens / tm,
        "TFLOPps": flops / tm * 1e-12,
        "vs_dense": td / tm,
        "dense_ms": td * 1e3,
        "load_max": float(loads.max() / loads.mean()),
        "dropped": 1.0 - kept / float(expert.numel()),
    }


def run_dense(act, gated, f, tokens, backward, args, device, dtype, timer):
    gen = torch.Generator().manual_seed(1234)
    dense = Dense(args.d_model, f, gated, dtype, device, gen)
    x = (torch.rand(tokens, args.d_model, generator=gen) + 0.1).to(device=device, dtype=dtype).requires_grad_(backward)
    dy = (0.01 + 0.09 * torch.rand(tokens, args.d_model, generator=gen)).to(device=device, dtype=dtype)

    def run():
        x.grad = None
        y = dense(x, act)
        if backward:
            y.backward(dy)

    for _ in range(args.warmup):
        run()
    t = statistics.median(timer(run) for _ in range(args.reps))
    return {
        "name": f"dense/{'geglu' if gated else 'relu'}/f:{f}/{'fwd_bwd' if backward else 'fwd'}/T:{tokens}/torch",
        "ms": t * 1e3,
        "tokens_per_s": tokens / t,
        "TFLOPps": 2.0 * tokens * args.d_model * f * (3 if gated else 2) * (3 if backward else 1) / t * 1e-12,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="activation/weight type (router always fp32); default float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--d-ff", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--skew", nargs="+", default=["uniform", "zipf"], choices=["uniform", "zipf"])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--impl", nargs="+", default=["loop", "grouped"], choices=["loop", "grouped"])
    ap.add_argument("--passes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    ap.add_argument("--reps", type=int, default=5, help="timed runs per case (the median is reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--filter", default="", help="regular expression on the benchmark names")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one rep: checks that everything runs")
    args = ap.parse_args()
    if args.smoke:
        args.d_model, args.d_ff, args.tokens, args.experts, args.reps, args.warmup = 64, 128, 512, [8], 1, 1

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available to this PyTorch")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    timer = Timer(device)
    grouped_ok, why = grouped_mm_available(device, dtype)

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "grouped_mm": "yes" if grouped_ok else why,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print("# " + ", ".join(f"{k}: {v}" for k, v in env.items() if v is not None))
    pattern = re.compile(args.filter)
    results = []

    def report(r):
        results.append(r)
        extra = " ".join(f"{k}={r[k]:.3g}" for k in ("vs_dense", "TFLOPps", "load_max", "dropped") if k in r)
        print(f"{r['name']:70s} {r['ms']:10.2f} ms  tokens_per_s={r['tokens_per_s']:.4g} {extra}", flush=True)

    for gated, act, f in ((False, "relu", args.d_ff), (True, "gelu", 2 * args.d_ff)):
        for ps in args.passes:
            name = f"dense/{'geglu' if gated else 'relu'}/f:{f}/{ps}/T:{args.tokens}/torch"
            if pattern.search(name):
                report(run_dense(act, gated, f, args.tokens, ps == "fwd_bwd", args, device, dtype, timer))
    for preset in args.presets:
        for impl in args.impl:
            if impl == "grouped" and not grouped_ok:
                print(f"# layer/{preset}/torch_grouped skipped: {why}")
                continue
            for ps in args.passes:
                for experts in args.experts:
                    for skew in args.skew:
                        name = f"layer/{preset}/torch_{impl}/{ps}/E:{experts}/T:{args.tokens}/skew:{skew}"
                        if pattern.search(name):
                            report(run_case(preset, PRESETS[preset], impl, experts, args.tokens, skew,
                                            ps == "fwd_bwd", args, device, dtype, timer))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"context": env, "benchmarks": results}, out, indent=1)


if __name__ == "__main__":
    main()
