"""Fitting the relevance floor (relevance.py) to a finished run's kept checkpoint: what training does after
its last step, and what `bench/relevance.py --attach` does for a run trained before."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from .atomic import atomic_write
from .augment import KINDS, make
from .relevance import FILE, SentenceEmbedder, shortfall
from .scorer import RewardModel
from .validation import metrics, probe_metrics

MADE = "relevance:"       # the source prefix of a generated relevance pair (augment._pair)
AUGMENTED = tuple(f"{k}:" for k in KINDS)    # a training set's generated pairs: not preference data


def fit_beta(z: torch.Tensor, s: torch.Tensor, iters: int = 100) -> float:
    """argmin over β ≥ 0 of Σ softplus(−(z + β·s)): Newton's method on a convex function of one variable
    (float64). With no row against the term the optimum is unbounded; iteration stops at `iters`."""
    z, s, b = z.double(), s.double(), 0.0
    for _ in range(iters):
        m = z + b * s
        g = -(torch.sigmoid(-m) * s).sum().item()
        h = (torch.sigmoid(m) * torch.sigmoid(-m) * s * s).sum().item()
        if h <= 0:
            break
        b_new = max(0.0, b - g / h)
        if abs(b_new - b) < 1e-9:
            return b_new
        b = b_new
    return b


DOMAIN_ORDER = ("chat", "safety", "reasoning")   # the order the rows are drawn in (then any other, sorted)


def fit_rows(train, per_domain: int, made: int, seed: int) -> list:
    """Per domain: `per_domain` training pairs (real ones: a recipe's generated pairs are passed over) and
    relevance pairs made from the first `made` of them."""
    rng, out, doms = random.Random(f"relevance-fit-{seed}"), [], {p.domain for p in train}
    for d in [d for d in DOMAIN_ORDER if d in doms] + sorted(doms - set(DOMAIN_ORDER)):
        pool = [p for p in train if p.domain == d and not p.source.startswith(AUGMENTED)]
        pick = rng.sample(pool, min(per_domain, len(pool)))
        out += pick + [m for p in pick[:made] if (m := make("relevance", p, pool, rng, "rejected")) is not None]
    return out


def fit(rm, emb: SentenceEmbedder, rows, quantile: float) -> dict:
    """{"floors": {domain: τ}, "weights": {domain: β}} for the pointwise model `rm` (its kept reward form, no
    floor yet), "*" over all rows."""
    doms = [p.domain for p in rows]
    # each (prompt, response, domain) once: a made row repeats its source pair's prompt and chosen answer
    keys = sorted({(p.prompt, r, p.domain) for p in rows for r in (p.chosen, p.rejected)})
    at = {k: i for i, k in enumerate(keys)}
    r = torch.tensor(rm.score(*map(list, zip(*keys))))
    texts = sorted({t for p in rows for t in (p.prompt, p.chosen, p.rejected)})
    e, ei = emb(texts), {t: i for i, t in enumerate(texts)}

    def side(ans):  # -> reward [N], cos(prompt, answer) [N]
        return (r[[at[(p.prompt, getattr(p, ans), p.domain)] for p in rows]],
                (e[[ei[p.prompt] for p in rows]] * e[[ei[getattr(p, ans)] for p in rows]]).sum(1))
    (rc, cc), (rr, cr) = side("chosen"), side("rejected")
    z = rc - rr                                                   # the pointwise pair logit (scorer.pair_logit)
    prefs = torch.tensor([not p.source.startswith(MADE) for p in rows])
    floors, weights = {}, {}
    for d in sorted(set(doms)) + ["*"]:
        m = torch.tensor([d in ("*", x) for x in doms])
        floors[d] = torch.quantile(cc[m & prefs], quantile).item()
        weights[d] = fit_beta(z[m], shortfall(cc[m], floors[d]) - shortfall(cr[m], floors[d]))
    return {"floors": floors, "weights": weights}


def text(fitted: dict, meta: dict) -> str:
    return json.dumps({**fitted, **meta}, indent=2) + "\n"




def attach_to_run(cfg, best: Path, step: int, train_pairs, val, probes, device, record, rewards=None) -> dict:
    """After training (train.py; bench/relevance.py --attach for an earlier run): fit the floor on the kept
    checkpoint `best`, store it beside it, and validate the kept reward with it once, `record`ing a row of
    relevance_* figures. The checkpoint was chosen without the floor; this only adds the term. `rewards`
    [2, N]: the checkpoint's raw rewards of val + probes, chosen then rejected, from the validation that
    kept it (validate_run); the floor's validation then adds the terms to them (compare_logits' `raw`)
    instead of scoring every answer again. Returns the figures with the fitted values (the summary's
    "relevance")."""
    rm = RewardModel.load(best, device=device)
    # fitted on the reward alone, also when one is stored (a resumed run): its embedder serves again
    emb = rm.embedder or SentenceEmbedder(cfg.model, cfg.max_len, device=rm.device)
    rm.relevance = rm.embedder = None
    rows = fit_rows(train_pairs, cfg.relevance_fit_pairs, cfg.relevance_fit_made, cfg.seed)
    fitted = {**fit(rm, emb, rows, cfg.relevance_floor), "quantile": cfg.relevance_floor, "max_len": cfg.max_len}
    atomic_write(Path(best) / FILE, text(fitted, {"fitted_on": f"{len(rows)} training rows", "step": step}))
    rm.relevance, rm.embedder = fitted, emb
    rs = list(val) + list(probes)
    # the same rewards as scoring afresh up to float32 rounding: that pass batched them beside the
    # length-fit pairs (docs/decisions.md 1.53)
    raw = rewards if rewards is not None and tuple(rewards.shape) == (2, len(rs)) else None
    z = rm.compare_logits([p.prompt for p in rs], [p.chosen for p in rs], [p.rejected for p in rs],
                          [p.domain for p in rs], raw)
    m = {**metrics(z[:len(val)], list(val), cfg.select), **probe_metrics(z[len(val):], list(probes))}
    record({"step": step, **{f"relevance_{k}": v for k, v in m.items()}})
    keep = ("val_score", "val_len_balanced", "val_acc_chosen_longer", "val_acc_chosen_shorter")
    return {**{k: m[k] for k in m if k in keep or k.startswith(("val_acc_", "val_probe_")) and not k.endswith("_se")},
            "floors": fitted["floors"], "weights": fitted["weights"]}


def after_training(run) -> None:
    """train.py's call, on rank 0 of a finished run: the figures go into the summary."""
    run.best["relevance"] = attach_to_run(run.cfg, run.run_dir / "best", run.best["step"], run.train_pairs,
                                          run.val, run.probes, next(run.enc.parameters()).device, run.record,
                                          run.best.get("rewards"))
