"""A relevance term beside a kept reward: the frozen encoder's own sentence embedding (decisions.md 1.37).

    .venv/bin/python bench/relevance.py RUN... --out bench/results/relevance-five.md

all-MiniLM-L6-v2 was trained so that the mean of its last hidden states puts a question and its answer
close together. For each run this scores r(x, y) + β_d·cos(e(x), e(y)): e the L2-normalised mean-pooled
embedding of the prompt or the response alone from the base encoder without adapters (so training cannot
wear it away), one β_d ≥ 0 per domain fitted by maximum likelihood of σ(Δr + β_d·Δcos) on the run's
TRAINING rows only (preference pairs per domain and relevance pairs generated from them, as the probes
are), Δr the reward difference in the form the run kept. Validation and its probes are scored once, with
and without the term, and the means over the runs printed beneath.

`--crossfit N` (with `--floor`) also asks whether a domain should keep the floor only where its held-out
pairs validate at least as well (decisions.md 1.39): each policy chosen on one half of each domain's pairs
and scored on the other, both ways, over N halvings (bench/forms.py's method).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from forms import crossfit
from trials import PROBES, _f, publish, validations

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinyrm.augment import probes as make_probes         # noqa: E402
from tinyrm.mix import load_data                         # noqa: E402
from tinyrm.recipe import load_run_config                # noqa: E402
from tinyrm.relevance import SentenceEmbedder, shortfall                 # noqa: E402
from tinyrm.relevance_fit import DOMAIN_ORDER, attach_to_run, fit_beta, fit_rows  # noqa: E402
from tinyrm.relevance_fit import fit as fit_floor                              # noqa: E402
from tinyrm.scorer import RewardModel                    # noqa: E402
from tinyrm.validation import choose_shares, metrics, probe_metrics, shared  # noqa: E402

DOMAINS = DOMAIN_ORDER


def term_gap(cc: torch.Tensor, cr: torch.Tensor, floor: torch.Tensor | None) -> torch.Tensor:
    """[N] the term's chosen-minus-rejected difference: cos itself (1.37), or with a floor τ [N] only what
    falls below it (1.38, what training now fits: tinyrm/relevance_fit.py)."""
    if floor is None:
        return cc - cr
    return shortfall(cc, floor) - shortfall(cr, floor)


def cosines(emb: SentenceEmbedder, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] cos(prompt, chosen), [N] cos(prompt, rejected)."""
    prompts = [p.prompt for p in rows]
    return emb.cosines(prompts, [p.chosen for p in rows]), emb.cosines(prompts, [p.rejected for p in rows])


def measure(run: Path, emb_for, per_domain: int, relevance: int, uniform=(), floor_q: float | None = None,
            halvings: int = 0, higher=()) -> dict:
    cfg = load_run_config(run)
    train, val, _ = load_data(cfg)
    rows = list(val) + (make_probes(val, cfg.probes, cfg.split_seed) if cfg.probes else [])
    rm = RewardModel.load(run / "best", mode=cfg.mode, prefix=cfg.prefix, max_len=cfg.max_len)
    rm.relevance = rm.embedder = None       # the reward as kept: a floor stored by training is refitted here
    emb = emb_for(run, cfg)
    fit = fit_rows(train, per_domain, relevance, cfg.seed)

    def z_of(rs):
        return rm.compare_logits([p.prompt for p in rs], [p.chosen for p in rs], [p.rejected for p in rs],
                                 [p.domain for p in rs])
    if floor_q is None:       # 1.37's linear term: β per domain on cos(prompt, chosen) − cos(prompt, rejected)
        (cc, cr), z_fit, tau = cosines(emb, fit), z_of(fit), None
        beta = {d: fit_beta(z_fit[m], cc[m] - cr[m]) for d in DOMAINS
                if (m := torch.tensor([p.domain == d for p in fit])).any()}
    else:                     # 1.38's floor, fitted as training fits it
        f = fit_floor(rm, emb, fit, floor_q)
        tau, beta = ({d: f[k][d] for d in DOMAINS if d in f[k]} for k in ("floors", "weights"))

    def floors(rs):
        return None if tau is None else torch.tensor([tau.get(p.domain, -1.0) for p in rs])
    (rc, rr), z = cosines(emb, rows), z_of(rows)
    s = term_gap(rc, rr, floors(rows))
    zr = z + torch.tensor([beta.get(p.domain, 0.0) for p in rows]) * s
    k = len(val)
    policies = {}
    if halvings:   # the floor as a "correction" z − λ_d·gap: λ_d = 1 keeps it in domain d, 0 drops it
        gap = z - zr
        cf = crossfit(z[:k], gap[:k], val, halvings, cfg.select)
        for name, pol in (("none", "raw"), ("floor", "corrected"), ("global", "global"), ("domain", "domain")):
            keep = (dict.fromkeys(DOMAINS, 1.0 if name == "floor" else 0.0) if name in ("none", "floor")
                    else choose_shares(z[:k], gap[:k], val, pol, cfg.select))
            policies[name] = {**cf[pol], "kept_on_all": keep,
                              **probe_metrics(shared(z[k:], gap[k:], rows[k:], keep), rows[k:])}
    sweep = {}
    for q in higher:          # other floor heights (1.40), each fitted as training would fit it
        f = fit_floor(rm, emb, fit, q)
        tq, bq = (torch.tensor([f[k].get(p.domain, dflt) for p in rows]) for k, dflt in (("floors", -1.0),
                                                                                           ("weights", 0.0)))
        zq = z + bq * term_gap(rc, rr, tq)
        sweep[f"{q:g}"] = {**metrics(zq[:k], val, cfg.select), **probe_metrics(zq[k:], rows[k:]),
                           "floors": f["floors"], "weights": f["weights"]}
    step = json.loads((run / "best" / "adapter.json").read_text())["step"]
    rec = next(r for r in validations(run) if r["step"] == step)
    cloze = sum(len(rm.cloze.pointwise(p.prompt, r, p.domain).input_ids) for p in val for r in (p.chosen, p.rejected))
    extra = sum(len(emb.ids(t)) for p in val for t in (p.prompt, p.chosen, p.rejected))
    return {"run": run.name, "beta": beta, "floor": tau,
            "recorded_kept_val_score": rec.get("kept_val_score", rec["val_score"]),
            "tokens_per_pair": {"reward": cloze / k, "relevance": extra / k},
            "term_alone_val": metrics(s[:k], val, cfg.select)["val_score"], "policies": policies, "sweep": sweep,
            "without": {**metrics(z[:k], val, cfg.select), **probe_metrics(z[k:], rows[k:])},
            "with": {**metrics(zr[:k], val, cfg.select), **probe_metrics(zr[k:], rows[k:])},
            "uniform": {str(b): {**metrics(z[:k] + b * s[:k], val, cfg.select),
                                 **probe_metrics(z[k:] + b * s[k:], rows[k:])} for b in uniform}}


