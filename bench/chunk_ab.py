"""Alternated A/B of two inference knobs: the chunked BERT layer tail (kernels/chunked.py, `--rows`) and
the scorer's tokens per batch (`--tokens`). The same model and pairs are scored with each setting in one
process, reps interleaved; medians, per-rep paired speed-ups and the minor page faults of one call.

    .venv/bin/python bench/chunk_ab.py --mode pairwise --reps 9 --rows 0 512 1024 2048
    .venv/bin/python bench/chunk_ab.py --model modernbert --pairs 8 --reps 11 --tokens 16384 2730

Row counts: 0 = one call over the whole batch (no chunking); they apply to MiniLM-L6 only, as
ModernBERT's layers do not chunk (a chunked version measured 0.98–1.01× in commit 3efbdb2; see
docs/decisions.md). Token budgets: RewardModel.max_tokens. The first value is the baseline.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

import torch

from inputs import minilm_path, rewardbench_sample, write_modernbert  # also puts the repo root on sys.path
from machine import alternate, median


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["minilm", "modernbert"], default="minilm",
                   help="MiniLM-L6 (real weights) or a random ModernBERT-base")
    p.add_argument("--mode", choices=["pairwise", "pointwise"], default="pairwise")
    p.add_argument("--reps", type=int, default=9)
    knob = p.add_mutually_exclusive_group()
    knob.add_argument("--rows", type=int, nargs="+", help="tokens per tail chunk (default: 0 1024)")
    knob.add_argument("--tokens", type=int, nargs="+", help="scorer tokens per batch")
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import tinyrm.kernels.chunked as ch
    from tinyrm.scorer import RewardModel
    from tinyrm.weights import load_encoder

    if a.model == "modernbert" and a.rows:
        p.error("--rows applies to MiniLM-L6 only (ModernBERT's layers do not chunk)")
    knob, values = ("tokens", a.tokens) if a.tokens else ("rows", a.rows or [0, 1024])
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="tinyrm-ab-") as tmp:
        if a.model == "modernbert":
            path, name = write_modernbert(Path(tmp) / "mb", minilm_path() / "tokenizer.json"), "ModernBERT-base (random)"
        else:
            path, name = minilm_path(), "MiniLM-L6"
        enc = load_encoder(path).eval()   # weights are copied into memory: the folder may go
    rm = RewardModel(enc, mode=a.mode, max_len=512)
    pairs = rewardbench_sample(a.pairs, 0)

    def score():
        return rm.compare([q for q, _, _ in pairs], [c for _, c, _ in pairs], [r for _, _, r in pairs])

    def setting(v):
        if knob == "rows":
            ch.ROWS = v
        else:
            rm.max_tokens = v

    default, outs, faults = ch.ROWS, {}, {}
    try:
        for v in values:            # warm-up, the outputs' agreement, and one call's minor page faults
            setting(v)
            score()
            f0 = minor_faults()
            outs[v] = score()
            faults[v] = minor_faults() - f0
        times = alternate({v: score for v in values}, a.reps, before=setting)
    finally:
        ch.ROWS = default
    dp = max(abs(x - y) for v in values for x, y in zip(outs[v], outs[values[0]]))
    base = values[0]
    print(f"{name} {a.mode}, {len(pairs)} pairs, {a.reps} alternated reps, {a.threads} threads; max |dP| = {dp:.1e}")
    label = "rows per chunk" if knob == "rows" else "tokens per batch"
    print(f"| {label} | median s | speed-up of medians | median paired speed-up | minor page faults per call |")
    print("|---:|---:|---:|---:|---:|")
    for v in values:
        paired = median(b / t for b, t in zip(times[base], times[v]))
        print(f"| {v} | {median(times[v]):.3f} | "
              f"{median(times[base]) / median(times[v]):.3f}× | {paired:.3f}× | {faults[v]:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
