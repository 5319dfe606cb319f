"""ModernBERT for masked LM, run on packed (unpadded) tokens.

Module names mirror transformers' `ModernBertForMaskedLM`, so checkpoint keys load as they are and
adapters export with PEFT's names. Pre-norm layers; layer 0 has no attention norm (the embedding output
is already normalised); every `global_every`-th layer attends globally with RoPE base `global_theta`,
the others within a sliding window with base `local_theta`; GeGLU MLP; MLM head dense -> gelu -> norm
-> decoder tied to the token embeddings.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyrm.kernels import apply_rope, geglu, row_attention, rope_cos_sin, varlen_attention

from .config import EncoderConfig
from .encoder import Encoder, Packed


def _norm(cfg: EncoderConfig) -> nn.LayerNorm:
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.norm = _norm(cfg)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, H]
        return self.norm(self.tok_embeddings(ids))


class Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig, is_global: bool):
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.window = None if is_global else cfg.local_window // 2
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.attention_bias)
        self.Wo = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.attention_bias)

    def forward(self, x, cos, sin, p: Packed, rows=None):  # x [T, H] -> [T, H] (or [B, H] at rows)
        T = x.shape[0]
        q, k, v = self.Wqkv(x).view(T, 3, self.heads, self.head_dim).unbind(1)  # each [T, nh, hd]
        k = apply_rope(k, cos, sin)
        if rows is None:
            o = varlen_attention(apply_rope(q, cos, sin), k, v, p.seqlens, self.window, p.cu_seqlens)
        else:  # one query per sequence (its mask slot) against all of that sequence's keys
            q = apply_rope(q[rows], cos[rows], sin[rows])
            o = row_attention(q, k, v, p.seqlens, p.positions[rows], self.window)
        return self.Wo(o.flatten(1))


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.Wi = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.Wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):  # [T, H] -> [T, H]
        return self.Wo(geglu(self.Wi(x)))


class Layer(nn.Module):
    def __init__(self, cfg: EncoderConfig, i: int):
        super().__init__()
        self.is_global = cfg.is_global(i)
        self.attn_norm = nn.Identity() if i == 0 else _norm(cfg)
        self.attn = Attention(cfg, self.is_global)
        self.mlp_norm = _norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, p: Packed, rows=None):
        cos, sin = rope["global" if self.is_global else "local"]
        a = self.attn(self.attn_norm(x), cos, sin, p, rows)
        x = (x if rows is None else x[rows]) + a
        return x + self.mlp(self.mlp_norm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_layers))
        self.final_norm = _norm(cfg)


class Head(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.head_bias)
        self.norm = _norm(cfg)

    def forward(self, h):  # [N, H] -> [N, H]
        return self.norm(F.gelu(self.dense(h)))


class ModernBert(Encoder):
    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        self.model = Backbone(cfg)
        self.head = Head(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=cfg.decoder_bias)
        self.tie_weights()

    def tie_weights(self):
        self.decoder.weight = self.model.embeddings.tok_embeddings.weight

    @property
    def layers(self):
        return self.model.layers

    @property
    def embeddings(self):
        return self.model.embeddings

    @property
    def final_norm(self):
        return self.model.final_norm

    def head_modules(self):
        return [self.head, self.decoder]

    def embed_packed(self, p: Packed):
        return self.model.embeddings(p.input_ids)

    def layers_packed(self, x, p: Packed, rows=None):
        cfg = self.config
        # cos/sin once per forward per rotary base, shared by every layer of that kind
        rope = {"global": rope_cos_sin(p.positions, cfg.head_dim, cfg.global_theta, x.dtype),
                "local": rope_cos_sin(p.positions, cfg.head_dim, cfg.local_theta, x.dtype)}
        last = len(self.model.layers) - 1
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, p, rows if i == last else None)
        return self.model.final_norm(x)

    def head_hidden(self, h):
        return self.head(h)
