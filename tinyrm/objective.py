"""What one training step minimises: the Bradley–Terry loss on the cloze answers of a micro-batch.

Pointwise: each pair gives two sequences, (chosen, "yes") and (rejected, "no"); the pair's logit is
r(chosen) - r(rejected), where r is the log-odds of "yes" over "no" at the [MASK] slot (plus, with a length
expert, its per-domain length term). Pairwise: each pair gives both orders, and each order's logit is the
log-odds of the chosen response's position.

`pairwise_weight > 0` (pointwise models) trains the pairwise cloze beside the pointwise one: every pair
also gives its two pairwise sequences, and their mean Bradley–Terry loss, times the weight, joins the
pointwise loss. Both read the same MLM head through the same encoder, so the pairwise task only shapes
the shared weights; scoring stays pointwise (one scalar reward per response). Its rows carry the labels
AUX + position so one packed forward serves both: the answer vocabulary is then the pointwise words'
two ids followed by the pairwise words' two.
"""
from __future__ import annotations

import torch

from tinyrm.kernels.bt_loss import bradley_terry_loss

from .mlm import answer_and_mlm
from .scorer import mask_logits

AUX = 2       # label offset of the side pairwise rows: AUX = chosen is Choice 0, AUX + 1 = Choice 1


def with_pairwise(examples: list, side: list) -> list:
    """A pair's pointwise examples followed by its pairwise ones relabelled into the side range."""
    return examples + [(e, AUX + y) for e, y in side]


def step_loss(enc, cfg, examples, pair_ids, vocab, n_diffs: int, autocast, expert=None, mlm=None):
    """Forward + backward for one micro-batch -> (diffs, tokens, mean MLM loss or None). `n_diffs`: the
    whole step's count of main diffs (its pairs; pairwise: twice that), so micro-batches add up to the
    step's mean. `expert`: a LengthExpert (pointwise); `mlm`: (Specials, generator) for the auxiliary
    masked-LM loss (mlm.py)."""
    exs = [ex for i in pair_ids for ex in examples[i]]
    seqs = [e for e, _ in exs]
    with autocast:                                                            # lg [N, 2] ([N, 4] with side rows)
        lg, mlm_loss = (mask_logits(enc, seqs, vocab), None) if mlm is None else \
            answer_and_mlm(enc, seqs, vocab, mlm[0], cfg.mlm_frac, mlm[1])[:2]
    z = lg[:, 0].float() - lg[:, 1].float()        # log-odds of answer word 0 ('0' / 'yes')
    labels = torch.tensor([y for _, y in exs], device=z.device)
    side = labels >= AUX
    side_diff = None
    if bool(side.any()):                           # the pairwise rows: log-odds of '0' over '1'
        zs = lg[side, 2].float() - lg[side, 3].float()
        side_diff = torch.where(labels[side] == AUX, zs, -zs)                 # [2 * pairs]
        z, labels = z[~side], labels[~side]
    if cfg.mode == "pairwise":
        diff = torch.where(labels == 0, z, -z)     # chosen's log-odds, one per order
    else:
        diff = z[0::2] - z[1::2]                   # r(chosen) - r(rejected)
        if expert is not None:
            diff = diff + expert(pair_ids)          # + β_d · (log-length gap)
    loss = bradley_terry_loss(diff, cfg.margin, "sum", cfg.label_smoothing) / n_diffs
    if side_diff is not None:    # the mean over both orders of every pair in the step, weighted
        loss = loss + cfg.pairwise_weight * bradley_terry_loss(side_diff, cfg.margin, "sum",
                                                                 cfg.label_smoothing) / (2 * n_diffs)
    if mlm_loss is not None:    # this micro-batch's share of the step's mean: weighted by its diffs
        loss = loss + cfg.mlm_weight * mlm_loss * (len(diff) / n_diffs)
    loss.backward()
    return diff.detach(), sum(len(e.input_ids) for e, _ in exs), None if mlm_loss is None else mlm_loss.item()
