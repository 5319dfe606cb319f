"""DoRA / LoRA linear maths in plain PyTorch: no dense B·A, no extra activation-sized tensors.

DoRA (Liu et al. 2024) on a frozen linear W0 [out, in] with low-rank update B [out, r] · A [r, in]:

    y = mns ⊙ (x W0ᵀ + s (x Aᵀ) Bᵀ) + bias,    mns = m / ‖W0 + s·B·A‖_row  (norm detached, paper §4.3)

This is exactly PEFT's formula (base + (mns - 1)·base_nobias + mns·s·lora) rearranged. Why it is fast:
  * the row norm never builds B·A [out, in]:
        ‖W0 + sBA‖² = ‖W0‖² + 2s·rowsum((W0Aᵀ) ⊙ B) + s²·rowsum((B·(AAᵀ)) ⊙ B)
    where ‖W0‖² is cached by the caller (the base is frozen) and W0Aᵀ is only [out, r];
  * mns is folded into the weights before the matmuls (W0 ⊙ mns is weight-sized, activations are
    N× bigger), so the forward is one GEMM plus one in-place rank-r GEMM, with no elementwise pass
    over the [N, out] output (with fewer tokens than input features, the output is scaled instead);
  * backward saves only x, u = xAᵀ [N, r] and the output y (which exists anyway): the magnitude
    gradient Σₙ g⊙z / ‖·‖ is recovered from y as Σₙ g⊙(y - bias) / m, accumulated in cache-sized
    chunks so no [N, out] temporary is allocated. Rows with m == 0 (z is not recoverable) are
    recomputed exactly.
No host syncs on accelerators: the two rare exact fallbacks (norm cancellation, m == 0) look at a fixed
number of candidate rows there (_SYNC_FREE_ROWS; beyond it a cancelled norm keeps float32 accuracy of
‖W0‖², and a zero magnitude gets gradient 0 — exact in the one case that arises in practice, a zero base
row such as a padding token's embedding, where B's row and z stay 0). On CPU both paths are exact.
"""
from __future__ import annotations

import torch

# rows whose adapted norm² falls below this fraction of ‖W0‖² suffer cancellation in the expanded
# formula (float32 keeps ~1e-7 of the big terms); they are recomputed directly in float64.
_CANCEL = 1e-2
_SYNC_FREE_ROWS = 16  # rows an accelerator checks per layer without a host sync (see _rows_where)
_CHUNK = 1 << 20  # elements per chunk of the column-dot reduction (4 MB in float32: stays in cache)


def _rows_where(mask: torch.Tensor, score: torch.Tensor, sync_free: bool | None = None) -> torch.Tensor:
    """Rows needing the exact slow path. On CPU: exactly those where `mask` holds. On an accelerator,
    without a host sync: the _SYNC_FREE_ROWS rows with the lowest `score` (the most at risk); callers
    keep their result only where mask[rows] holds."""
    if sync_free is None:
        sync_free = mask.device.type != "cpu"
    if not sync_free:
        return mask.nonzero().squeeze(1)
    return torch.topk(score, min(_SYNC_FREE_ROWS, score.numel()), largest=False).indices


@torch.no_grad()
def base_row_norm_sq(w: torch.Tensor) -> torch.Tensor:
    """‖W0‖² per output row, [out], summed in float64 once per frozen weight (precision is free here)."""
    sq = torch.linalg.vector_norm(w.detach(), dim=1, dtype=torch.float64).square_()
    return sq.to(torch.promote_types(w.dtype, torch.float32))


