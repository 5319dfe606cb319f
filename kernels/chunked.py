"""Token-chunked execution of a per-token block at inference, so its widest activation stays in cache.

After attention, the rest of an encoder layer treats every token alone: output projection, residual,
norm, MLP up-projection, activation, down-projection, residual, norm. Run over all T packed tokens of a
scoring batch at once, the [T, 4H] intermediate is tens of MB (MiniLM at 10k tokens: 62 MB): the
up-projection streams it out to memory and the down-projection streams it back. Run over chunks of
`ROWS` tokens, it stays in the core's L2/L3 cache between the two GEMMs, and so do the residual and norm
passes. The GEMMs stay large enough ([1024, 384] x [384, 1536]) to run near their full speed.

Only at inference (grad mode off: scoring, validation). Under autograd each slice's backward would
zero-fill a full-size gradient and the saved activations would be the same anyway; and in a training
step's frozen layers (grad mode on, nothing to differentiate) chunks measured 0.94–0.96× in a bf16
autocast step: their unmerged DoRA adapters recompute the weight norm ‖W + s·BA‖ (`weight_norm()`)
for every chunk.
Every row goes through the same ops on the same values; only the GEMM library may block a GEMM of
fewer rows differently, so a sum can round differently (last bits: ~1e-6 on MiniLM's hidden states).
"""
from __future__ import annotations

from typing import Callable

import torch

ROWS = 1024  # tokens per chunk; 0 turns chunking off (bench/chunk_ab.py measured it: README "Speed")


def by_rows(fn: Callable[..., torch.Tensor], *xs: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """fn(*xs) for a row-wise fn, computed `rows` rows at a time: xs [N, ...] -> [N, ...]."""
    rows = ROWS if rows is None else rows
    N = xs[0].shape[0]
    if rows <= 0 or N <= rows:
        return fn(*xs)
    first = fn(*(x[:rows] for x in xs))
    out = first.new_empty((N, *first.shape[1:]))
    out[:rows] = first
    for s in range(rows, N, rows):
        out[s:s + rows] = fn(*(x[s:s + rows] for x in xs))
    return out

