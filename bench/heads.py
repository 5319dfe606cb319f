"""Both heads of a pointwise model trained with the pairwise cloze beside it (`pairwise_weight`), combined.

    .venv/bin/python bench/heads.py runs/side-pairwise-*/best --out bench/results/heads.md

Such a checkpoint holds two readings of the same encoder and MLM head: the pointwise one it was kept for
(yes/no after each response alone; r_a − r_b, with its kept length correction) and the pairwise one it
was also trained on ("0"/"1" after both responses; (z_ab − z_ba) / 2, both orders). Both are log-odds
that a beats b. On the run's own held-out pairs and probes this prints each head alone and their sum
(the product of the two experts' odds: nothing fitted), and, for the record, a weight λ in
z_point + λ·z_pair chosen on half of each domain's pairs and scored on the other half (bench/forms.py's
stratified halvings, both ways). It also counts the tokens each form reads per pair.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from forms import halvings
from trials import PROBES, _f, publish, validations

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinyrm.augment import probes as make_probes      # noqa: E402
from tinyrm.mix import load_data                      # noqa: E402
from tinyrm.recipe import load_run_config             # noqa: E402
from tinyrm.scorer import RewardModel                 # noqa: E402
from tinyrm.validation import metrics, probe_metrics  # noqa: E402

LAMBDAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def heads(ckpt: Path):
    """-> (cfg, val, rows, z_point [N], z_pair [N], tokens per pair {form: float}, the kept score recorded)."""
    cfg = load_run_config(ckpt.parent)
    if cfg.mode != "pointwise" or cfg.pairwise_weight <= 0:
        raise SystemExit(f"error: {ckpt.parent / 'config.json'}: not a pointwise run with pairwise_weight > 0")
    _, val, _ = load_data(cfg)
    rows = list(val) + (make_probes(val, cfg.probes, cfg.split_seed) if cfg.probes else [])
    point = RewardModel.load(ckpt, mode=cfg.mode, prefix=cfg.prefix, max_len=cfg.max_len)
    pair = RewardModel(point.enc, "pairwise", cfg.prefix, cfg.max_len, truncate=cfg.truncate)  # the side head: training_clozes' second
    args = ([p.prompt for p in rows], [p.chosen for p in rows], [p.rejected for p in rows], [p.domain for p in rows])
    z_point, z_pair = point.compare_logits(*args), pair.compare_logits(*args)   # inference mode inside
    k = len(val)
    n_point = sum(len(point.cloze.pointwise(p.prompt, r, p.domain).input_ids)
                  for p in val for r in (p.chosen, p.rejected))
    n_pair = sum(len(pair.cloze.pairwise(p.prompt, a, b, p.domain).input_ids)
                 for p in val for a, b in ((p.chosen, p.rejected), (p.rejected, p.chosen)))
    tokens = {"pointwise": n_point / k, "pairwise": n_pair / k, "sum": (n_point + n_pair) / k}
    step = json.loads((ckpt / "adapter.json").read_text())["step"]
    rec = next(r for r in validations(ckpt.parent) if r["step"] == step)
    return cfg, val, rows, z_point, z_pair, tokens, rec.get("kept_val_score", rec["val_score"])


def crossfit(z_point, z_pair, val, n: int, select: str) -> dict:
    """The λ chosen on one half and scored on the other: mean domain mean, length-balanced, λ picked."""
    out, picked = {"val_score": 0.0, "val_len_balanced": 0.0}, []
    for a, b in halvings(val, n):
        halves = [(torch.tensor(h), [val[i] for i in h]) for h in (a, b)]
        for (fi, fv), (ti, tv) in (halves, halves[::-1]):
            lam = max(LAMBDAS, key=lambda w: metrics(z_point[fi] + w * z_pair[fi], fv, select)["val_score"])
            m = metrics(z_point[ti] + lam * z_pair[ti], tv, select)
            out = {key: out[key] + m[key] / (2 * n) for key in out}
            picked.append(lam)
    return {**out, "lambdas": {str(w): picked.count(w) / len(picked) for w in LAMBDAS}}


def row(label: str, z: torch.Tensor, val, rows, select: str, tokens: float) -> tuple[str, dict]:
    k = len(val)
    m = {**metrics(z[:k], val, select), **probe_metrics(z[k:], rows[k:])}
    line = (f"| {label} | {tokens:.0f} | {_f(m['val_score'], m['val_domain_mean_se'])} | {_f(m['val_len_balanced'])} | "
            f"{_f(m['val_acc_chosen_longer'])} / {_f(m['val_acc_chosen_shorter'])} | "
            + " | ".join(_f(m.get(f"val_acc_{d}")) for d in ("chat", "safety", "reasoning")) + " | "
            + " / ".join(f"{m[f'val_probe_{p}']:.2f}" if f"val_probe_{p}" in m else "—" for p in PROBES) + " |")
    return line, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders of runs trained with pairwise_weight")
    ap.add_argument("--halvings", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the Markdown table here and the figures as JSONL beside it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["| checkpoint, head | tokens per pair | domain mean ± se | length-balanced | chosen longer / shorter | "
             "chat | safety | reasoning | probes " + " / ".join(PROBES) + " |", "|---|---:|---:|---:|---|---:|---:|---:|---|"]
    records = []
    for ckpt in args.checkpoints:
        cfg, val, rows, zp, zq, tokens, recorded = heads(ckpt)
        label = f"{ckpt.parent.name}/{ckpt.name}"
        rec = {"checkpoint": label, "tokens_per_pair": tokens, "recorded_kept_val_score": recorded}
        for name, z, t in (("pointwise (as kept)", zp, tokens["pointwise"]), ("pairwise", zq, tokens["pairwise"]),
                           ("sum", zp + zq, tokens["sum"])):
            line, m = row(f"{label}, {name}", z, val, rows, cfg.select, t)
            lines.append(line)
            rec[name] = m
        cf = crossfit(zp, zq, val, args.halvings, cfg.select)
        rec["crossfit"] = cf
        lines.append(f"| {label}, λ cross-fitted ({args.halvings} halvings) | {tokens['sum']:.0f} | "
                     f"{_f(cf['val_score'])} | {_f(cf['val_len_balanced'])} | | | | | |")
        records.append(rec)
        print(f"{label}: pointwise {rec['pointwise (as kept)']['val_score']:.4f} (recorded {recorded:.4f}), "
              f"pairwise {rec['pairwise']['val_score']:.4f}, sum {rec['sum']['val_score']:.4f}; "
              f"λ picked {cf['lambdas']}", flush=True)
    text = "\n".join(lines) + "\n"
    publish(text, records, args.out)


if __name__ == "__main__":
    main()
