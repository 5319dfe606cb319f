"""BERT for masked LM (the offline default MiniLM-L6), run on packed (unpadded) tokens.

Module names mirror transformers' `BertForMaskedLM` (`bert.*`, `cls.predictions.*`). Absolute position
and token-type embeddings, post-norm layers, exact-GELU MLP. The MLM decoder is tied to the word
embeddings; its bias (`cls.predictions.bias` in checkpoints) lives on the decoder here.

Hidden dropout (`set_hidden_dropout`) sits where BERT's `hidden_dropout_prob` does: after the embeddings'
norm and on the attention-output and MLP-output branches before their residual add, in training only. It
is off unless a recipe asks for it; attention-probability dropout is not implemented (the packed attention
kernels have no dropout).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyrm.kernels import by_rows, linear_gelu, row_attention, varlen_attention

from .config import EncoderConfig
from .encoder import Encoder, Packed


def _dropout(x, p: float, training: bool):
    """Hidden dropout; scoring and p = 0 return x untouched (no call on the inference hot path)."""
    return F.dropout(x, p, True) if training and p else x


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.drop = 0.0

    def forward(self, p: Packed):  # -> [T, H]
        x = self.word_embeddings(p.input_ids) + self.position_embeddings(p.positions)
        tt = p.token_type_ids if p.token_type_ids is not None else torch.zeros_like(p.input_ids)
        return _dropout(self.LayerNorm(x + self.token_type_embeddings(tt)), self.drop, self.training)


class _Node(nn.Module):
    """A named container, so that parameter names match the checkpoint's."""


def _dense_ln(cfg: EncoderConfig, d_in: int) -> _Node:
    n = _Node()
    n.dense = nn.Linear(d_in, cfg.hidden_size)
    n.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
    return n


class Layer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        H, I = cfg.hidden_size, cfg.intermediate_size
        self.attention = _Node()
        self.attention.self = _Node()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(H, H))
        self.attention.output = _dense_ln(cfg, H)
        self.intermediate = _Node()
        self.intermediate.dense = nn.Linear(H, I)
        self.output = _dense_ln(cfg, I)
        self.drop = 0.0  # hidden dropout on both residual branches (training only)

    def forward(self, x, p: Packed, rows: torch.Tensor | None = None):  # x [T, H] -> [T, H] (or [B, H] at rows)
        T = x.shape[0]
        sa = self.attention.self
        k, v = (m(x).view(T, self.heads, self.head_dim) for m in (sa.key, sa.value))
        if rows is None:
            q = sa.query(x).view(T, self.heads, self.head_dim)
            o = varlen_attention(q, k, v, p.seqlens, None, p.cu_seqlens)
        else:  # only the rows someone reads: keys and values still come from every token
            x = x[rows]
            q = sa.query(x).view(-1, self.heads, self.head_dim)
            o = row_attention(q, k, v, p.seqlens, p.positions[rows])
        o = o.flatten(1)                                                                 # [., H]
        if torch.is_grad_enabled():  # training, frozen layers included: whole (chunks measured 0.94-0.96x there)
            return self.tail(x, o)
        return by_rows(self.tail, x, o)  # inference: in chunks, so the [., I] activation stays in cache

    def tail(self, x, o):  # residual x, attention output o [N, H] -> layer output [N, H]; per token
        ao = self.attention.output
        x = ao.LayerNorm(x + _dropout(ao.dense(o), self.drop, self.training))
        up = self.intermediate.dense
        # plain or merged weights: one fused GEMM + GELU when scoring; an unmerged adapter: its own forward
        w = up.weight if type(up) is nn.Linear else getattr(up, "inference_weight", lambda: None)()
        h = linear_gelu(x, w, up.bias) if w is not None else F.gelu(up(x))             # [N, I]
        return self.output.LayerNorm(x + _dropout(self.output.dense(h), self.drop, self.training))


class Bert(Encoder):
    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        self.bert = _Node()
        self.bert.embeddings = Embeddings(cfg)
        self.bert.encoder = _Node()
        self.bert.encoder.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.cls = _Node()
        self.cls.predictions = _Node()
        self.cls.predictions.transform = _dense_ln(cfg, cfg.hidden_size)
        self.cls.predictions.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.tie_weights()

    def tie_weights(self):
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    @property
    def layers(self):
        return self.bert.encoder.layer

    def set_hidden_dropout(self, p: float) -> None:
        for m in (self.bert.embeddings, *self.bert.encoder.layer):
            m.drop = float(p)

    @property
    def embeddings(self):
        return self.bert.embeddings

    def head_modules(self):
        return [self.cls.predictions.transform, self.cls.predictions.decoder]

    def widest_features(self) -> int:
        # q, k and v are separate [T, H] projections, and the [T, I] MLP runs in chunks at inference
        return self.config.hidden_size

    def embed_packed(self, p: Packed):
        return self.bert.embeddings(p)

    def layers_packed(self, x, p: Packed, rows=None):
        last = len(self.bert.encoder.layer) - 1
        for i, layer in enumerate(self.bert.encoder.layer):
            x = layer(x, p, rows if i == last else None)
        return x

    def head_hidden(self, h):
        t = self.cls.predictions.transform
        return t.LayerNorm(F.gelu(t.dense(h)))