def attach(run: Path, q: float, per_domain: int, made: int) -> dict:
    """What training now does after its last step (tinyrm/relevance_fit.py), for a run trained before: fit the
    floor on its kept checkpoint, write best/relevance.json, append the relevance_* row to metrics.jsonl
    and the figures to summary.json."""
    cfg = dataclasses.replace(load_run_config(run), relevance_floor=q, relevance_fit_pairs=per_domain,
                              relevance_fit_made=made)
    train, val, _ = load_data(cfg)
    probes = make_probes(val, cfg.probes, cfg.split_seed) if cfg.probes else []
    step = json.loads((run / "best" / "adapter.json").read_text())["step"]

    def record(row):
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    out = attach_to_run(cfg, run / "best", step, train, val, probes, "cpu", record)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "relevance": out}, indent=2))
    return out


def line(label: str, m: dict) -> str:
    return (f"| {label} | {_f(m['val_score'], m.get('val_domain_mean_se'))} | {_f(m['val_len_balanced'])} | "
            f"{_f(m['val_acc_chosen_longer'])} / {_f(m['val_acc_chosen_shorter'])} | "
            + " | ".join(_f(m.get(f"val_acc_{d}")) for d in DOMAINS) + " | "
            + " / ".join(_f(m.get(f"val_probe_{p}")) for p in PROBES) + " |")


KEYS = ("val_score", "val_len_balanced", "val_acc_chosen_longer", "val_acc_chosen_shorter",
        *(f"val_acc_{d}" for d in DOMAINS), *(f"val_probe_{p}" for p in PROBES))


POLICIES = ("none", "floor", "global", "domain")


