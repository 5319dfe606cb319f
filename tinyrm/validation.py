"""Validation metrics: what picks the best checkpoint, and what shows how a model wins or fails.

`validate(enc, cfg, val)` scores the held-out pairs the way the scorer will (pairwise: both orders
averaged; pointwise: r(chosen) - r(rejected)) and returns pooled accuracy and loss, accuracy per domain
and per source, accuracy split by whether the chosen answer is the longer or the shorter one (with a
length-balanced score), and `val_score`, the number `cfg.select` names.
"""
from __future__ import annotations

import contextlib

import torch

from tinyrm.kernels.bt_loss import bradley_terry_loss

from .calibrate import fit_slopes, length_term, log_length
from .dora import merge_all
from .scorer import RewardModel, pair_logit


def val_domains(val) -> list[str]:
    """The domains validate() reports, as `val_acc_<domain>` keys (a pair without one counts as "none")."""
    return sorted({p.domain or "none" for p in val})


def validate(enc, cfg, val, length_slopes: dict | None = None, probes=()) -> dict:
    """Score `val` and `probes` (cfg: a recipe.TrainConfig) with the model as the scorer would (with
    `length_slopes`, the length-corrected pointwise reward), then `metrics`; pairwise adds one-order
    accuracies."""
    return _validate(enc, cfg, val, length_slopes, probes)[0]


def _validate(enc, cfg, val, length_slopes, probes) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """validate()'s figures and the model's two outputs per pair of val + probes (compare_outputs)."""
    rm = RewardModel(enc, cfg.mode, cfg.prefix, cfg.max_len, truncate=cfg.truncate)
    rm.length_slopes = length_slopes
    rows, n = list(val) + list(probes), len(val)
    first, second = rm.compare_outputs([p.prompt for p in rows], [p.chosen for p in rows],
                                       [p.rejected for p in rows], [p.domain for p in rows])
    out = {}
    if cfg.mode == "pairwise":
        # one order at a time too: a model whose verdict follows the position more than the content shows
        # it here (the averaged score cancels the offset but keeps little signal)
        z_ab, z_ba = first[:n], second[:n]
        out = {"val_acc_chosen_first": (z_ab > 0).float().mean().item(),
               "val_acc_chosen_second": (z_ba < 0).float().mean().item(),
               "val_same_verdict_both_orders": ((z_ab > 0) == (z_ba < 0)).float().mean().item()}
    z = pair_logit(first, second, cfg.mode)
    return {**metrics(z[:n], val, cfg.select), **probe_metrics(z[n:], probes), **out}, first, second


def probe_metrics(z: torch.Tensor, probes) -> dict:
    """`val_probe_<kind>`: accuracy on each kind of generated probe (augment.probes), and its standard error."""
    out = {}
    for src in sorted({p.source for p in probes}):
        keep = [p.source == src for p in probes]
        acc = _acc(z, keep)
        out[f"val_{src.replace('-', '_')}"] = acc
        out[f"val_{src.replace('-', '_')}_se"] = _se(acc, sum(keep))
    return out


@contextlib.contextmanager
def for_inference(enc, autocast=None):
    """Adapters merged (a DoRA model then costs what its base costs) and the training step's autocast if
    given; the module's mode comes back after, and train() unmerges. Nothing is written to a weight."""
    was = enc.training
    enc.eval()
    merge_all(enc)
    try:
        with autocast or contextlib.nullcontext():
            yield
    finally:
        enc.train(was)


