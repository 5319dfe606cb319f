"""The benchmarks' report: Markdown tables, number formatting, the goals (ratio, memory, utilisation)
and whether they are met, the ceiling the measured peak allows, and the training-step summary (medians,
tokens/s, FLOP/s) behind the table rows.
"""
from __future__ import annotations

from flops import Shape, train_flops
from machine import median


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(x: float, digits: int = 1) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


GOAL_SCORING, GOAL_TRAIN, GOAL_MEM, GOAL_UTIL = 3.0, 3.0, 0.5, 0.60


def _goal(ok: bool) -> str:
    return "met" if ok else "**not met**"


def summary_rows(name: str, s: dict | None, t: dict | None, peak: float, mem_label: str) -> list[list[str]]:
    """Table rows for one model: scoring (pairs/s, utilisation), training (tokens/s, memory, utilisation)."""
    rows = []
    if s:
        rs = s["tinyrm"]["pairs_per_s"] / s["ref"]["pairs_per_s"]
        rows.append([name, "scoring (pairs/s)", fmt(s["tinyrm"]["pairs_per_s"], 2), fmt(s["ref"]["pairs_per_s"], 2),
                     f"{rs:.2f}×", f"≥ 3× — {_goal(rs >= GOAL_SCORING)}"])
        ut, ur = s["tinyrm"]["flops_per_s"] / peak, s["ref"]["flops_per_s"] / peak
        rows.append([name, "scoring utilisation (model FLOP/s ÷ matmul peak)", f"{100 * ut:.0f}%", f"{100 * ur:.0f}%",
                     f"{ut / ur:.2f}×", f"≥ 60% — {_goal(ut >= GOAL_UTIL)}"])
    if t:
        rt = t["tinyrm"]["tokens_per_s"] / t["ref"]["tokens_per_s"]
        rows.append([name, "training step (tokens/s)", fmt(t["tinyrm"]["tokens_per_s"]), fmt(t["ref"]["tokens_per_s"]),
                     f"{rt:.2f}×", f"≥ 3× — {_goal(rt >= GOAL_TRAIN)}"])
        mt, mr = t["tinyrm"]["peak_delta_mb"], t["ref"]["peak_delta_mb"]
        rows.append([name, f"training peak memory (MB, {mem_label})", fmt(mt), fmt(mr), f"{mt / mr:.2f}×",
                     f"≤ 0.5× — {_goal(mt <= GOAL_MEM * mr)}"])
        ut, ur = t["tinyrm"]["flops_per_s"] / peak, t["ref"]["flops_per_s"] / peak
        rows.append([name, "training utilisation (needed FLOPs ÷ peak)", f"{100 * ut:.0f}%", f"{100 * ur:.0f}%",
                     f"{ut / ur:.2f}×", "—"])
    return rows


def ceiling_note(name: str, s: dict | None, t: dict | None, peak: float) -> str:
    """What the ratio goals allow at all: at 100% of the matmul peak tinyrm's time is model FLOPs ÷ peak,
    so its speed-up over the reference cannot exceed 1 ÷ (the reference's utilisation)."""
    parts = []
    if s:
        parts.append(f"scoring ≤ {peak / s['ref']['flops_per_s']:.2f}× (reference at "
                     f"{100 * s['ref']['flops_per_s'] / peak:.0f}% of peak)")
    if t:
        parts.append(f"training ≤ {peak / t['ref']['flops_per_s']:.2f}× (reference at "
                     f"{100 * t['ref']['flops_per_s'] / peak:.0f}% of peak, needed FLOPs)")
    return f"- {name} ceiling — the most any implementation could reach at 100% of the measured peak: " + \
        "; ".join(parts) + "."


def training_summary(runs: dict, lengths: list[int], shape: Shape, frozen: int, rank: int, targets) -> dict:
    """runs[side] = list of {"step_s": [...], "peak_delta_mb": x, "first_step_s": y, "trainable": n, ...}."""
    flops = train_flops(shape, lengths, frozen, rank, targets)
    res = {"frozen": frozen, "sequences": len(lengths), "tokens": sum(lengths),
           "padded_tokens": len(lengths) * max(lengths), "flops": flops, "runs": runs}
    for side in ("tinyrm", "ref"):
        t = median(s for r in runs[side] for s in r["step_s"])
        res[side] = {"s": t, "tokens_per_s": sum(lengths) / t, "flops_per_s": flops["needed"] / t,
                     "flops_per_s_convention": flops["convention"] / t,
                     "peak_delta_mb": median(r["peak_delta_mb"] for r in runs[side]),
                     "first_step_s": median(r["first_step_s"] for r in runs[side]),
                     "trainable": runs[side][0]["trainable"]}
    return res