@torch.no_grad()
def dora_row_norm(w0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float,
                  base_sq: torch.Tensor) -> torch.Tensor:
    """‖W0 + s·B·A‖ per row [out] in w0's dtype, without forming B·A. base_sq: base_row_norm_sq(w0).

    Sums run in float32 at least (bf16 weights get float32 [out, r] terms). The expansion is accurate
    to ~1e-7 of ‖W0‖² + ‖sBA‖²; only rows where the update cancels W0 need the direct fallback."""
    ft = base_sq.dtype
    w0, a, b = w0.detach(), a.detach().to(ft), b.detach().to(ft)
    wa = (w0 @ a.to(w0.dtype).T).to(ft)                   # [out, r]: the only O(out·in·r) step
    # rows of 2s·W0Aᵀ + s²·B(AAᵀ), dotted with rows of B: the cross and square terms in one pass
    t = torch.addmm(wa, b, a @ a.T, beta=2.0 * scale, alpha=scale * scale)
    norm_sq = torch.linalg.vecdot(b, t).add_(base_sq)
    # cancellation needs ‖sBA‖ ≈ ‖W0‖, so comparing with ‖W0‖² alone finds every row at risk
    bad = norm_sq < _CANCEL * base_sq
    rows = _rows_where(bad, norm_sq / base_sq.clamp_min(1e-30))
    if rows.numel():                                      # update nearly cancels W0: go direct
        direct = (w0[rows].double() + scale * (b[rows].double() @ a.double())).pow(2).sum(1).to(ft)
        norm_sq[rows] = torch.where(bad[rows], direct, norm_sq[rows])
    return norm_sq.clamp_min_(1e-30).sqrt_().to(w0.dtype)