def correction_terms(rm, held, sample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict, torch.Tensor]:
    """One scoring pass over both responses of the `held` pairs (validation and probes, scored, never
    fitted on) and of the fitting `sample` (training pairs) -> (z [H] raw pair logits, gap [H] the length
    term of the domain slopes, chosen minus rejected, pooled [H] the same with the pooled slope "*", the
    slopes fitted on the sample, raw [2, H] the float32 raw rewards of the held chosen and rejected
    answers). z − gap is exactly the scorer's corrected score() difference for a pair."""
    if rm.mode != "pointwise":
        raise ValueError("length correction is for pointwise models; this one is pairwise")
    rows, n = list(held) + list(sample), len(held)
    saved, rm.length_slopes = rm.length_slopes, None          # the raw reward
    try:
        r = torch.tensor(rm.score([p.prompt for p in rows] * 2, [p.chosen for p in rows] + [p.rejected for p in rows],
                                  [p.domain for p in rows] * 2), dtype=torch.float64)
    finally:
        rm.length_slopes = saved
    r_c, r_r = r[:len(rows)], r[len(rows):]                                     # [n + m] each
    fit_texts = [p.chosen for p in sample] + [p.rejected for p in sample]
    slopes = fit_slopes(torch.cat([r_c[n:], r_r[n:]]), [log_length(t) for t in fit_texts],
                        [p.domain for p in sample] * 2)
    held, doms = rows[:n], [p.domain for p in rows[:n]]
    z = pair_logit(r_c[:n], r_r[:n], "pointwise")                                 # [n] raw pair logits

    def gap(ds):
        return pair_logit(length_term(slopes, [p.chosen for p in held], ds),
                          length_term(slopes, [p.rejected for p in held], ds), "pointwise")
    return z, gap(doms), gap(None), slopes, torch.stack([r_c[:n], r_r[:n]]).float()   # float64 of float32: exact


# The shares of the length correction a validation may choose from: 0 is the raw reward, 1 the corrected.
SHARES = {"global": (0.0, 1.0), "domain": (0.0, 1.0), "blend": (0.0, 0.25, 0.5, 0.75, 1.0)}


def choose_shares(z, gap, val, how: str = "global", select: str = "domain_mean") -> dict[str, float]:
    """{domain: λ}: the share of the length correction whose pair logits z − λ·gap validate best on `val`
    (z, gap: [len(val)]). "global": one λ from (0, 1) for every domain, by the `select` score; "domain":
    per domain from (0, 1), by that domain's accuracy; "blend": per domain from a grid of five. A tie
    goes to the larger share (the corrected reward)."""
    if how not in SHARES:
        raise ValueError(f"length_choice must be one of {sorted(SHARES)}, got {how!r}")
    doms = val_domains(val)
    if how == "global":
        s = max(reversed(SHARES[how]), key=lambda s: metrics(z - s * gap, val, select)["val_score"])
        return dict.fromkeys(doms, s)
    return {d: max(reversed(SHARES[how]), key=lambda s: _acc(z - s * gap, [(p.domain or "none") == d for p in val]))
            for d in doms}


def shared(z, gap, val, shares: dict[str, float]) -> torch.Tensor:
    """[N] z − λ_d·gap, each pair with its domain's share (a domain without one: raw)."""
    return z - torch.tensor([shares.get(p.domain or "none", 0.0) for p in val], dtype=z.dtype) * gap


def validate_run(enc, cfg, val, fit_pairs=None, probes=()) -> tuple[dict, float, dict | None, torch.Tensor | None]:
    """One validation during training -> (metrics row, the score the selection uses, length slopes to
    store with the checkpoint or None, and for a pointwise model scored in float32 the raw rewards [2, N]
    of the chosen and the rejected answers of val + probes, which the relevance floor's validation reuses;
    else None: that validation reports what the float32 scorer gives, so a bf16 pass's rewards won't do).
    With `fit_pairs` (a pointwise model with the length correction on), the raw and the corrected reward
    are both validated, each domain takes the share of the correction that validates best
    (cfg.length_choice, choose_shares), and the reward so formed is the checkpoint's: its metrics are the
    row's `kept_*`, its score the selection's, its slopes (each domain's share of the fitted slope; the
    pooled "*" by the same rule over all pairs) what the scorer will apply."""
    f32 = not torch.is_autocast_enabled(next(enc.parameters()).device.type)    # under the step's autocast?
    if not fit_pairs:
        v, first, second = _validate(enc, cfg, val, None, probes)
        return v, v["val_score"], None, torch.stack([first, second]) if cfg.mode == "pointwise" and f32 else None
    rm = RewardModel(enc, cfg.mode, cfg.prefix, cfg.max_len, truncate=cfg.truncate)
    k = len(val)
    z, gap, pooled, slopes, raw = correction_terms(rm, list(val) + list(probes), fit_pairs)
    shares = kept_shares(z, gap, pooled, val, cfg)

    def row(zz) -> dict:
        return {**metrics(zz[:k], val, cfg.select), **probe_metrics(zz[k:], probes)}
    kept = row(shared(z, gap, list(val) + list(probes), shares))
    out = {**row(z), "length_slopes": slopes, **{f"corrected_{x}": v for x, v in row(z - gap).items()},
           "length_shares": shares, **{f"kept_{x}": v for x, v in kept.items()},
           "length_corrected": any(shares.values())}
    return out, kept["val_score"], scaled_slopes(slopes, shares), raw if f32 else None


