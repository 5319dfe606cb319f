"""An auxiliary masked-LM loss on the training text, read in the reward's own forward pass.

`mlm_weight > 0` hides a fraction `mlm_frac` of every training sequence's text tokens behind [MASK] and
adds `mlm_weight` times the mean cross-entropy of predicting them (over the whole vocabulary, through the
same MLM head that reads the answer) to the Bradley–Terry loss. The idea is to keep the encoder a language
model while it learns to judge, instead of letting every layer bend to the yes/no readout (hidden-state
regularisation of this kind helped decoder reward models generalise).

Why in the same pass: a second, clean forward over the same tokens would double a step's cost. Here the
extra cost is the last layer run on every token instead of at the answer slot only, and one [M, V]
vocabulary projection for the M hidden tokens. The reward then reads the answer from a sequence with a few
words hidden, a kind of token dropout; scoring never masks. The masks are drawn independently for every
sequence (the chosen and the rejected alike), so they carry no label, and from a generator seeded by
(seed, step, micro-batch), so a resumed run hides the same tokens.

Never masked: special tokens ([CLS], [SEP], [PAD], an existing [MASK]) and the answer slot itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .encoder import packed_from_lists
from .tokens import Specials


def mask_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The generator that draws one micro-batch's masks: a function of (seed, step, micro-batch) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + micro)


def masking(enc, seed: int, step: int, micro: int) -> tuple[Specials, torch.Generator]:
    """What answer_and_mlm needs besides the batch: the tokenizer's special ids and the micro-batch's generator."""
    return Specials.from_tokenizer(enc.tokenizer), mask_generator(seed, step, micro)


def hide_tokens(examples, sp: Specials, frac: float, gen: torch.Generator):
    """examples (.input_ids, .mask_pos) -> (masked id lists, hidden positions per sequence, their true ids).

    Each text token is hidden with probability `frac`, independently (Bernoulli draws from `gen`, one per
    token of every sequence in order, so the draw does not depend on which tokens are special)."""
    special = {sp.cls_id, sp.sep_id, sp.pad_id, sp.mask_id}
    seqs, hidden, targets = [], [], []
    for e in examples:
        ids = list(e.input_ids)
        draw = torch.rand(len(ids), generator=gen) < frac
        pos = [i for i, t in enumerate(ids) if draw[i] and t not in special and i != e.mask_pos]
        targets += [ids[i] for i in pos]
        for i in pos:
            ids[i] = sp.mask_id
        seqs.append(ids)
        hidden.append(pos)
    return seqs, hidden, targets


def answer_and_mlm(enc, examples, vocab_ids: torch.Tensor, sp: Specials, frac: float, gen: torch.Generator):
    """One packed forward over the examples with text tokens hidden -> ([N, 2] answer logits at each
    sequence's answer slot, mean MLM cross-entropy over the hidden tokens (a 0-d tensor; 0 when none),
    the number of hidden tokens)."""
    dev = vocab_ids.device
    seqs, hidden, targets = hide_tokens(examples, sp, frac, gen)
    p = packed_from_lists(seqs, [e.token_type_ids for e in examples], device=dev)
    starts = p.cu_seqlens[:-1]
    answer = starts + torch.tensor([e.mask_pos for e in examples], device=dev)           # [N]
    first = [0]                                                # each sequence's first packed row, in Python
    for s in seqs[:-1]:                                        # (no per-token .item() on the training step)
        first.append(first[-1] + len(s))
    rows = torch.tensor([first[b] + i for b, pos in enumerate(hidden) for i in pos], dtype=torch.long,
                        device=dev)                                                     # [M]
    h = enc.encode_packed(p)                                   # [T, H]: every token, the hidden ones are read
    logits = enc.logits_at(h[answer], vocab_ids)               # [N, 2]
    if len(targets) == 0:
        return logits, logits.new_zeros(()), 0
    vocab_logits = enc.logits_at(h[rows])                      # [M, V]; the loss in float32 at least
    vocab_logits = vocab_logits.to(torch.promote_types(vocab_logits.dtype, torch.float32))
    mlm = F.cross_entropy(vocab_logits, torch.tensor(targets, device=dev))
    return logits, mlm, len(targets)
