"""A run's training curves: RUN/metrics.jsonl -> RUN/curves.png.

    tinyrm plot runs/default-20261128-1200        # or plot_run(run_dir) from code

Left: the training loss of every step (faint) and its smoothed curve. Right: the validation score (what
picks the best checkpoint), the length-corrected score when the run fitted one, and each domain's
validation accuracy, with chance (0.5) dotted. matplotlib is optional: `pip install 'tinyrm[plot]'`.

metrics.jsonl (train.py) holds a training row per step ("step", "loss", "acc", ...) and a validation row
per validation ("step", "val_score", "val_acc_<domain>", ...). A resumed run appends the steps after its
checkpoint again: the later row of a step replaces the earlier one.
"""
from __future__ import annotations

import math
from pathlib import Path

from .atomic import atomic_path
from .data import decode_json, json_lines
from .errors import DataError, MissingData, TinyrmError

SMOOTH = 0.9                    # weight of the past in the loss's moving average
SIZE_IN, DPI = (12.0, 4.5), 100  # the picture: 1200 x 450 pixels
NOT_DOMAINS = ("val_acc_chosen_",)  # val_acc_* keys that split by length or position, not by domain


def smooth(xs: list[float], beta: float = SMOOTH) -> list[float]:
    """Exponential moving average, debiased as Adam's first moment (s_t / (1 - beta^t)), so the curve
    starts at the first value instead of rising from zero."""
    out, s = [], 0.0
    for t, x in enumerate(xs, 1):
        s = beta * s + (1 - beta) * x
        out.append(s / (1 - beta ** t))
    return out


def read_metrics(path: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """(training rows, validation rows), each keyed by step; the later row of a repeated step wins."""
    if not path.is_file():
        raise MissingData(f"{path}: not found (tinyrm train writes it into the run folder)")
    train, val = {}, {}
    for i, line in json_lines(path):
        row = decode_json(path, i, line)
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise DataError(path, i, "no integer 'step'")
        if "val_score" in row:
            val[row["step"]] = row
        elif "loss" in row:
            train[row["step"]] = row
    if not train and not val:
        raise DataError(path, 1, "no training or validation rows")
    return train, val


def curves(path: Path) -> dict:
    """The series the picture shows: step lists and values, per-domain accuracies by domain name
    (NaN where a validation row lacks that domain)."""
    train, val = read_metrics(path)
    ts, vs = sorted(train), sorted(val)
    loss = [float(train[s]["loss"]) for s in ts]
    domains = sorted({k[len("val_acc_"):] for r in val.values() for k in r
                      if k.startswith("val_acc_") and not k.startswith(NOT_DOMAINS)})
    out = {"train_step": ts, "loss": loss, "loss_smooth": smooth(loss), "val_step": vs,
           "val_score": [float(val[s]["val_score"]) for s in vs],
           "val_acc": {d: [float(val[s].get(f"val_acc_{d}", math.nan)) for s in vs] for d in domains}}
    if any("corrected_val_score" in val[s] for s in vs):
        out["corrected_val_score"] = [float(val[s].get("corrected_val_score", math.nan)) for s in vs]
    return out


def draw(c: dict, title: str = ""):
    """A matplotlib Figure of the curves (no pyplot: nothing global, no display needed)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise TinyrmError("plotting needs matplotlib: pip install 'tinyrm[plot]'") from None
    fig = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(c["train_step"], c["loss"], color="tab:blue", alpha=0.35, linewidth=0.8, label="loss")
    left.plot(c["train_step"], c["loss_smooth"], color="tab:blue", linewidth=2, label=f"smoothed ({SMOOTH})")
    left.axhline(math.log(2), color="grey", linestyle=":", linewidth=1, label="chance (ln 2)")
    left.set(xlabel="step", ylabel="Bradley-Terry loss", title="training")
    right.plot(c["val_step"], c["val_score"], color="black", marker="o", linewidth=2, label="val_score")
    if "corrected_val_score" in c:
        right.plot(c["val_step"], c["corrected_val_score"], color="black", linestyle="--", marker="o",
                   label="val_score, length-corrected")
    for d, ys in c["val_acc"].items():
        right.plot(c["val_step"], ys, marker=".", label=f"val_acc_{d}")
    right.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    right.set(xlabel="step", ylabel="accuracy", title="validation")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_run(run_dir: str | Path) -> Path:
    """Draw RUN/metrics.jsonl into RUN/curves.png (replaced atomically); returns its path."""
    run_dir = Path(run_dir)
    fig = draw(curves(run_dir / "metrics.jsonl"), title=run_dir.name)
    out = run_dir / "curves.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out
