"""The shared encoder contract: padded batches in, unpadded execution inside.

`Encoder` holds what ModernBERT and BERT have in common: unpadding a padded batch into packed tokens
with `cu_seqlens`, running the architecture's layers on `(total_tokens, hidden)`, re-padding at the
end, and running the MLM head only where asked (the `[MASK]` slots) — optionally only for a few vocab
rows (the answer tokens), which is all a cloze reward model ever reads.

Subclasses implement `embed_packed`, `layers_packed`, `head_hidden` and name their modules.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import EncoderConfig
from .errors import RecipeError


@dataclass
class Packed:
    """A batch with the padding taken out. T = total real tokens, B = sequences."""
    input_ids: torch.Tensor        # [T]
    token_type_ids: torch.Tensor | None  # [T]
    positions: torch.Tensor        # [T] position of each token inside its own sequence
    cu_seqlens: torch.Tensor       # [B+1] int64, offsets of each sequence in the packed batch
    seqlens: list[int]             # B Python ints (slicing without a device sync)


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None):
    """[B, L] padded -> (Packed, flat_index [T]) where flat_index maps packed tokens to b*L + l."""
    mask = attention_mask.bool()
    flat_index = mask.flatten().nonzero().squeeze(1)                       # [T]
    lens = mask.sum(1)                                                     # [B]
    cu = torch.zeros(lens.numel() + 1, dtype=torch.long, device=input_ids.device)
    cu[1:] = lens.cumsum(0)
    # position of each kept token = how many kept tokens precede it in its row
    pos = (mask.long().cumsum(1) - 1).flatten()[flat_index]
    tt = None if token_type_ids is None else token_type_ids.flatten()[flat_index]
    return Packed(input_ids.flatten()[flat_index], tt, pos, cu, lens.tolist()), flat_index


def packed_from_lists(seqs: list[list[int]], types: list[list[int]] | None = None, device=None) -> Packed:
    """Build a packed batch straight from token lists (the trainer and scorer never pad at all)."""
    lens = [len(s) for s in seqs]
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)
    tt = None if types is None else torch.tensor([t for s in types for t in s], dtype=torch.long, device=device)
    cu = torch.zeros(len(lens) + 1, dtype=torch.long)
    cu[1:] = torch.tensor(lens).cumsum(0)
    pos = torch.cat([torch.arange(n) for n in lens]) if lens else torch.zeros(0, dtype=torch.long)
    return Packed(ids, tt, pos.to(device), cu.to(device), lens)


class Encoder(nn.Module):
    """Base class; see module docstring. `self.config` is an EncoderConfig, `self.tokenizer` a Tokenizer."""

    config: EncoderConfig

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.tokenizer = None  # set by load_encoder
        self.built_head = False  # True when the checkpoint had no MLM head and we built one

    # ---- architecture hooks ----
    def embed_packed(self, p: Packed) -> torch.Tensor:  # -> [T, H]
        raise NotImplementedError

    def layers_packed(self, x: torch.Tensor, p: Packed, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[T, H] -> [T, H]; with `rows` (one packed index per sequence) the last layer runs only there -> [B, H]."""
        raise NotImplementedError

    def head_hidden(self, h: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, H] (dense, act, norm)
        raise NotImplementedError

    # modules that freeze_layers / add_dora work with
    @property
    def layers(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def embeddings(self) -> nn.Module:
        raise NotImplementedError

    @property
    def final_norm(self) -> nn.Module | None:
        return None

    def head_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def set_hidden_dropout(self, p: float) -> None:
        """Dropout on the residual branches while training (BERT's hidden_dropout_prob); 0 turns it off.
        Only architectures that define where it goes have it (the recipe's `hidden_dropout`)."""
        if p:
            raise RecipeError(f"hidden_dropout = {p}: hidden dropout is not implemented for {type(self).__name__}")

    def widest_features(self) -> int:
        """Features per token of the widest activation a layer allocates whole at inference (the scorer
        sizes CPU batches by it). Default: the fused QKV or MLP input projection, whichever is wider."""
        c = self.config
        return max(3 * c.hidden_size, 2 * c.intermediate_size)

    # ---- packed API (what the trainer and scorer call) ----
    def encode_packed(self, p: Packed, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Packed batch -> final hidden states [T, H]; or [B, H] at `rows`, one per sequence in order
        (its mask slot): the last layer's queries, MLP and norms then run on those rows alone."""
        return self.layers_packed(self.embed_packed(p), p, rows)

    def logits_at(self, hidden: torch.Tensor, vocab_ids: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [N, H] at the positions wanted -> MLM logits [N, V], or [N, len(vocab_ids)].

        With `vocab_ids` only those decoder rows are computed: the cloze answer needs two of them, so
        the 50k-row vocabulary projection shrinks to a [H, 2] matmul.
        """
        h = self.head_hidden(hidden)
        dec = self.decoder_module()
        if vocab_ids is None:
            return dec(h)
        if isinstance(dec, nn.Linear):
            return nn.functional.linear(h, dec.weight[vocab_ids], None if dec.bias is None else dec.bias[vocab_ids])
        return dec.forward_rows(h, vocab_ids)  # an adapted decoder: DoRA's norm is per row, so this is exact

    def decoder_module(self) -> nn.Module:
        return self.head_modules()[-1]

    # ---- padded API (the public contract) ----
    def encode(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """input_ids, attention_mask [B, L] -> final hidden states [B, L, H] (zeros at padding)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        p, flat = pack(input_ids, attention_mask, token_type_ids)
        h = self.encode_packed(p)                                           # [T, H]
        B, L = input_ids.shape
        out = h.new_zeros(B * L, h.shape[-1])
        out[flat] = h
        return out.view(B, L, -1)

    def forward(self, input_ids, attention_mask=None, positions=None, token_type_ids=None, vocab_ids=None):
        """MLM logits: [B, L, V] everywhere (zeros at padding), or only at `positions`.

        positions: LongTensor [B] (one slot per row -> [B, V]) or [B, K] (-> [B, K, V]), indices into
        the padded rows. `vocab_ids` restricts the vocabulary (see `logits_at`).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        p, flat = pack(input_ids, attention_mask, token_type_ids)
        h = self.encode_packed(p)                                           # [T, H]
        B, L = input_ids.shape
        if positions is None:
            logits = self.logits_at(h, vocab_ids)                           # [T, V]
            out = logits.new_zeros(B * L, logits.shape[-1])
            out[flat] = logits
            return out.view(B, L, -1)
        # map padded (b, l) to packed rows: packed index = number of real tokens before it
        packed_index = attention_mask.flatten().long().cumsum(0) - 1        # [B*L]
        squeeze = positions.dim() == 1
        pos = positions.view(B, -1)
        if not attention_mask.gather(1, pos).bool().all():
            raise ValueError("positions point at padding")
        rows = packed_index[(torch.arange(B, device=pos.device)[:, None] * L + pos).flatten()]
        logits = self.logits_at(h[rows], vocab_ids).view(B, pos.shape[1], -1)
        return logits[:, 0] if squeeze else logits