def _col_dot(g: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None):
    """Σₙ g[n]·(y[n] - bias) and Σₙ g[n], each [out] float32+, in row chunks: no [N, out] temporary,
    and each chunk stays in cache (3x faster than (g * y).sum(0) at [4096, 2304] on CPU)."""
    n, out = g.shape
    acc = torch.promote_types(g.dtype, torch.float32)
    step = max(1, _CHUNK // max(out, 1))
    gy = torch.zeros(out, dtype=acc, device=g.device)
    gs = torch.zeros(out, dtype=acc, device=g.device) if bias is not None else None
    for i in range(0, n, step):
        gc = g[i:i + step]
        gy += (gc * y[i:i + step]).sum(0, dtype=acc)
        if gs is not None:
            gs += gc.sum(0, dtype=acc)
    if bias is not None:
        gy -= bias.to(acc) * gs                           # Σ g(y - b) = Σ g·y - b·Σ g
    return gy, gs


def _scale_weight(x: torch.Tensor, w0: torch.Tensor) -> bool:
    """Fold mns into the weight [out, in] when that is smaller than the activation [N, out]."""
    return w0.shape[1] <= x.shape[0]


class _DoRAFn(torch.autograd.Function):
    """x2d [N, in], w0 [out, in], bias [out]|None, a [r, in], b [out, r], m [out], norm [out] -> [N, out]."""

    @staticmethod
    def forward(ctx, x, w0, bias, a, b, m, norm, scale):
        mns = (m / norm).to(x.dtype)                      # [out]
        smb = b * (mns * scale)[:, None]                  # [out, r] = s·mns ⊙ B
        u = x @ a.T                                       # [N, r]
        if _scale_weight(x, w0):
            w = w0 * mns[:, None]                         # [out, in]  (transient)
            y = x @ w.T if bias is None else torch.addmm(bias, x, w.T)
        else:                                             # few tokens (e.g. a 50k-row decoder at the
            y = (x @ w0.T).mul_(mns)                      # [MASK] slots): scale the output instead
            if bias is not None:
                y.add_(bias)
        y.addmm_(u, smb.T)                                # += s·mns ⊙ u Bᵀ, in place
        ctx.scale = scale
        ctx.save_for_backward(x, w0, bias, a, b, m, norm, u, y, smb)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w0, bias, a, b, m, norm, u, y, smb = ctx.saved_tensors
        need_x, need_w0, need_bias, need_a, need_b, need_m = ctx.needs_input_grad[:6]
        g = g.contiguous()
        mns = (m / norm).to(g.dtype)
        gx = gw0 = gbias = ga = gb = gm = None
        if need_x or need_a:
            v = g @ smb                                   # [N, r] = (g ⊙ s·mns) B
            if need_x:                                    # (g ⊙ mns)(W0 + sBA), without the product
                if _scale_weight(x, w0):
                    gx = (g @ (w0 * mns[:, None])).addmm_(v, a)
                else:
                    gx = ((g * mns) @ w0).addmm_(v, a)
            if need_a:
                ga = v.T @ x                              # [r, in]
        if need_b:
            gb = (u.T @ g).T * (mns * ctx.scale)[:, None]  # [out, r]
        if need_w0:
            gw0 = (g.T @ x) * mns[:, None]
        if need_m or need_bias:
            gy, gs = _col_dot(g, y, bias)
            if need_bias:
                gbias = gs
            if need_m:
                # Σ g⊙z / norm, with y - bias = mns⊙z  =>  Σ g⊙(y - bias) / m
                zero = m == 0
                gm = torch.where(zero, 0.0, gy / torch.where(zero, 1.0, m).to(gy.dtype))
                rows = _rows_where(zero, m.abs())
                if rows.numel():                          # mns = 0 erased z there: recompute exactly
                    z = (x @ w0[rows].T).addmm_(u, b[rows].T, alpha=ctx.scale)
                    exact = (g[:, rows] * z).sum(0, dtype=gm.dtype) / norm[rows]
                    gm[rows] = torch.where(zero[rows], exact, gm[rows])
                gm = gm.to(m.dtype)
            if gbias is not None:
                gbias = gbias.to(bias.dtype)
        return gx, gw0, gbias, ga, gb, gm, None, None


def _autocast(x: torch.Tensor, *ts):
    """Under torch.autocast, run in the autocast dtype explicitly (the custom backward runs outside it)."""
    dev = x.device.type
    if not torch.is_autocast_enabled(dev):
        return (x, *ts)
    dt = torch.get_autocast_dtype(dev)
    return (x.to(dt), *(None if t is None else t.to(dt) for t in ts))


def dora_linear(x: torch.Tensor, w0: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, magnitude: torch.Tensor, norm: torch.Tensor, scale: float) -> torch.Tensor:
    """x [..., in] -> [..., out]. `norm` = dora_row_norm(...), treated as a constant. The magnitude keeps
    its dtype (its gradient is accumulated in float32 or wider)."""
    lead = x.shape[:-1]
    x, w0, bias, a, b = _autocast(x, w0, bias, a, b)
    with torch.autocast(x.device.type, enabled=False):
        y = _DoRAFn.apply(x.reshape(-1, x.shape[-1]), w0, bias, a, b, magnitude, norm.detach(), float(scale))
    return y.view(*lead, y.shape[-1])


def lora_linear(x: torch.Tensor, w0: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain LoRA: x W0ᵀ + bias + s (x Aᵀ) Bᵀ, the rank-r term added in place (autograd handles it:
    the base GEMM's output is not saved by anyone, and x, u are what the two small GEMMs need)."""
    lead = x.shape[:-1]
    x, w0, bias, a, b = _autocast(x, w0, bias, a, b)
    x2 = x.reshape(-1, x.shape[-1])
    with torch.autocast(x.device.type, enabled=False):
        y = x2 @ w0.T if bias is None else torch.addmm(bias, x2, w0.T)
        y = y.addmm_(x2 @ a.T, b.T, alpha=float(scale))
    return y.view(*lead, y.shape[-1])


@torch.no_grad()
def merged_weight(w0, a, b, magnitude, norm, scale: float) -> torch.Tensor:
    """The single plain weight equal to the adapted layer: mns ⊙ (W0 + sBA) (or W0 + sBA for LoRA)."""
    dt = torch.promote_types(w0.dtype, torch.float32)
    w = w0.to(dt) + scale * (b.to(dt) @ a.to(dt))
    if magnitude is not None:
        w = w * (magnitude.to(dt) / norm.to(dt))[:, None]
    return w.to(w0.dtype)
