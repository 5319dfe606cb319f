"""Scoring at a longer max_len than training: train short, score long (decisions.md 1.42).

    .venv/bin/python bench/scorelen.py RUN... --lens 192,384 --crossfit 200 --out bench/results/scorelen-six.md

The default trains at max_len 192 because shorter sequences buy steps within the time budget (1.26). It
then reads about the first 140 tokens of each answer: most held-out answers are cut, and two answers that
open alike are tied exactly. Scoring has no step budget, so a kept checkpoint can read more at scoring time.
For each run's kept checkpoint and each length, what training fits after its steps is fitted again at that
length, as training fits it: each domain's choice of the raw or the length-corrected reward on validation
(validate_run's rule, from the run's own length-fit pairs), then the relevance floor on the run's training
rows, at the default's quantile (also for runs trained before the floor). The floor's sentence embedder
stays at the length the run trained at, so that only the reward reads more. Validation and its probes are
scored once per length. The length choice is also cross-fitted (bench/forms.py), so that no figure rests
only on a choice made on the pairs it is scored on.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from forms import crossfit
from relevance import KEYS, cosines, line, term_gap
from trials import PROBES, _f, publish

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinyrm.augment import probes as make_probes         # noqa: E402
from tinyrm.calibrate import fit_sample                  # noqa: E402
from tinyrm.mix import load_data                         # noqa: E402
from tinyrm.recipe import load_run_config                # noqa: E402
from tinyrm.relevance import SentenceEmbedder            # noqa: E402
from tinyrm.relevance_fit import fit as fit_floor        # noqa: E402
from tinyrm.relevance_fit import fit_rows                # noqa: E402
from tinyrm.scorer import RewardModel                    # noqa: E402
from tinyrm.validation import correction_terms, kept_shares, metrics, probe_metrics, scaled_slopes, shared  # noqa: E402

STAGES = ("raw", "length", "floor")     # the reward alone; with its length form; with the floor as well


def measure(run: Path, lens: list[int], halvings: int, floor: float) -> dict:
    cfg = dataclasses.replace(load_run_config(run), relevance_floor=floor)   # a run trained before the floor has none
    train, val, _ = load_data(cfg)
    probes = make_probes(val, cfg.probes, cfg.split_seed) if cfg.probes else []
    rows, k = list(val) + list(probes), len(val)
    fit_len = fit_sample(train, cfg.length_fit_pairs, cfg.seed)
    fit_rel = fit_rows(train, cfg.relevance_fit_pairs, cfg.relevance_fit_made, cfg.seed)
    kept = RewardModel.load(run / "best")                   # merged once; each length reuses the encoder
    meta = json.loads((run / "best" / "adapter.json").read_text())
    base = Path(cfg.model) if (Path(cfg.model) / "config.json").is_file() else Path(meta["base_path"])
    emb = SentenceEmbedder(base, cfg.max_len)
    rc, rr = cosines(emb, rows)
    out = {"run": run.name, "step": meta["step"], "trained_max_len": cfg.max_len, "lens": {}}
    for L in lens:
        t0 = time.perf_counter()
        rm = RewardModel(kept.enc, cfg.mode, cfg.prefix, L, truncate=cfg.truncate)
        z, gap, pooled, slopes, _ = correction_terms(rm, rows, fit_len)   # z, gap [N]: raw logit, length term
        shares = kept_shares(z, gap, pooled, val, cfg)                 # what validate_run keeps
        zl = shared(z, gap, rows, shares)
        rm.length_slopes = scaled_slopes(slopes, shares)
        f = fit_floor(rm, emb, fit_rel, cfg.relevance_floor)
        tau = torch.tensor([f["floors"].get(p.domain, -1.0) for p in rows])
        beta = torch.tensor([f["weights"].get(p.domain, 0.0) for p in rows])
        zf = zl + beta * term_gap(rc, rr, tau)
        stages = {}
        for name, zz in zip(STAGES, (z, zl, zf)):
            stages[name] = {**metrics(zz[:k], val, cfg.select), **probe_metrics(zz[k:], rows[k:])}
        if halvings:    # the length choice made on one half of each domain's pairs, scored on the other
            cf = crossfit(z[:k], gap[:k], val, halvings, cfg.select)[cfg.length_choice]
            stages["length"]["crossfit_val_score"] = cf["val_score"]
            stages["length"]["crossfit_flips"] = cf["flips"]
        tokens = sum(len(rm.cloze.pointwise(p.prompt, r, p.domain).input_ids)
                     for p in val for r in (p.chosen, p.rejected))
        out["lens"][str(L)] = {**stages, "shares": shares, "floors": f["floors"], "weights": f["weights"],
                               "tokens_per_pair": tokens / k, "seconds": time.perf_counter() - t0}
        print(f"{run.name} at {L}: raw {stages['raw']['val_score']:.4f}, length {stages['length']['val_score']:.4f}, "
              f"floor {stages['floor']['val_score']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def mean_table(records: list[dict], lens: list[int]) -> tuple[str, list[dict]]:
    """The means over the runs, per length and stage, and the cross-fitted length choice."""
    n, lines, means = len(records), [], []
    for L in map(str, lens):
        for s in STAGES:
            of = [r["lens"][L][s] for r in records]
            m = {key: sum(x[key] for x in of) / n for key in KEYS if all(key in x for x in of)}
            lines.append(line(f"**mean of {n}**, max_len {L}, {s}", m))
            means.append({"mean_of": n, "max_len": int(L), "stage": s, **m})
    cf = ["| max_len | cross-fitted domain mean (length form) | flips | tokens per pair | seconds per run |",
          "|---:|---:|---:|---:|---:|"]
    for L in map(str, lens):
        ls = [r["lens"][L] for r in records]
        if "crossfit_val_score" in ls[0]["length"]:
            cf.append(f"| {L} | {_f(sum(x['length']['crossfit_val_score'] for x in ls) / n)} | "
                      f"{sum(x['length']['crossfit_flips'] for x in ls) / n:.2f} | "
                      f"{sum(x['tokens_per_pair'] for x in ls) / n:.0f} | {sum(x['seconds'] for x in ls) / n:.0f} |")
    return "\n".join(lines) + "\n\n" + "\n".join(cf), means


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (each with best/ and metrics.jsonl)")
    ap.add_argument("--lens", type=lambda s: [int(x) for x in s.split(",")], default=[192, 384], metavar="L,L",
                    help="scoring lengths, comma-separated (the run's own first, for the comparison)")
    ap.add_argument("--crossfit", type=int, default=0, metavar="N", help="cross-fit the length choice over N halvings")
    ap.add_argument("--floor", type=float, default=0.1, help="the floor's quantile, for every run (the default's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the Markdown table here and the figures as JSONL beside it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    head = ["| run, max_len, reward | domain mean ± se | length-balanced | chosen longer / shorter | chat | safety | "
            "reasoning | probes " + " / ".join(PROBES) + " |", "|---|---:|---:|---|---:|---:|---:|---|"]
    records, lines = [], []
    for run in args.runs:
        r = measure(run, args.lens, args.crossfit, args.floor)
        records.append(r)
        lines += [line(f"{run.name}, {L}, {s}", r["lens"][L][s]) for L in r["lens"] for s in STAGES]
    means, figures = mean_table(records, args.lens)
    text = "\n".join(head + lines) + "\n\nMeans:\n\n" + "\n".join(head) + "\n" + means + "\n"
    publish(text, records + figures, args.out)


if __name__ == "__main__":
    main()
