"""The data-scaling curve: validation against the number of unique training pairs, at matched compute.

    .venv/bin/python bench/scaling.py --pairs 720 1440 2880 5760 --steps 360 --runs_dir runs/scaling
    .venv/bin/python bench/scaling.py --pairs 240 480 960 1920 --steps 120 --threads 1   # a smaller budget

Every point is one `tinyrm train --recipe R --train_pairs N --max_steps S --epochs S/ceil(N/batch)` run: the
same S optimiser steps of `batch_pairs` pairs (the same pair-views, the same schedule), drawn from N unique
pairs (recipe field `train_pairs`: a seeded subset of the mix in its proportions). N = S x batch sees every
pair once, N / 2 twice, and so on. Each run validates once, after its last step, on the recipe's validation
pairs and probes. A curve that still rises at its last point says unique data binds at this budget; a flat
one says steps do. A point whose run folder already holds a summary is read, not rerun, so the curve can
be built over several sittings; the table and PNG cover every finished point.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from trials import PROBES, kept, validations

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("chat", "safety", "reasoning")


def epochs_for(steps: int, pairs: int, batch: int) -> float:
    """Epochs over `pairs` unique pairs that plan exactly `steps` optimiser steps of `batch` pairs
    (train.plan_steps: ceil(epochs * ceil(pairs / batch)) steps, then capped by max_steps)."""
    per_epoch = math.ceil(pairs / batch)
    return steps / per_epoch + 0.5 / per_epoch        # half a step above: float rounding cannot lose a step


def finished(runs_dir: Path, name: str) -> Path | None:
    """The newest run folder of this name that wrote its summary, or None."""
    done = sorted(p.parent for p in runs_dir.glob(f"{name}-*/summary.json"))
    return done[-1] if done else None


def run_point(n: int, args) -> Path:
    """Train one point (or find it already trained) -> its run folder."""
    name = f"scale-{n}"
    if (run := finished(args.runs_dir, name)) is not None:
        print(f"{name}: already trained in {run}")
        return run
    epochs = epochs_for(args.steps, n, args.batch_pairs)
    cmd = [sys.executable, "-m", "tinyrm.cli", "train", "--recipe", args.recipe, "--train_pairs", str(n),
           "--epochs", f"{epochs:.6f}", "--max_steps", str(args.steps), "--eval_every", str(args.steps),
           "--save_every", str(args.steps), "--batch_pairs", str(args.batch_pairs), "--name", name,
           "--runs_dir", str(args.runs_dir), "--threads", str(args.threads), *args.extra]
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    run = finished(args.runs_dir, name)
    if run is None:
        raise SystemExit(f"error: {args.runs_dir}: the run {name} wrote no summary.json")
    return run


def point(run: Path) -> dict:
    """One finished run's figures: unique pairs, epochs, steps, its kept validation, tokens/s, wall."""
    summary = json.loads((run / "summary.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    # The validation after the last step, even where a run validated earlier too (the curve compares
    # the same point of every schedule); its reward form is the one that validated better there.
    k = kept([v for v in validations(run) if v["step"] == summary["steps"]], "")
    if k is None:
        raise SystemExit(f"error: {run / 'metrics.jsonl'}: no validation at the last step ({summary['steps']})")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tok = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    views = summary["steps"] * cfg["batch_pairs"]
    return {"run": run.name, "unique_pairs": summary["train_pairs"], "steps": summary["steps"],
            "pair_views": views, "epochs": views / summary["train_pairs"], "form": k["form"],
            "domain_mean": k["val_score"], "domain_mean_se": k.get("val_domain_mean_se"),
            "len_balanced": k.get("val_len_balanced"), "chosen_longer": k.get("val_acc_chosen_longer"),
            "chosen_shorter": k.get("val_acc_chosen_shorter"),
            **{d: k.get(f"val_acc_{d}") for d in DOMAINS}, **{f"probe_{p}": k.get(f"val_probe_{p}") for p in PROBES},
            "tokens_per_s": statistics.median(tok) if tok else None, "seconds": summary["seconds"]}


def _f(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def table(points: list[dict]) -> str:
    head = ["unique pairs", "epochs over them", "steps", "domain mean ± se", "length-balanced", "chosen longer",
            "chosen shorter", *DOMAINS, *(f"probe {p}" for p in PROBES), "tokens/s", "wall (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for p in sorted(points, key=lambda p: p["unique_pairs"]):
        se = f" ± {p['domain_mean_se']:.3f}" if p["domain_mean_se"] is not None else ""
        cells = [f"{p['unique_pairs']:,}", f"{p['epochs']:.2f}", str(p["steps"]), _f(p["domain_mean"]) + se,
                 _f(p["len_balanced"]), _f(p["chosen_longer"]), _f(p["chosen_shorter"]),
                 *(_f(p[d]) for d in DOMAINS), *(_f(p[f"probe_{q}"], 2) for q in PROBES),
                 _f(p["tokens_per_s"], 0), _f(p["seconds"] / 60, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = sorted(points, key=lambda p: p["unique_pairs"])
    x = [p["unique_pairs"] for p in pts]
    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=100)
    ax.errorbar(x, [p["domain_mean"] for p in pts], yerr=[p["domain_mean_se"] or 0 for p in pts], marker="o",
                capsize=3, label="domain mean ± se")
    ax.plot(x, [p["len_balanced"] for p in pts], marker="s", label="length-balanced")
    for d in DOMAINS:
        ax.plot(x, [p[d] for p in pts], ls="--", lw=1, marker=".", label=d)
    ax.axhline(0.5, ls=":", c="grey")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{v:,}" for v in x])
    views = {p["pair_views"] for p in pts}
    ax.set_xlabel(f"unique training pairs (every point: {', '.join(f'{v:,}' for v in sorted(views))} pair-views)")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))   # outside: the lines reach every corner
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, nargs="+", required=True, help="unique training pairs per point")
    ap.add_argument("--steps", type=int, default=360, help="optimiser steps of every point (matched compute)")
    ap.add_argument("--batch_pairs", type=int, default=16)
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs_dir", type=Path, default=ROOT / "runs" / "scaling")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data-scaling",
                    help="results prefix: writes .md, .png and .jsonl")
    ap.add_argument("--report-only", action="store_true", help="tabulate the finished points; train none")
    ap.add_argument("extra", nargs="*", help="after --: more `--key value` recipe overrides for every run")
    args = ap.parse_args()
    runs = []
    for n in args.pairs:
        run = finished(args.runs_dir, f"scale-{n}") if args.report_only else run_point(n, args)
        if run is not None:
            runs.append(run)
    points = [point(r) for r in runs]
    if not points:
        raise SystemExit(f"error: {args.runs_dir}: no finished scale-N runs for --pairs {args.pairs}")
    text = (f"# Validation against unique training pairs, at matched compute\n\n"
            f"Recipe `{args.recipe}`; every run: the same optimiser steps of {args.batch_pairs} pairs, "
            f"validated once at its last step. Made by `bench/scaling.py --pairs "
            f"{' '.join(map(str, args.pairs))} --steps {args.steps}`.\n\n" + table(points))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    plot(points, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
