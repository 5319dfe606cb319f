"""Alternated A/B of the chunked layer tail (kernels/chunked.py): the same model and pairs scored with
different chunk sizes in one process, reps interleaved, medians and per-rep paired speed-ups.

    .venv/bin/python bench/chunk_ab.py --mode pairwise --reps 9 --rows 0 512 1024 2048

Row counts: 0 = one call over the whole batch (no chunking). The first row count is the baseline.
MiniLM-L6 only: ModernBERT's layers do not chunk (session 6 measured a temporary chunked version at
0.98–1.01×, see the README's "Speed").
"""
from __future__ import annotations

import argparse

import torch

from inputs import minilm_path, rewardbench_sample  # also puts the repo root on sys.path
from machine import alternate, median


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["pairwise", "pointwise"], default="pairwise")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--rows", type=int, nargs="+", default=[0, 1024])
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import tinyrm.kernels.chunked as ch
    from tinyrm.scorer import RewardModel
    from tinyrm.weights import load_encoder

    torch.set_num_threads(a.threads)
    n = a.pairs
    enc = load_encoder(minilm_path()).eval()
    rm = RewardModel(enc, mode=a.mode, max_len=512)
    pairs = rewardbench_sample(n, 0)

    def score():
        return rm.compare([q for q, _, _ in pairs], [c for _, c, _ in pairs], [r for _, _, r in pairs])

    def set_rows(r):
        ch.ROWS = r

    default, outs = ch.ROWS, {}
    try:
        for r in a.rows:            # warm-up and the outputs' agreement
            set_rows(r)
            outs[r] = score()
        times = alternate({r: score for r in a.rows}, a.reps, before=set_rows)
    finally:
        ch.ROWS = default
    dp = max(abs(x - y) for r in a.rows for x, y in zip(outs[r], outs[a.rows[0]]))
    base = a.rows[0]
    print(f"MiniLM-L6 {a.mode}, {n} pairs, {a.reps} alternated reps, {a.threads} threads; max |dP| = {dp:.1e}")
    print("| rows per chunk | median s | speed-up of medians | median paired speed-up |")
    print("|---:|---:|---:|---:|")
    for r in a.rows:
        paired = median(b / t for b, t in zip(times[base], times[r]))
        print(f"| {r} | {median(times[r]):.3f} | "
              f"{median(times[base]) / median(times[r]):.3f}× | {paired:.3f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
