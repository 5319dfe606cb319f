"""Token-chunked execution of a per-token block at inference, so its widest activation stays in cache.

After attention, an encoder layer treats every token alone (output projection, norms, MLP); run in chunks
of `ROWS` tokens, the [rows, 4H] MLP intermediate stays in cache between its two GEMMs. Only with grad
mode off: under autograd the saved activations are the same anyway. Measurements: bench/README.md.
"""
from __future__ import annotations

from typing import Callable

import torch

ROWS = 1024  # tokens per chunk; 0 turns chunking off (chosen by bench/chunk_ab.py)


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

