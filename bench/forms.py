"""How much of the length correction to use, judged without fooling ourselves: the reward form of each
checkpoint chosen on one half of the held-out pairs and scored on the other (cross-fitting).

    .venv/bin/python bench/forms.py runs/default-a/best runs/default-b/last --out bench/results/forms.md

A run validates the raw reward r and the length-corrected one r − β_d·log(1 + chars) and keeps whichever
scores better (tinyrm/validation.py). Scored on the pairs it was chosen on, any choice looks good; here
every form policy is chosen on a random half of each domain's held-out pairs and scored on the other half,
both ways, over many halvings. The policies: the raw reward, the corrected one, half of the correction,
and the three choices of `validation.SHARES`: one form for all domains ("global"), a form per domain
("domain"), or a share per domain from a grid ("blend"). "flips" is how often the two halves of a
halving choose differently: how much of a coin the choice is.

Each checkpoint is validated with its own run's recipe: held-out pairs, probes' seed and the training
pairs the slopes are fitted on, exactly as the run did at that step (the raw and corrected domain means
the run recorded are printed beside the recomputed ones).

`--reform DIR` also copies each checkpoint to DIR/<run>/<checkpoint> with the length correction that
training's own validation (validation.validate_run) keeps under the recipe's `length_choice` now, so a
model trained before a change of that rule can be scored as a run of today's recipe would keep it.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import torch

from trials import _f, publish                  # the decision tables' number format, their output

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinyrm.augment import probes as make_probes      # noqa: E402
from tinyrm.calibrate import FILE, fit_sample, slopes_text  # noqa: E402
from tinyrm.mix import load_data                      # noqa: E402
from tinyrm.recipe import load_run_config             # noqa: E402
from tinyrm.scorer import RewardModel                 # noqa: E402
from tinyrm.validation import (choose_shares, correction_terms, metrics, shared, val_domains,  # noqa: E402
                               validate_run)

FIXED = {"raw": 0.0, "corrected": 1.0, "half": 0.5}
CHOSEN = ("global", "domain", "blend")


def halvings(val, n: int, seed: int = 0):
    """n random halvings of the pairs, stratified by domain: lists of (first half, second half) indices."""
    rng, by_dom = random.Random(seed), {}
    for i, p in enumerate(val):
        by_dom.setdefault(p.domain or "none", []).append(i)
    for _ in range(n):
        a, b = [], []
        for idx in by_dom.values():
            idx = rng.sample(idx, len(idx))
            a, b = a + idx[: len(idx) // 2], b + idx[len(idx) // 2:]
        yield sorted(a), sorted(b)


def crossfit(z, gap, val, n: int, select: str) -> dict[str, dict]:
    """{policy: {"val_score", "val_len_balanced", "flips"}}: means over n halvings and both directions."""
    out = {k: {"val_score": 0.0, "val_len_balanced": 0.0, "flips": 0.0} for k in (*FIXED, *CHOSEN)}
    doms = val_domains(val)
    for a, b in halvings(val, n):
        halves = [(torch.tensor(h), [val[i] for i in h]) for h in (a, b)]
        picks = {}
        for (fit_i, fit_v), (test_i, test_v) in (halves, halves[::-1]):
            for pol in (*FIXED, *CHOSEN):
                s = dict.fromkeys(doms, FIXED[pol]) if pol in FIXED else \
                    choose_shares(z[fit_i], gap[fit_i], fit_v, pol, select)
                picks.setdefault(pol, []).append(s)
                m = metrics(shared(z[test_i], gap[test_i], test_v, s), test_v, select)
                for k in ("val_score", "val_len_balanced"):
                    out[pol][k] += m[k] / (2 * n)
        for pol, (s1, s2) in picks.items():
            out[pol]["flips"] += sum(s1[d] != s2[d] for d in doms) / (len(doms) * n)
    return out


def reform(ckpt: Path, cfg, val, fit, out: Path) -> dict:
    """Copy `ckpt` into `out` with the correction validate_run keeps for it now; its validation row."""
    rm = RewardModel.load(ckpt, mode=cfg.mode, prefix=cfg.prefix, max_len=cfg.max_len)
    probes = make_probes(val, cfg.probes, cfg.split_seed) if cfg.probes else []
    with torch.no_grad():
        row, _, kept, _ = validate_run(rm.enc, cfg, val, fit, probes)
    shutil.copytree(ckpt, out)
    (out / FILE).unlink(missing_ok=True)
    if kept:
        (out / FILE).write_text(slopes_text(kept, {"fitted_on": f"{len(fit)} training pairs",
                                                   "length_choice": cfg.length_choice}))
    shutil.copy(ckpt.parent / "config.json", out.parent / "config.json")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders of pointwise runs (RUN/best, RUN/last)")
    ap.add_argument("--halvings", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the Markdown table here and the figures as JSONL beside it")
    ap.add_argument("--reform", type=Path, help="copy each checkpoint here with today's kept length correction")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pols = (*FIXED, *CHOSEN)
    lines = ["| checkpoint | step | recorded raw / corrected | " + " | ".join(pols) + " | flips: global / domain / blend |",
             "|---|---:|---|" + "---:|" * (len(pols) + 1)]
    records, mean = [], {p: [] for p in pols}
    for ckpt in args.checkpoints:
        cfg = load_run_config(ckpt.parent)
        train_pairs, val, _ = load_data(cfg)
        step = json.loads((ckpt / "adapter.json").read_text())["step"]
        rec = next(json.loads(x) for x in (ckpt.parent / "metrics.jsonl").read_text().splitlines()
                   if '"val_score"' in x and json.loads(x)["step"] == step)
        rm = RewardModel.load(ckpt, mode=cfg.mode, prefix=cfg.prefix, max_len=cfg.max_len)
        z, gap, _, slopes, _ = correction_terms(rm, val, fit_sample(train_pairs, cfg.length_fit_pairs, cfg.seed))
        full = {k: metrics(z - s * gap, val, cfg.select)["val_score"] for k, s in (("raw", 0.0), ("corrected", 1.0))}
        cf = crossfit(z, gap, val, args.halvings, cfg.select)
        label = f"{ckpt.parent.name}/{ckpt.name}"
        print(f"{label} step {step}: raw {full['raw']:.4f} (recorded {rec['val_score']:.4f}), corrected "
              f"{full['corrected']:.4f} (recorded {rec['corrected_val_score']:.4f}); slopes {slopes}", flush=True)
        lines.append(f"| {label} | {step} | {_f(rec['val_score'])} / {_f(rec['corrected_val_score'])} | "
                     + " | ".join(f"{_f(cf[p]['val_score'])} ({_f(cf[p]['val_len_balanced'])})" for p in pols)
                     + " | " + " / ".join(f"{cf[p]['flips']:.2f}" for p in CHOSEN) + " |")
        for p in pols:
            mean[p].append(cf[p])
        records.append({"checkpoint": label, "step": step, "full": full, "slopes": slopes, "crossfit": cf})
        if args.reform:
            row = reform(ckpt, cfg, val, fit_sample(train_pairs, cfg.length_fit_pairs, cfg.seed),
                         args.reform / ckpt.parent.name / ckpt.name)
            print(f"{label}: kept {row['kept_val_score']:.4f} with shares {row['length_shares']} "
                  f"({cfg.length_choice}) -> {args.reform / ckpt.parent.name / ckpt.name}", flush=True)
            records[-1]["reformed"] = {k: row[k] for k in ("kept_val_score", "kept_val_len_balanced", "length_shares")}
    avg = {p: {k: sum(m[k] for m in ms) / len(ms) for k in ms[0]} for p, ms in mean.items()}
    lines.append(f"| mean of {len(args.checkpoints)} | | | "
                 + " | ".join(f"**{_f(avg[p]['val_score'])}** ({_f(avg[p]['val_len_balanced'])})" for p in pols)
                 + " | " + " / ".join(f"{avg[p]['flips']:.2f}" for p in CHOSEN) + " |")
    text = ("Cross-fitted domain mean (length-balanced) of each reward-form policy; "
            f"{args.halvings} stratified halvings, both ways.\n\n" + "\n".join(lines) + "\n")
    publish(text, records + [{"mean": avg}], args.out)


if __name__ == "__main__":
    main()