def policy_table(runs: list[dict]) -> str:
    """Cross-fitted domain mean (length-balanced) of each floor policy per run, its flips and the relevance
    probe as chosen on all pairs; the mean over the runs last (1.39)."""
    head = ("| run | " + " | ".join(POLICIES) + " | flips global / domain | relevance probe: "
            + " / ".join(POLICIES) + " | domains keeping it (domain) |\n|---|" + "---:|" * len(POLICIES) + "---|---|---|")

    def row(label, pol, kept=""):
        return (f"| {label} | " + " | ".join(f"{_f(pol[p]['val_score'])} ({_f(pol[p]['val_len_balanced'])})"
                                             for p in POLICIES)
                + f" | {pol['global']['flips']:.2f} / {pol['domain']['flips']:.2f} | "
                + " / ".join(_f(pol[p].get("val_probe_relevance")) for p in POLICIES) + f" | {kept} |")
    lines = [row(r["run"], r["policies"], ", ".join(d for d, v in r["policies"]["domain"]["kept_on_all"].items()
                                                     if v) or "none") for r in runs]
    keys = ("val_score", "val_len_balanced", "flips", "val_probe_relevance")
    mean = {p: {k: sum(r["policies"][p][k] for r in runs) / len(runs) for k in keys} for p in POLICIES}
    lines.append(row(f"**mean of {len(runs)}**", mean))
    return ("Cross-fitted domain mean (length-balanced) of each floor policy, chosen on one half of each "
            "domain's held-out pairs and scored on the other:\n\n" + head + "\n" + "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (each with best/ and metrics.jsonl)")
    ap.add_argument("--fit-pairs", type=int, default=300, help="training pairs per domain to fit β on")
    ap.add_argument("--fit-relevance", type=int, default=100, help="relevance pairs per domain made from them")
    ap.add_argument("--uniform", type=float, nargs="*", default=(),
                    help="also score these β for every domain, unfitted (the trade-off, for the record)")
    ap.add_argument("--floor", type=float, help="charge only relevance below this quantile of the chosen "
                    "answers' (per domain, on the fit pairs): β·min(0, cos − τ)")
    ap.add_argument("--higher", type=lambda s: [float(q) for q in s.split(",")], default=(), metavar="Q,Q",
                    help="with --floor: also fit and score the floor at these quantiles, comma-separated (1.40)")
    ap.add_argument("--crossfit", type=int, default=0, metavar="N",
                    help="with --floor: cross-fit keeping the floor per domain over N halvings (1.39)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the Markdown table here and the figures as JSONL beside it")
    ap.add_argument("--attach", action="store_true", help="with --floor: store the floor in each run as "
                    "training now does (best/relevance.json), instead of the table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.attach:
        if args.floor is None:
            raise SystemExit("error: --attach needs --floor Q (the quantile training uses: relevance_floor)")
        for run in args.runs:
            out = attach(run, args.floor, args.fit_pairs, args.fit_relevance)
            print(f"{run.name}: with the floor {out['val_score']:.4f}, relevance probe "
                  f"{out.get('val_probe_relevance')}; weights {out['weights']}", flush=True)
        return
    embedders: dict[tuple, SentenceEmbedder] = {}   # one per base and length

    def emb_for(run, cfg):
        meta = json.loads((run / "best" / "adapter.json").read_text())
        base = Path(cfg.model) if (Path(cfg.model) / "config.json").is_file() else Path(meta["base_path"])
        key = (meta.get("base_hash"), cfg.max_len)
        return embedders.setdefault(key, SentenceEmbedder(base, cfg.max_len))

    lines = ["| run, reward | domain mean ± se | length-balanced | chosen longer / shorter | chat | safety | "
             "reasoning | probes " + " / ".join(PROBES) + " |", "|---|---:|---:|---|---:|---:|---:|---|"]
    records, term = [], "β·cos" if args.floor is None else f"β·min(0, cos − τ{args.floor:g})"
    for run in args.runs:
        r = measure(run, emb_for, args.fit_pairs, args.fit_relevance, args.uniform, args.floor,
                    args.crossfit if args.floor is not None else 0, args.higher if args.floor is not None else ())
        b = ", ".join(f"{d} {v:.2f}" for d, v in r["beta"].items())
        lines += [line(f"{run.name}, as kept", r["without"]), line(f"{run.name}, + {term} (β: {b})", r["with"])]
        lines += [line(f"{run.name}, {term} at β = {u} (every domain)", m) for u, m in r["uniform"].items()]
        lines += [line(f"{run.name}, the floor at the {q} quantile (β: "
                       + ", ".join(f"{d} {m['weights'][d]:.2f}" for d in DOMAINS if d in m["weights"]) + ")", m)
                  for q, m in r["sweep"].items()]
        records.append(r)
        print(f"{run.name}: {r['without']['val_score']:.4f} (recorded {r['recorded_kept_val_score']:.4f}) -> "
              f"{r['with']['val_score']:.4f}; relevance probe {r['without'].get('val_probe_relevance')} -> "
              f"{r['with'].get('val_probe_relevance')}; β {b}", flush=True)
    runs, n = list(records), len(records)
    sides = [("without", "as kept", lambda r: r["without"]), ("with", "+ " + term, lambda r: r["with"])]
    sides += [(f"floor {q}", f"the floor at the {q} quantile", lambda r, q=q: r["sweep"][q]) for q in runs[0]["sweep"]]
    for side, label, get in sides:
        of = [get(r) for r in runs]
        mean = {k: sum(m[k] for m in of) / n for k in KEYS if all(k in m for m in of)}
        lines.append(line(f"**mean of {n}**, {label}", mean))
        records.append({"mean_of": n, "side": side, **mean})
    tok = runs[0]["tokens_per_pair"]
    if runs[0]["policies"]:
        lines += ["", policy_table(runs)]
    text = "\n".join(lines) + (f"\n\nTokens per validation pair: {tok['reward']:.0f} for the reward, "
                               f"{tok['relevance']:.0f} more for the relevance pass (prompt once, each response).\n")
    publish(text, records, args.out)


if __name__ == "__main__":
    main()
