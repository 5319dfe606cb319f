"""Length decorrelation of a pointwise reward: r'(x) = r(x) − β_d · log(1 + chars(x)).

Preference data mostly prefers the longer answer, and a small model learns that shortcut: the default
MiniLM's reward correlates 0.44–0.60 with log length on its own training responses, and on validation it
is right on 74 % of the pairs whose chosen answer is the longer one but on 46 % of those where it is the
shorter. Best-of-n with such a reward picks the longest candidate, whatever it says.

At every validation of a run (train.py), β_d is fitted on a seeded sample of *training* pairs (never
validation, never RewardBench): per domain, the least-squares slope of the reward on log length over all
their responses, so the corrected reward has zero linear correlation with length on that sample; "*" is
the slope pooled over every domain, used when the caller gives no domain. Both the raw and the corrected
reward are validated; each domain keeps the correction where it validates at least as well (the
recipe's `length_choice`; validation.choose_shares), and the checkpoint is chosen by the score of the
reward so formed. The kept slopes (zero for a domain left raw) are stored beside a checkpoint when any
domain keeps the correction. Length is counted in characters (what the user sees, and the same for any
tokenizer). A pairwise model compares two answers in one input; this
correction is for the pointwise reward only.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

FILE = "length.json"   # beside adapter.json in a checkpoint folder


def log_length(text: str) -> float:
    return math.log1p(len(text))


def fit_slopes(rewards, lengths, domains) -> dict[str, float]:
    """OLS slope of reward on log length per domain, plus "*" over all rows. rewards, lengths: [N] floats
    (lengths already log_length), domains: [N] names (None -> "none"). A domain whose lengths do not
    vary gets slope 0."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    x = torch.as_tensor(lengths, dtype=torch.float64)
    doms = [d or "none" for d in domains]

    def slope(idx) -> float:
        rs, xs = r[idx], x[idx]
        var = ((xs - xs.mean()) ** 2).mean()
        return 0.0 if var <= 1e-12 else (((rs - rs.mean()) * (xs - xs.mean())).mean() / var).item()

    out = {d: slope(torch.tensor([e == d for e in doms])) for d in sorted(set(doms))}
    out["*"] = slope(torch.ones(len(doms), dtype=torch.bool))
    return out


def length_term(slopes: dict[str, float], texts, domains=None) -> torch.Tensor:
    """[N] float64: slope · log(1 + chars) per text, what the corrected reward subtracts. With `domains`,
    each text's domain slope (a missing domain is keyed "none", as fit_slopes keys it; a domain the fit
    never saw gets the pooled "*"); without, the pooled slope for all."""
    keys = [(d or "none") for d in domains] if domains is not None else ["*"] * len(texts)
    return torch.tensor([slopes.get(k, slopes["*"]) * log_length(t) for t, k in zip(texts, keys, strict=True)],
                        dtype=torch.float64)


def fit_sample(pairs, n: int, seed: int) -> list:
    """The seeded sample of n training pairs whose responses the slopes are fitted on."""
    return random.Random(f"length-fit-{seed}").sample(list(pairs), min(n, len(pairs)))


def slopes_text(slopes: dict[str, float], meta: dict | None = None) -> str:
    """The contents of length.json."""
    return json.dumps({"slopes": slopes, "length": "log1p(characters)", **(meta or {})}, indent=2)


def load_slopes(folder: Path) -> dict[str, float] | None:
    f = Path(folder) / FILE
    if not f.is_file():
        return None
    try:
        slopes = json.loads(f.read_text())["slopes"]
        return {str(k): float(v) for k, v in slopes.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{f}: not a length-correction file ({e})") from None


class LengthExpert(torch.nn.Module):
    """Length as a second expert during training (product of experts): the Bradley–Terry logit of a pair
    becomes r(chosen) − r(rejected) + β_d · (log(1+|chosen|) − log(1+|rejected|)), with one learned β per
    domain. The length term soaks up whatever part of the labels length alone explains, so the model's
    own reward r gets the gradient of the rest; the scorer uses r alone (β is not part of the model).
    Shen et al. 2023 (arXiv 2310.05199) debias a reward model this way with a small model as the
    bias expert; here the bias is named, so a per-domain scalar does."""

    def __init__(self, pairs):
        super().__init__()
        self.domains = sorted({p.domain or "none" for p in pairs})
        self.beta = torch.nn.Parameter(torch.zeros(len(self.domains)))                          # [D]
        self.gap = torch.tensor([log_length(p.chosen) - log_length(p.rejected) for p in pairs])   # [P]
        self.dom = torch.tensor([self.domains.index(p.domain or "none") for p in pairs])          # [P]

    def forward(self, pair_ids: list[int]) -> torch.Tensor:
        """[len(pair_ids)]: the length expert's share of each pair's logit."""
        i = torch.tensor(pair_ids)
        return self.beta[self.dom[i]] * self.gap[i]

    def values(self) -> dict[str, float]:
        return {d: b for d, b in zip(self.domains, self.beta.tolist())}
