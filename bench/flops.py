"""The model-FLOP formula of the benchmarks (the same count for both sides: useful work only, no padding,
head at the mask): a model's Shape, attended pairs, per-layer linear weights, and the scoring and
training-step FLOPs. Formulas: bench/README.md.
"""
from __future__ import annotations

from dataclasses import dataclass


# --------------------------------------------------------------------------- model FLOPs
# Forward matmuls: 2 · (weight elements of the linears a token passes through) per token; attention:
# 4 · pairs · hidden per layer per sequence (QKᵀ and PV, 2 FLOPs per multiply-add), pairs = L² for a
# global layer and the band |i - j| <= window for a ModernBERT local layer. The MLM head runs at the
# [MASK] only: 2·H² (dense) + 2·H·2 (the two answer rows). Embedding lookups, norms, activations,
# softmax and biases are not counted. Adapters: their A and B count as linear weights.

@dataclass
class Shape:
    arch: str              # "bert" | "modernbert"
    hidden: int
    layers: int
    heads: int
    intermediate: int
    window: int | None = None          # ModernBERT local half-window (a token sees |i-j| <= window)
    global_every: int = 3

    @classmethod
    def of(cls, cfg) -> "Shape":
        """From a tinyrm EncoderConfig."""
        return cls(cfg.arch, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size,
                   None if cfg.arch == "bert" else cfg.local_window // 2, cfg.global_every)

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of one layer's linears."""
        H, I = self.hidden, self.intermediate
        if self.arch == "bert":
            return [("query", H, H), ("key", H, H), ("value", H, H), ("dense", H, H),
                    ("dense", H, I), ("dense", I, H)]
        return [("Wqkv", H, 3 * H), ("Wo", H, H), ("Wi", H, 2 * I), ("Wo", I, H)]

    def is_global(self, i: int) -> bool:
        return self.arch == "bert" or i % self.global_every == 0


def attn_pairs(L: int, window: int | None) -> int:
    """Number of (query, key) pairs a sequence of length L attends over (band |i-j| <= window)."""
    if window is None or window >= L - 1:
        return L * L
    w = window
    return L + 2 * sum(L - d for d in range(1, w + 1))  # the diagonal plus w off-diagonals each side


def layer_linear_weights(shape: Shape, rank: int = 0, targets=()) -> int:
    """Weight elements a token multiplies through in one layer (+ rank·(in+out) per adapted linear)."""
    return sum(i * o + (rank * (i + o) if n in targets else 0) for n, i, o in shape.linears())


def head_flops(shape: Shape, n_answers: int = 2) -> int:
    return 2 * shape.hidden * shape.hidden + 2 * shape.hidden * n_answers


def forward_flops(shape: Shape, seqlens, rank: int = 0, targets=(), layers=None) -> int:
    """Model FLOPs of a forward over the sequences, for `layers` (default: all) plus the head at the mask."""
    layers = range(shape.layers) if layers is None else layers
    T = sum(seqlens)
    lin = 2 * layer_linear_weights(shape, rank, targets) * T * len(layers)
    att = sum(4 * shape.hidden * attn_pairs(L, None if shape.is_global(i) else shape.window)
              for i in layers for L in seqlens)
    return lin + att


def scoring_flops(shape: Shape, seqlens) -> int:
    return forward_flops(shape, seqlens) + head_flops(shape) * len(seqlens)


def train_flops(shape: Shape, seqlens, frozen: int, rank: int, targets) -> dict[str, int]:
    """Model FLOPs of one training step (forward + backward) under two counts:

    convention: forward (all layers) + 2 × forward of the layers that need a backward (the unfrozen
                ones) -- the usual "6N" rule;
    needed:     forward + what a backward must do when the base weights are frozen: the input gradient
                of every base matmul (1 × its forward), adapters' input and weight gradients
                (2 × their forward) and attention's backward (2 × its forward), unfrozen layers only.
    The head (at the mask only) is counted as an unfrozen layer; the optimiser step is not counted."""
    fwd = forward_flops(shape, seqlens, rank, targets) + head_flops(shape) * len(seqlens)
    up = range(frozen, shape.layers)
    T = sum(seqlens)
    base = 2 * layer_linear_weights(shape) * T * len(up)
    adapt = 2 * (layer_linear_weights(shape, rank, targets) - layer_linear_weights(shape)) * T * len(up)
    att = forward_flops(shape, seqlens, layers=up) - base
    h = head_flops(shape) * len(seqlens)
    return {"convention": fwd + 2 * (base + adapt + att + h),
            "needed": fwd + base + 2 * adapt + 2 * att + 2 * h}
