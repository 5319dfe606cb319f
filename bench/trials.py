"""The decision table of recipe trials: runs' metrics.jsonl -> a Markdown table and a PNG of validation
against training pairs seen.

    .venv/bin/python bench/trials.py runs/t0-base-* runs/t1-aug-* --out bench/results/trials.md

For every run and, when the run validated a weight average (`ema`) with `ema_compare`, for both the
average and the live weights: the checkpoint the selection rule keeps (the best validation score over the
validations, the earlier step on equal scores; its reward form: raw, corrected, or for a run that chose
per domain the share of the correction kept for chat/safety/reasoning) and its figures: the domain mean
with its standard error, the length-balanced score, accuracy where the chosen answer is the longer / the
shorter one, per domain, and per generated probe. A run that fitted the relevance floor after training
(`relevance_floor`) gets one more row, "live + floor": the kept checkpoint scored with the floor, which is
what the shipped reward computes and what the rules from decisions 1.38 on decide by.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PROBES = ("style", "relevance", "shuffle", "neighbour")   # augment.KINDS


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def validations(run: Path) -> list[dict]:
    rows = {}
    for r in metrics(run):
        if "val_score" in r:
            rows[r["step"]] = r                   # a resumed run's later row of a step wins
    return [rows[k] for k in sorted(rows)]


def floored(run: Path) -> dict | None:
    """The run's last `relevance_*` row (train.py writes it once the floor is fitted, for the kept
    checkpoint), without the prefix; None when the run fitted no floor."""
    rows = [r for r in metrics(run) if "relevance_val_score" in r]
    if not rows:
        return None
    r = rows[-1]
    return {**{k[len("relevance_"):]: v for k, v in r.items() if k.startswith("relevance_")}, "step": r["step"]}


def form(row: dict, prefix: str) -> dict:
    """The reward form the selection uses at this validation: {key: value} without prefixes."""
    c, kp = prefix + "corrected_", prefix + "kept_"
    if kp + "val_score" in row:           # a per-domain choice (validation.validate_run): the form it kept
        shares = row.get(prefix + "length_shares", {})
        label = "/".join(f"{shares[d]:g}" for d in ("chat", "safety", "reasoning") if d in shares)
        return {**{k[len(kp):]: v for k, v in row.items() if k.startswith(kp)}, "step": row["step"],
                "form": f"corrected {label}" if any(shares.values()) else "raw"}
    raw = {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and not k.startswith((c, kp))}
    cor = {k[len(c):]: v for k, v in row.items() if k.startswith(c)}
    if cor and cor["val_score"] >= raw["val_score"]:
        return {**cor, "form": "corrected", "step": row["step"]}
    return {**raw, "form": "raw", "step": row["step"]}


def kept(rows: list[dict], prefix: str) -> dict | None:
    best = None
    for r in rows:
        if prefix and prefix + "val_score" not in r:
            continue
        f = form(r, prefix)
        if best is None or f["val_score"] > best["val_score"]:
            best = f
    return best


def _f(x, se=None) -> str:
    if x is None or x != x:
        return "—"
    return f"{x:.3f}" + (f" ± {se:.3f}" if se is not None else "")


def publish(text: str, records: list[dict], out: Path | None) -> None:
    """A measurement's result: the Markdown table printed, and with `out` written there with its figures
    as JSON Lines beside it (out.jsonl)."""
    print(text)
    if out:
        out.write_text(text)
        out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _row(run: str, weights: str, kept_as: str, k: dict) -> str:
    probe = [_f(k.get(f"val_probe_{p}")) for p in PROBES]
    return (f"| {run} | {weights} | {kept_as} | {_f(k['val_score'], k.get('val_domain_mean_se'))} | "
            f"{_f(k.get('val_len_balanced'))} | {_f(k.get('val_acc_chosen_longer'))} | "
            f"{_f(k.get('val_acc_chosen_shorter'))} | "
            + " | ".join(_f(k.get(f"val_acc_{d}")) for d in ("chat", "safety", "reasoning"))
            + " | " + " | ".join(probe) + " |")


def table(runs: list[Path]) -> tuple[str, list[tuple[str, list[tuple[int, float]]]]]:
    head = ("| run | weights | kept | domain mean ± se | length-balanced | chosen longer | chosen shorter | "
            "chat | safety | reasoning | " + " | ".join(f"probe {p}" for p in PROBES) + " |")
    lines, curves, paired = [head, "|" + "---|" * (10 + len(PROBES))], [], []
    for run in runs:
        rows = validations(run)
        batch = json.loads((run / "config.json").read_text())["batch_pairs"]
        for name, prefix in (("average", ""), ("live", "live_")) if any("live_val_score" in r for r in rows) \
                else (("live", ""),):
            k = kept(rows, prefix)
            if k is None:
                continue
            lines.append(_row(run.name, name, f"step {k['step']}, {k['form']}", k))
            curves.append((f"{run.name} ({name})", [(r["step"] * batch, form(r, prefix)["val_score"])
                                                     for r in rows if prefix + "val_score" in r]))
        f = floored(run)
        if f is not None:
            lines.append(_row(run.name, "live + floor", f"step {f['step']}, as kept", f))
        paired += [(run.name, r["step"], form(r, "")["val_score"] - form(r, "live_")["val_score"])
                   for r in rows if "live_val_score" in r and r["step"] > 0]
    if paired:
        lines += ["", "| run | step | average − live (selection score) |", "|---|---:|---:|"]
        lines += [f"| {n} | {s} | {d:+.4f} |" for n, s, d in paired]
        lines += [f"| mean | | {sum(d for *_, d in paired) / len(paired):+.4f} |"]
    return "\n".join(lines) + "\n", curves


def plot(curves, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for label, pts in curves:
        ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o", label=label)
    ax.axhline(0.5, ls=":", c="grey")
    ax.set_xlabel("training pairs seen (steps × batch)")
    ax.set_ylabel("validation domain mean (selected reward form)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="write the table here (and the PNG beside it)")
    args = ap.parse_args()
    text, curves = table(args.runs)
    print(text)
    if args.out:
        args.out.write_text(text)
        plot(curves, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
