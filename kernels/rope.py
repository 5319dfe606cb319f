"""Rotary position embedding (rotate-half layout) on packed sequences.

Positions restart at 0 for every sequence of the packed batch; cos/sin are built once per forward for
each rotary base and shared by all layers that use that base.
"""
from __future__ import annotations

import torch


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """positions [T] (int) -> cos, sin [T, head_dim] in `dtype` (angles computed in float32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)                            # [T, hd]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, hd]; cos/sin [T, hd] -> x rotated (rotate-half: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s))."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :half], sin[:, None, :half]  # the two halves of cos/sin are equal by construction
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

