"""DoRA forward+backward: tinyrm's DoRALinear against PEFT's DoRA on ModernBERT-base-shaped linears.

    .venv/bin/python bench/dora.py [--tokens 4096] [--reps 7] [--threads N]

Both sides hold the same base weight and the same adapter values (B != 0, magnitude moved off its
init). One process, same machine, sides alternated within every repetition; the table shows medians.

Memory is measured two honest ways (torch's CPU allocator has no max_memory_allocated):
  peak   the largest live-bytes total over forward+backward, from the profiler's allocation timeline
         (torch.profiler with profile_memory: every tensor CREATE / DESTROY, above what existed before);
  held   bytes kept alive between forward and backward: the output plus every tensor saved for
         backward (torch.autograd.graph.saved_tensors_hooks), de-duplicated by storage, not counting
         storages that existed before the forward (weights, the input).
`dX` says whether the input needs a gradient (a layer above the first trainable one) or not.
`frozen base` times the plain frozen nn.Linear alone (forward, plus the dX GEMM when dX=yes): the two
GEMMs every DoRA implementation must also run, so peft/ours cannot exceed peft/base.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

SHAPES = [("attn.Wqkv", 768, 2304), ("mlp.Wi", 768, 2304), ("mlp.Wo", 1152, 768), ("attn.Wo", 768, 768)]


class _Holder(nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def build(in_f: int, out_f: int, rank: int, seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from tinyrm.dora import DoRALinear
    torch.manual_seed(seed)
    base = nn.Linear(in_f, out_f, bias=False)
    peft = get_peft_model(_Holder(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["lin"],
                                                    use_dora=True, lora_dropout=0.0)).train()
    pl = peft.base_model.model.lin
    ours_base = nn.Linear(in_f, out_f, bias=False)
    ours_base.weight = nn.Parameter(base.weight.detach().clone())
    ours = DoRALinear(ours_base, rank, 2 * rank).train()
    with torch.no_grad():
        pl.lora_B["default"].weight.normal_(0, 0.02)
        pl.lora_magnitude_vector["default"].weight.mul_(0.9 + 0.2 * torch.rand(out_f))
        ours.lora_A.copy_(pl.lora_A["default"].weight)
        ours.lora_B.copy_(pl.lora_B["default"].weight)
        ours.magnitude.copy_(pl.lora_magnitude_vector["default"].weight)
    return peft, ours


def step(module, x, g):
    for p in module.parameters():
        p.grad = None
    if x.requires_grad:
        x.grad = None
    module(x).backward(g)


def held_bytes(module, x) -> int:
    pre = {p.untyped_storage().data_ptr() for p in module.parameters()} | {x.untyped_storage().data_ptr()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in pre:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    seen[y.untyped_storage().data_ptr()] = y.untyped_storage().nbytes()
    return sum(seen.values())


def peak_bytes(module, x, g) -> int:
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action
    for p in module.parameters():  # gradients are allocated inside the measured region
        p.grad = None
    x.grad = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        module(x).backward(g)
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def check_same(peft, ours, x, g):
    xa, xb = x.detach().clone().requires_grad_(x.requires_grad), x.detach().clone().requires_grad_(x.requires_grad)
    ya, yb = peft(xa), ours(xb)
    ya.backward(g), yb.backward(g)
    pl = peft.base_model.model.lin
    pairs = [(ya, yb), (pl.lora_A["default"].weight.grad, ours.lora_A.grad),
             (pl.lora_B["default"].weight.grad, ours.lora_B.grad),
             (pl.lora_magnitude_vector["default"].weight.grad, ours.magnitude.grad)]
    if x.requires_grad:
        pairs.append((xa.grad, xb.grad))
    return max(((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item() for a, b in pairs)


def run(tokens: int, reps: int, ranks, input_grads):
    rows = []
    for name, in_f, out_f in SHAPES:
        for rank in ranks:
            for dx in input_grads:
                peft, ours = build(in_f, out_f, rank)
                torch.manual_seed(1)
                x = torch.randn(tokens, in_f).requires_grad_(dx)
                g = torch.randn(tokens, out_f)
                err = check_same(peft, ours, x, g)
                for m in (peft, ours, peft, ours):  # warm-up
                    step(m, x, g)
                plain = nn.Linear(in_f, out_f, bias=False).requires_grad_(False)  # frozen base: the floor
                sides = [("peft", peft), ("ours", ours), ("base", plain)]
                t = {s: [] for s, _ in sides}
                for r in range(reps):
                    for side, m in (sides if r % 2 == 0 else sides[::-1]):
                        t0 = time.perf_counter()
                        step(m, x, g) if side != "base" or dx else m(x)
                        t[side].append(time.perf_counter() - t0)
                tp, to, tb = (statistics.median(t[s]) for s in ("peft", "ours", "base"))
                pk = {s: peak_bytes(m, x, g) for s, m in (("peft", peft), ("ours", ours))}
                hd = {s: held_bytes(m, x) for s, m in (("peft", peft), ("ours", ours))}
                rows.append((name, f"{in_f}->{out_f}", rank, "yes" if dx else "no", tb * 1e3, tp * 1e3, to * 1e3,
                             tp / to, pk["peft"] / 2**20, pk["ours"] / 2**20, pk["ours"] / pk["peft"],
                             hd["peft"] / 2**20, hd["ours"] / 2**20, hd["ours"] / hd["peft"], err))
                print(f"  done {name} r={rank} dX={dx}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 128])
    ap.add_argument("--input-grad", choices=["yes", "no", "both"], default="both")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dxs = {"yes": [True], "no": [False], "both": [True, False]}[a.input_grad]
    rows = run(a.tokens, a.reps, a.ranks, dxs)
    print(f"\nDoRA forward+backward, {a.tokens} tokens, float32, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {a.reps} (alternating sides)\n")
    print("| layer | shape | rank | dX | frozen base ms | peft ms | ours ms | peft/ours | peft peak MiB "
          "| ours peak MiB | ours/peft peak | peft held MiB | ours held MiB | ours/peft held | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| {} | {} | {} | {} | {:.1f} | {:.1f} | {:.1f} | **{:.2f}x** | {:.1f} | {:.1f} | {:.2f} | {:.1f} "
              "| {:.1f} | {:.2f} | {:.1e} |".format(*r))


if __name__ == "__main__":
    main()
