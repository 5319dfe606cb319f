"""GeGLU: split the up-projection into (input, gate) halves, gelu(input) * gate, with exact (erf) GELU."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def geglu(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> [..., I]."""
    inp, gate = x.chunk(2, dim=-1)
    h = F.gelu(inp)
    if h.requires_grad:
        return h * gate                      # autograd needs gelu(inp) as it is
    return h.mul_(gate)                      # no autograd: reuse gelu's output, one [., I] tensor fewer
