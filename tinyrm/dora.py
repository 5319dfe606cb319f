"""DoRA / LoRA adapters on a frozen nn.Linear, applying them to an encoder, and layer freezing.

    names = add_dora(enc, rank=8, alpha=16, targets=["Wqkv", "Wo", "Wi", "dense", "decoder"])
    freeze_layers(enc, k=6)          # embeddings + layers 0..5 frozen (their adapters too)
    print(param_summary(enc))

Choices (documented here because callers depend on them):
  * The wrapped layer's base `weight` and `bias` are always frozen: the adapter is the update. They stay
    attributes of the wrapper, so the base state-dict keys are unchanged (`...Wqkv.weight`) and a tied
    decoder keeps sharing its Parameter with the token embedding. Adapter keys are `...Wqkv.lora_A`,
    `...lora_B`, `...magnitude` (PEFT: `lora_A.weight`, `lora_B.weight`, `lora_magnitude_vector`).
  * freeze_layers(train_base=None): base parameters that are not inside an adapted linear (norms,
    un-adapted linears, embeddings) are trainable in the unfrozen part only when `train_base` is True;
    None means "True when the model has no adapters" — the paper's DoRA runs train adapters only,
    its "DoRA: no" runs fine-tune the unfrozen upper layers fully.
  * merge() never writes into the base weight (it may be the tied embedding): it stores the folded
    weight beside it, so unmerge() is exact by construction and costs nothing.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyrm.kernels.dora import base_row_norm_sq, dora_linear, dora_row_norm, lora_linear, merged_weight

ADAPTER_PARAMS = ("lora_A", "lora_B", "magnitude")
MODERNBERT_TARGETS = ["Wqkv", "Wo", "Wi", "dense", "decoder"]
BERT_TARGETS = ["query", "key", "value", "dense", "decoder"]


class DoRALinear(nn.Module):
    """W' = m ⊙ (W0 + s·BA) / ‖W0 + s·BA‖_row (norm detached), s = alpha / rank; LoRA if use_dora=False."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, use_dora: bool = True, dropout: float = 0.0):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.use_dora = rank, alpha, use_dora
        self.scale = alpha / rank
        # the base's own Parameters (not copies): keeps tying and state-dict keys
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self._base_sq, self._base_key = None, None
        self._merged, self._merged_key = None, None
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and PEFT do
        # with B = 0 the layer starts as the base: magnitude = ‖W0‖ per row
        self.magnitude = nn.Parameter(self.base_norm_sq().sqrt().to(w.dtype)) if use_dora else None
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else None

    # ---- cached frozen-base row norms ----
    def _wkey(self):
        w = self.weight
        return (w.data_ptr(), w._version, w.dtype, w.device, tuple(w.shape))

    def base_norm_sq(self) -> torch.Tensor:
        """‖W0‖² per row [out] (float32 or wider), recomputed only when the base weight changes: the key is
        the storage pointer and version counter, which load_state_dict's copy_, .to() and assignment move."""
        key = self._wkey()
        if self._base_key != key:
            self._base_sq, self._base_key = base_row_norm_sq(self.weight), key
        return self._base_sq

    def weight_norm(self) -> torch.Tensor:
        """‖W0 + s·BA‖ per row [out], detached."""
        return dora_row_norm(self.weight, self.lora_A, self.lora_B, self.scale, self.base_norm_sq())

    # ---- merge for inference ----
    @property
    def merged(self) -> bool:
        return self._merged is not None

    def _adapter_key(self):
        ps = [self.lora_A, self.lora_B] + ([self.magnitude] if self.use_dora else [])
        return self._wkey() + tuple((p.data_ptr(), p._version) for p in ps)

    def merge(self) -> None:
        """Fold the adapter into one plain weight used by forward (eval only); the base is untouched."""
        if self.training:
            raise RuntimeError("DoRALinear.merge(): call .eval() first (a merged layer trains nothing)")
        norm = self.weight_norm() if self.use_dora else None
        self._merged = merged_weight(self.weight, self.lora_A, self.lora_B, self.magnitude, norm, self.scale)
        self._merged_key = self._adapter_key()

    def unmerge(self) -> None:
        self._merged, self._merged_key = None, None

    def train(self, mode: bool = True):
        if mode:
            self.unmerge()  # training needs the factored form
        return super().train(mode)

    def inference_weight(self) -> torch.Tensor | None:
        """The merged weight while merged (eval), else None: a caller may then fuse this layer's GEMM with
        what follows it (bert.py: the up-projection and its GELU), exactly as forward would compute it."""
        return self._fresh_merged() if self._merged is not None else None

    # ---- forward ----
    def _fresh_merged(self) -> torch.Tensor:
        if self._merged_key != self._adapter_key():  # adapter or base changed since merge()
            self.merge()
        return self._merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        if self._merged is not None:
            return F.linear(x, self._fresh_merged(), self.bias)
        if self.lora_dropout is not None and self.training and self.lora_dropout.p > 0:
            return self._forward_dropout(x)
        if not self.use_dora:
            return lora_linear(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scale)
        return dora_linear(x, self.weight, self.bias, self.lora_A, self.lora_B, self.magnitude,
                           self.weight_norm(), self.scale)

    def forward_rows(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Only output features `rows` (e.g. two vocabulary entries of a decoder): [..., in] -> [..., len(rows)].
        Exact: DoRA's norm is per output row, so the other rows never enter."""
        w0, bias = self.weight[rows], None if self.bias is None else self.bias[rows]
        if self._merged is not None:
            return F.linear(x, self._fresh_merged()[rows], bias)
        b = self.lora_B[rows]
        if not self.use_dora:
            return lora_linear(x, w0, bias, self.lora_A, b, self.scale)
        norm = dora_row_norm(w0, self.lora_A, b, self.scale, self.base_norm_sq()[rows])
        return dora_linear(x, w0, bias, self.lora_A, b, self.magnitude[rows], norm, self.scale)

    def _forward_dropout(self, x):
        """PEFT's training-time formula with dropout: the base sees x, the adapter sees dropout(x)."""
        xd = self.lora_dropout(x)
        lora = F.linear(F.linear(xd, self.lora_A), self.lora_B) * self.scale
        base = F.linear(x, self.weight, self.bias)
        if not self.use_dora:
            return base + lora
        mns = self.magnitude / self.weight_norm()
        return base + (mns - 1) * F.linear(xd, self.weight) + mns * lora

    def extra_repr(self) -> str:
        kind = "dora" if self.use_dora else "lora"
        return (f"{self.in_features}->{self.out_features}, {kind} rank={self.rank}, alpha={self.alpha}, "
                f"merged={self.merged}")


# ---- applying adapters ----
def adapted_modules(model: nn.Module) -> dict[str, DoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, DoRALinear)}


