"""The RewardBench report: a Markdown table, rewardbench.json, and a PNG chart next to reference points.

Takes the result dict of `tinyrm.rewardbench.score_from_correct` (accuracies in percent). The leaderboard
metric and the paper's own metric are always printed and drawn apart, each labelled, since they differ in
weighting and in sections and their numbers must never be set against each other.
"""
from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_path, atomic_write
from .rewardbench import SECTIONS, paper_metric

SECTION_NAMES = list(SECTIONS)
PAPER_NAMES = ["Chat", "Reasoning", "Safety", "mean"]

# Reference points (percent). The baseline was measured on this machine with transformers+peft; the published
# ones are leaderboard overalls only (their per-section numbers are not drawn: we have no local copy).
BASELINE = ("transformers+peft MiniLM-L6 pointwise (this machine)",
            {"Chat": 74.0, "Chat Hard": 35.3, "Safety": 71.9, "Reasoning": 52.2, "overall": 58.3})
LEADERBOARD_OVERALL = {
    "OpenAssistant DeBERTa-v3-large-v2 (435M)": 61.6,
    "ArmoRM-Llama3-8B": 90.8,
    "Skywork-Reward-Gemma-2-27B": 93.8,
}
# Tick labels for those bars, wrapped by hand so they stay horizontal and readable.
_PUB_TICKS = {"OpenAssistant DeBERTa-v3-large-v2 (435M)": "OpenAssistant\nDeBERTa-v3-\nlarge-v2 (435M)",
              "ArmoRM-Llama3-8B": "ArmoRM-\nLlama3-8B", "Skywork-Reward-Gemma-2-27B": "Skywork-Reward-\nGemma-2-27B"}
# The paper's table, on the paper's metric (Pan 2025, Table of RewardBench results).
PAPER_REPORTED = {
    "TinyRM ModernBERT-large specialists (paper)": {"Chat": 78.8, "Reasoning": 91.2, "Safety": 89.3, "mean": 86.4},
    "TinyRM ModernBERT-base specialists (paper)": {"Chat": 73.5, "Reasoning": 83.3, "Safety": 78.4, "mean": 78.4},
    "Llama3-70B-SteerLM-RM (paper)": {"Chat": 89.7, "Reasoning": 90.6, "Safety": 92.8, "mean": 91.0},
}


def _f(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def _paper(result: dict) -> dict:
    return result.get("paper") or paper_metric(result)


def markdown_table(result: dict) -> str:
    """Leaderboard sections and overall, then subsets with their sizes, then the paper's metric, then the
    pairwise position bias when present."""
    out = ["**RewardBench (leaderboard metric: subset accuracies weighted by official counts, math-prm 984; "
           "overall = mean of the four sections), accuracy %**", "",
           "| section | accuracy |", "|---|---:|"]
    out += [f"| {s} | {_f(result['sections'].get(s))} |" for s in SECTION_NAMES]
    out.append(f"| **overall** | **{_f(result['overall'])}** |")
    if not result.get("complete", True):
        out += ["", f"*Partial run, not leaderboard-comparable: missing {', '.join(result.get('missing', []))}.*"]

    counts = result.get("counts", {})
    out += ["", "| section | subset | n | correct | accuracy |", "|---|---|---:|---:|---:|"]
    for sec, subs in SECTIONS.items():
        for s in subs:
            if s in result["subsets"]:
                nc, n = counts.get(s, (None, None))
                nc_s = "–" if nc is None else (f"{nc:.0f}" if float(nc).is_integer() else f"{nc:.1f}")
                out.append(f"| {sec} | {s} | {n if n is not None else '–'} | {nc_s} | {_f(result['subsets'][s])} |")

    p = _paper(result)
    out += ["", "**Paper's metric (not leaderboard)**: Chat = 0.843·pooled(chat) + 0.157·pooled(chat-hard); "
            "Safety and Reasoning pooled over examples (math-prm at its 447 rows); mean of the three. "
            "Comparable only with the paper's own table.", "",
            "| " + " | ".join(PAPER_NAMES) + " |", "|" + "---:|" * len(PAPER_NAMES),
            "| " + " | ".join(_f(p.get(k)) for k in PAPER_NAMES) + " |"]

    pb = result.get("pairwise")
    if pb:
        out += ["", "**Position bias (pairwise model, one order at a time)**: order a = chosen shown first, "
                "order b = chosen second.", "",
                "| | order a | order b | a − b | consistent | n |", "|---|---:|---:|---:|---:|---:|",
                f"| pooled accuracy | {_f(pb['acc_order_a'])} | {_f(pb['acc_order_b'])} | {_f(pb['difference'])} "
                f"| {_f(pb['consistent'])} | {pb['n']} |"]
        if "overall_order_a" in pb:
            diff = (None if pb["overall_order_a"] is None or pb["overall_order_b"] is None
                    else pb["overall_order_a"] - pb["overall_order_b"])
            out.append(f"| leaderboard overall | {_f(pb['overall_order_a'])} | {_f(pb['overall_order_b'])} "
                       f"| {_f(diff)} | | |")
    return "\n".join(out) + "\n"



def write_json(result: dict, path: str | Path, model: str, pairs: int, seconds: float, **extra) -> Path:
    """Write rewardbench.json (path may be the file or a directory to put it in). The leaderboard keys come
    first, then `extra` (e.g. device, dtype, versions), then every extra block of the result (paper, counts,
    pairwise, ...)."""
    path = Path(path)
    if path.is_dir():
        path = path / "rewardbench.json"
    doc = {"overall": result["overall"],
           "sections": {s: result["sections"].get(s) for s in SECTION_NAMES},
           "subsets": result["subsets"], "model": model, "pairs": int(pairs), "seconds": float(seconds), **extra}
    doc["paper"] = _paper(result)
    doc.update({k: v for k, v in result.items() if k not in doc})
    # allow_nan=False: a NaN would make the file invalid JSON for every strict reader.
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    return path


def _bars(ax, groups, series, colors, width=0.8):
    """Grouped bars: series = [(label, {group: value})]; missing values leave a gap. Values printed on top."""
    k = len(series)
    w = width / k
    for j, ((label, vals), c) in enumerate(zip(series, colors)):
        xs = [i - width / 2 + (j + 0.5) * w for i in range(len(groups))]
        ys = [vals.get(g) for g in groups]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        bars = ax.bar([x for x, _ in pts], [y for _, y in pts], w, label=label, color=c)
        for b, (_, y) in zip(bars, pts):
            ax.annotate(f"{y:.1f}", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 1), textcoords="offset points")