def kept_shares(z, gap, pooled, val, cfg) -> dict[str, float]:
    """Each domain's share of the length correction, chosen on the validation pairs `val` (the first
    len(val) entries of z [N], gap [N] and pooled [N]) by cfg.length_choice; and "*", for a caller without a
    domain: the pooled slope, kept by the global rule over all pairs ("global" itself gives it the one share
    every domain got)."""
    k = len(val)
    shares = choose_shares(z[:k], gap[:k], val, cfg.length_choice, cfg.select)
    star = choose_shares(z[:k], (gap if cfg.length_choice == "global" else pooled)[:k], val, "global", cfg.select)
    shares["*"] = next(iter(star.values()))
    return shares


def scaled_slopes(slopes: dict[str, float], shares: dict[str, float]) -> dict[str, float] | None:
    """The slopes the scorer applies: each domain's fitted slope times its share; None when every share is 0."""
    return {d: shares.get(d, shares["*"]) * b for d, b in slopes.items()} if any(shares.values()) else None


def _se(acc: float, n: int) -> float:
    """The binomial standard error of an accuracy on n pairs."""
    return (acc * (1 - acc) / n) ** 0.5 if n else float("nan")


def _acc(z: torch.Tensor, keep: list[bool]) -> float:
    idx = torch.tensor(keep, dtype=torch.bool)
    return (z[idx] > 0).float().mean().item() if idx.any() else float("nan")


def metrics(z: torch.Tensor, val, select: str = "domain_mean") -> dict:
    """z [N]: the chosen-minus-rejected logit of every validation pair (> 0 = right; a tie is wrong, as in
    RewardBench) -> pooled accuracy and loss, accuracy per domain, per length side and per source, the
    length-balanced score, and `val_score`: the mean of the per-domain accuracies (select="domain_mean")
    or the pooled accuracy (select="acc")."""
    z = z.float()
    out = {"val_acc": (z > 0).float().mean().item(), "val_loss": bradley_terry_loss(z).item()}
    doms = val_domains(val)
    for d in doms:
        keep = [(p.domain or "none") == d for p in val]
        out[f"val_acc_{d}"] = _acc(z, keep)
        out[f"val_se_{d}"] = _se(out[f"val_acc_{d}"], sum(keep))
    # length: preference data mostly favours the longer answer, so a model can score by counting tokens;
    # its accuracy then falls apart on the pairs whose better answer is the shorter one. Shown per side and
    # as a length-balanced score: per domain, the mean of the two sides' accuracies, averaged over domains.
    sides = {"longer": lambda p: len(p.chosen) > len(p.rejected), "shorter": lambda p: len(p.chosen) < len(p.rejected)}
    for side, pick in sides.items():
        out[f"val_acc_chosen_{side}"] = _acc(z, [pick(p) for p in val])
    per_dom = []
    for d in doms:
        accs = [_acc(z, [(p.domain or "none") == d and pick(p) for p in val]) for pick in sides.values()]
        accs = [a for a in accs if a == a]                   # a domain with one side only: that side alone
        per_dom += [sum(accs) / len(accs)] if accs else []
    out["val_len_balanced"] = sum(per_dom) / len(per_dom) if per_dom else float("nan")
    for src in sorted({p.source for p in val if p.source}):
        # per file (or generator) too, for the record: a domain averages sources that may move apart
        out[f"val_src_acc_{src}"] = _acc(z, [p.source == src for p in val])
    # the domain mean's standard error: the domains are independent samples
    out["val_domain_mean_se"] = sum(out[f"val_se_{d}"] ** 2 for d in doms) ** 0.5 / len(doms)
    if select == "domain_mean":
        out["val_score"] = sum(out[f"val_acc_{d}"] for d in doms) / len(doms)
    elif select == "acc":
        out["val_score"] = out["val_acc"]
    else:
        raise ValueError(f"select must be 'domain_mean' or 'acc', got {select!r}")
    return out
