"""Bradley–Terry preference loss: -log sigmoid(r_chosen - r_rejected - margin), computed stably.

With label smoothing ε (the conservative form, for labels that are wrong with probability ε), the target is
1 - ε, not 1: loss = (1 - ε)·softplus(-x) + ε·softplus(x), x = diff - margin. Its minimum sits at the finite
x = log((1 - ε)/ε), so a pair the model already ranks confidently stops pulling on the weights.

-log sigmoid(x) = softplus(-x) never overflows, where log(sigmoid(x)) underflows to -inf for x << 0.
For the pairwise cloze this is exactly the Bradley–Terry likelihood of the two-token logit difference
(logit['0'] - logit['1'] is the log-odds that Choice 0 is preferred).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(diff: torch.Tensor, margin: torch.Tensor | float = 0.0, reduction: str = "mean",
                       smoothing: float = 0.0):
    """diff = r_chosen - r_rejected, [N] -> loss (mean over N, or per pair with reduction='none')."""
    x = diff - margin
    loss = F.softplus(-x)
    if smoothing > 0:
        loss = (1 - smoothing) * loss + smoothing * F.softplus(x)
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


@torch.no_grad()
def preference_stats(diff: torch.Tensor) -> dict[str, float]:
    """Accuracy (strictly positive difference; a tie is wrong) and mean margin, for logging."""
    d = diff.detach().float()
    return {"acc": (d > 0).float().mean().item(), "margin": d.mean().item()}
