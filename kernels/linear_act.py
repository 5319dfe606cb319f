"""Linear + exact GELU in one oneDNN call at inference; plain `gelu(linear(x))` everywhere else.

On CPU, `F.linear` is an MKL GEMM into an output first filled with the bias, and GELU is another full
pass over the [T, I] result. oneDNN's linear applies bias and GELU inside the GEMM's write-back
(`torch.ops.mkldnn._linear_pointwise`, the op torch's own CPU compiler emits for this pattern), which
saves both passes over the widest activation of a BERT layer. It has no autograd formula, so it runs only
when no gradient is wanted: scoring with merged adapters, and the frozen layers of a float32 training
step. Autocast (bf16 training steps) is left to F.linear, which it turns into a bf16 GEMM, as are CUDA
and other dtypes; that fallback is also the reference the test compares against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_fused = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
# oneDNN builds a primitive for every new input shape and keeps it in a per-process cache (LRU, 1,024 entries
# by default) at about 0.6 MB each for a BERT-base MLP weight. A scorer or trainer whose token count differs
# in every call would grow by that much per call until the cache is full: `tinyrm score` on a million rows
# crept by hundreds of MB. Rows are padded up to a multiple of ROW_BUCKET, so a whole run meets at most
# max_tokens / ROW_BUCKET shapes (16 for scoring's 1,024-row chunks), at a cost of < ROW_BUCKET rows per call.
ROW_BUCKET = 64


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [N, D], weight [O, D], bias [O] -> gelu(x @ weight.T + bias) [N, O] (exact erf GELU)."""
    if (_fused is not None and x.device.type == "cpu" and x.dim() == 2 and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        n, pad = x.shape[0], -x.shape[0] % ROW_BUCKET
        try:
            if pad == 0:
                return _fused(x, weight, bias, "gelu", [], "none")
            return _fused(F.pad(x, (0, 0, 0, pad)), weight, bias, "gelu", [], "none")[:n]
        except RuntimeError:  # pragma: no cover - a build whose oneDNN lacks the op for this shape
            pass
    return F.gelu(F.linear(x, weight, bias))