def add_dora(model: nn.Module, rank: int, alpha: float, targets=MODERNBERT_TARGETS, use_dora: bool = True,
             dropout: float = 0.0) -> list[str]:
    """Replace every nn.Linear whose last name component is in `targets`; returns their names (sorted)."""
    if adapted_modules(model):
        raise RuntimeError("add_dora: the model already has adapters")
    targets = set(targets)
    found = [(n, m) for n, m in model.named_modules()
             if type(m) is nn.Linear and n.rsplit(".", 1)[-1] in targets]
    if not found:
        raise ValueError(f"add_dora: no nn.Linear named any of {sorted(targets)} in {type(model).__name__}")
    for name, lin in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, DoRALinear(lin, rank, alpha, use_dora=use_dora, dropout=dropout))
    return sorted(n for n, _ in found)


def merge_all(model: nn.Module) -> None:
    for m in adapted_modules(model).values():
        m.merge()


# ---- freezing ----
def _encoder(model: nn.Module) -> nn.Module:
    """The module exposing layers / embeddings / head_modules (the model itself or a submodule)."""
    for m in model.modules():
        if all(hasattr(m, a) for a in ("layers", "embeddings", "head_modules", "config")):
            return m
    raise TypeError(f"{type(model).__name__} has no encoder with .layers/.embeddings/.head_modules()")


def freeze_layers(model: nn.Module, k: int, train_base: bool | None = None) -> None:
    """Freeze embeddings and layers 0..k-1 (adapters inside them too); at k == num_layers also the final
    norm and the MLM head. Elsewhere adapters train, adapted base linears stay frozen, and every other
    base parameter trains iff `train_base` (None: True exactly when the model has no adapters)."""
    enc = _encoder(model)
    n = enc.config.num_layers
    if not 0 <= k <= n:
        raise ValueError(f"freeze_layers: k={k} outside 0..{n}")
    adapters = list(adapted_modules(model).values())
    if train_base is None:
        train_base = not adapters
    adapter_ids = {id(getattr(m, p)) for m in adapters for p in ADAPTER_PARAMS if getattr(m, p) is not None}
    frozen_base = {id(p) for m in adapters for p in (m.weight, m.bias) if p is not None}
    for p in model.parameters():
        if id(p) in adapter_ids:
            p.requires_grad_(True)
        elif id(p) in frozen_base:
            p.requires_grad_(False)
        else:
            p.requires_grad_(train_base)
    frozen = [enc.embeddings, *list(enc.layers)[:k]] if k > 0 else []
    if k == n:
        frozen += [enc.final_norm, *enc.head_modules()]
    for mod in frozen:
        if mod is not None:
            for p in mod.parameters():
                p.requires_grad_(False)


def param_summary(model: nn.Module) -> str:
    """One line: trainable vs total parameters (tied parameters counted once)."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"trainable params: {train:,} / {total:,} ({100.0 * train / max(total, 1):.4f}%)"
