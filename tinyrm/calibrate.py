"""Length decorrelation of a pointwise reward: r'(x) = r(x) − β_d · log(1 + chars(x)).

Preference data mostly prefers the longer answer, and a small model learns that shortcut: the default
MiniLM's reward correlates 0.44–0.60 with log length on its own training responses, and on validation it
is right on 74 % of the pairs whose chosen answer is the longer one but on 46 % of those where it is the
shorter. Best-of-n with such a reward picks the longest candidate, whatever it says.

After training, β_d is fitted on a seeded sample of *training* pairs (never validation, never
RewardBench): per domain, the least-squares slope of the reward on log length over all their responses,
so the corrected reward has zero linear correlation with length on that sample; "*" is the slope pooled
over every domain, used when the caller gives no domain. Length is counted in characters (what the user
sees, and the same for any tokenizer). A pairwise model compares two answers in one input; this
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


def fit_length_correction(rm, pairs, n: int = 600, seed: int = 0) -> dict[str, float]:
    """Score both responses of a seeded sample of n training pairs with the raw reward; fit the slopes."""
    if rm.mode != "pointwise":
        raise ValueError("length correction is for pointwise models; this one is pairwise")
    sample = random.Random(f"length-fit-{seed}").sample(list(pairs), min(n, len(pairs)))
    saved, rm.length_slopes = rm.length_slopes, None          # fit on the raw reward
    try:
        q = [p.prompt for p in sample]
        resp = [p.chosen for p in sample] + [p.rejected for p in sample]
        rewards = rm.score(q * 2, resp)
    finally:
        rm.length_slopes = saved
    return fit_slopes(rewards, [log_length(t) for t in resp], [p.domain for p in sample] * 2)


def save_slopes(folder: Path, slopes: dict[str, float], meta: dict | None = None) -> None:
    tmp = Path(folder) / (FILE + ".tmp")
    tmp.write_text(json.dumps({"slopes": slopes, "length": "log1p(characters)", **(meta or {})}, indent=2))
    tmp.replace(Path(folder) / FILE)


def load_slopes(folder: Path) -> dict[str, float] | None:
    f = Path(folder) / FILE
    if not f.is_file():
        return None
    try:
        slopes = json.loads(f.read_text())["slopes"]
        return {str(k): float(v) for k, v in slopes.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{f}: not a length-correction file ({e})") from None


def correct_run(cfg, best_dir: Path, train_pairs, val, record, log, raw_score: float | None = None) -> dict:
    """Fit the length slopes of the kept checkpoint on training pairs and validate the corrected reward.
    The slopes are stored beside the checkpoint (so the scorer applies them) only if the corrected reward
    scores at least as well on validation (cfg.select) as the raw one, `raw_score`: the kept checkpoint's
    own validation score. Whether a checkpoint is length-driven enough to gain is a validation question,
    like the choice of the checkpoint itself. The checkpoint's weights are unchanged either way."""
    from .scorer import RewardModel      # here: scorer.py imports this module
    from .validation import validate

    (Path(best_dir) / FILE).unlink(missing_ok=True)       # a re-run decides afresh
    rm = RewardModel.load(best_dir)
    slopes = fit_length_correction(rm, train_pairs, cfg.length_fit_pairs, cfg.seed)
    v = validate(rm.enc, cfg, val, slopes) if val else {}
    applied = not v or raw_score is None or v["val_score"] >= raw_score
    if applied:
        save_slopes(best_dir, slopes, {"fitted_on": f"{min(cfg.length_fit_pairs, len(train_pairs))} training pairs"})
    record({"length_slopes": slopes, "length_correction_applied": applied,
            **{f"corrected_{k}": x for k, x in v.items()}})
    log("length correction: slope of reward on log(1+chars) " + ", ".join(f"{d} {b:.3f}" for d, b in slopes.items())
        + (f"; val_score {v['val_score']:.4f} (len-balanced {v['val_len_balanced']:.4f})" if v else "")
        + (" -> applied" if applied else f" -> not applied (raw reward scores {raw_score:.4f})"))
    return {"length_slopes": slopes, "length_correction_applied": applied,
            **({"corrected_val_score": v["val_score"], "corrected_val_acc": v["val_acc"],
                "corrected_val_len_balanced": v["val_len_balanced"]} if v else {})}