def plot_sections(result: dict, path: str | Path, label: str) -> Path | None:
    """PNG: left, our leaderboard sections + overall beside the local baseline and published overalls; right,
    ours on the paper's metric beside the paper's numbers. Returns None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas by default
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        return None
    path = Path(path)
    fig = Figure(figsize=(15, 6.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.45, 1])

    groups = SECTION_NAMES + ["overall"]
    ours = {**result["sections"], "overall": result["overall"]}
    _bars(ax1, groups, [(f"{label} (ours)", ours), BASELINE], ["#1f77b4", "#ff7f0e"], width=0.7)
    # Published models: overall only, so they get their own bars past a gap, hatched to set them apart.
    x0 = len(groups) + 0.4
    pub_x = [x0 + i * 0.95 for i in range(len(LEADERBOARD_OVERALL))]
    pub_bars = ax1.bar(pub_x, list(LEADERBOARD_OVERALL.values()), 0.6, color="#bbbbbb", hatch="//",
                       edgecolor="#555555", label="published leaderboard overall (no sections drawn)")
    for b, y in zip(pub_bars, LEADERBOARD_OVERALL.values()):
        ax1.annotate(f"{y:.1f}", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=7,
                     xytext=(0, 1), textcoords="offset points")
    ticks = groups + [_PUB_TICKS.get(n, n) for n in LEADERBOARD_OVERALL]
    ax1.set_xticks(list(range(len(groups))) + pub_x, ticks, fontsize=8)
    for t in ax1.get_xticklabels()[len(groups):]:
        t.set_fontsize(7)
    ax1.axvline(len(groups) - 0.5 + 0.2, color="#999999", lw=0.8, ls=":")
    ax1.axhline(50, color="#999999", lw=0.8, ls="--", label="chance (50)")
    title = "RewardBench, leaderboard metric (official weights)"
    if not result.get("complete", True):
        title += "\nPARTIAL RUN: not leaderboard-comparable"
    ax1.set_title(title, fontsize=10)
    ax1.set_ylabel("accuracy %")
    ax1.set_ylim(0, 105)
    # Legends below the axes: inside, they would cover bars whatever the numbers turn out to be.
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)

    paper = _paper(result)
    series = [(f"{label} (ours, paper's metric)", paper)] + list(PAPER_REPORTED.items())
    _bars(ax2, PAPER_NAMES, series, ["#1f77b4", "#2ca02c", "#98df8a", "#9467bd"], width=0.8)
    ax2.set_xticks(range(len(PAPER_NAMES)), PAPER_NAMES, fontsize=8)
    ax2.axhline(50, color="#999999", lw=0.8, ls="--", label="chance (50)")
    ax2.set_title("Paper's own metric (NOT leaderboard): Chat = 0.843·chat + 0.157·chat-hard,\n"
                  "pooled accuracies, no math up-weighting, no Chat Hard column", fontsize=10)
    ax2.set_ylim(0, 105)
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=2, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
