"""Variable-length attention on packed sequences: global or sliding-window, never across sequences.

Layout: q, k, v are [T, heads, head_dim] for T packed tokens; `seqlens` lists each sequence's length
(a Python list, so no device sync is needed to slice). Padding costs nothing because it is not there.

Fast path: scaled_dot_product_attention per run of equal-length sequences (one batched call for each
run; length-sorted batches and the two orders of a pairwise example give such runs), with a band mask
only for sliding-window layers whose sequence is longer than the window. On CUDA, global layers use
`torch.nn.attention.varlen.varlen_attn` when this torch has it. `varlen_attention_reference` is the
simple fallback and the test oracle: one dense masked softmax over the whole packed batch.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

try:  # torch >= 2.9 on CUDA: one kernel over all sequences
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except Exception:  # pragma: no cover - depends on the torch build
    _varlen_attn = None


@lru_cache(maxsize=64)
def _band(n: int, window: int, device: str) -> torch.Tensor:
    """[n, n] bool, True where |i - j| <= window (allowed)."""
    i = torch.arange(n, device=device)
    return (i[:, None] - i[None, :]).abs() <= window


def _runs(seqlens: list[int]):
    """Yield (start_token, length, count) for maximal runs of equal consecutive lengths."""
    start, i = 0, 0
    while i < len(seqlens):
        n = seqlens[i]
        j = i
        while j < len(seqlens) and seqlens[j] == n:
            j += 1
        yield start, n, j - i
        start += n * (j - i)
        i = j


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: list[int],
                     window: int | None = None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """q, k, v [T, heads, hd] -> [T, heads, hd]. `window`: a token sees keys with |i - j| <= window."""
    T, H, D = q.shape
    if (q.is_cuda and _varlen_attn is not None and cu_seqlens is not None
            and q.dtype in (torch.float16, torch.bfloat16)):
        mx = max(seqlens)
        cu = cu_seqlens.to(torch.int32)
        try:
            if window is None:
                return _varlen_attn(q, k, v, cu, cu, mx, mx)
            return _varlen_attn(q, k, v, cu, cu, mx, mx, window_size=(window, window))
        except (TypeError, RuntimeError):  # an older torch without window_size, or an unsupported GPU
            pass
    runs = list(_runs(seqlens))
    sizes = [n * count for _, n, count in runs]
    # one split per tensor: slicing each run separately would make autograd zero-fill a full [T, H, D]
    # gradient per run (quadratic in the number of runs); split's backward concatenates instead
    outs = []
    for (_, n, count), qs, ks, vs in zip(runs, q.split(sizes), k.split(sizes), v.split(sizes)):
        # [count*n, H, D] -> [count, H, n, D]
        qs, ks, vs = (t.view(count, n, H, D).transpose(1, 2) for t in (qs, ks, vs))
        mask = None
        if window is not None and n - 1 > window:
            mask = _band(n, window, str(q.device))
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask)
        outs.append(o.transpose(1, 2).reshape(n * count, H, D))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def varlen_attention_reference(q, k, v, seqlens: list[int], window: int | None = None) -> torch.Tensor:
    """Dense reference: one softmax over all T tokens with a block-diagonal (and band) mask."""
    T, H, D = q.shape
    seq_id = torch.repeat_interleave(torch.arange(len(seqlens)), torch.tensor(seqlens)).to(q.device)
    pos = torch.cat([torch.arange(n) for n in seqlens]).to(q.device)
    allowed = seq_id[:, None] == seq_id[None, :]
    if window is not None:
        allowed &= (pos[:, None] - pos[None, :]).abs() <= window
    scores = torch.einsum("ihd,jhd->hij", q, k) * D ** -0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hij,jhd->ihd", scores.softmax(-1), v)


def row_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: list[int], qpos: torch.Tensor,
                  window: int | None = None) -> torch.Tensor:
    """One query per sequence (e.g. its [MASK] slot) against that sequence's keys.

    q [B, heads, hd] (row b belongs to sequence b, at position qpos[b]); k, v [T, heads, hd] packed.
    -> [B, heads, hd]. Used for the last layer, whose other query rows nobody reads.
    """
    B, H, D = q.shape
    runs = list(_runs(seqlens))
    sizes = [n * count for _, n, count in runs]
    outs, b0 = [], 0
    for (_, n, count), ks, vs in zip(runs, k.split(sizes), v.split(sizes)):
        qs = q[b0:b0 + count].view(count, H, 1, D)
        ks, vs = (t.view(count, n, H, D).transpose(1, 2) for t in (ks, vs))   # [count, H, n, D]
        mask = None
        if window is not None and n - 1 > window:
            j = torch.arange(n, device=q.device)
            mask = ((j[None, :] - qpos[b0:b0 + count, None]).abs() <= window)[:, None, None, :]
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask).view(count, H, D))
        b0 += count
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
