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


# the goal column of rows measured in bf16: the goals above are float32 goals, never claimed in bf16
NO_GOAL_BF16 = "— (bf16; goals are float32)"


def scoring_rows(name: str, tin: dict, ref: dict, peak: float | None, label: str = "scoring", ref_note: str = "",
                 peak_label: str = "matmul peak", no_goal: str | None = None) -> list[list[str]]:
    """Pairs/s and (with `peak`) utilisation rows, tinyrm side `tin` against reference side `ref` (dicts
    with pairs_per_s, flops_per_s). no_goal=None: judged against the float32 goals; else that text."""
    rs = tin["pairs_per_s"] / ref["pairs_per_s"]
    rows = [[name, f"{label} (pairs/s{ref_note})", fmt(tin["pairs_per_s"], 2), fmt(ref["pairs_per_s"], 2), f"{rs:.2f}×",
             no_goal or f"≥ 3× — {_goal(rs >= GOAL_SCORING)}"]]
    if peak:
        ut, ur = tin["flops_per_s"] / peak, ref["flops_per_s"] / peak
        rows.append([name, f"{label} utilisation (model FLOP/s ÷ {peak_label})", f"{100 * ut:.0f}%",
                     f"{100 * ur:.0f}%", f"{ut / ur:.2f}×", no_goal or f"≥ 60% — {_goal(ut >= GOAL_UTIL)}"])
    return rows


def preference_agreement(p, q) -> dict:
    """Two runs' P(a beats b) on the same pairs: how many pairs prefer the same answer (P > 0.5 on both or
    on neither), the largest |p − q|, and how many pairs sit exactly at 0.5 in either run (ties)."""
    p, q = [float(x) for x in p], [float(x) for x in q]
    if len(p) != len(q) or not p:
        raise ValueError(f"need two equally long, non-empty lists of probabilities ({len(p)} vs {len(q)})")
    agree = sum((x > 0.5) == (y > 0.5) for x, y in zip(p, q))
    return {"pairs": len(p), "agree": agree, "fraction": agree / len(p),
            "max_abs_diff": max(abs(x - y) for x, y in zip(p, q)),
            "ties": sum(x == 0.5 or y == 0.5 for x, y in zip(p, q))}   # no preference in one run: agreement is weak there


def _agreement_cell(a: dict) -> str:
    ties = f"; {a['ties']} at P = 0.5" if a.get("ties") else ""
    return f"{a['agree']}/{a['pairs']} ({100 * a['fraction']:.0f}%{ties}), {a['max_abs_diff']:.1e}"


def bf16_rows(name: str, s16: dict, s32: dict, peak16: float) -> list[list[str]]:
    """Rows for bf16 scoring (`s16`: bench_scoring in bf16 with "agreement" {side: preference_agreement
    against that side's float32 run}) next to the float32 scoring `s32` of the same pairs: tinyrm bf16 vs
    transformers bf16 (pairs/s, utilisation of the bf16 peak), tinyrm bf16 vs the float32 reference, and
    bf16-vs-float32 agreement of each side. None claims a goal."""
    rows = scoring_rows(name, s16["tinyrm"], s16["ref"], peak16, "bf16 scoring", "; reference in bf16",
                        "bf16 matmul peak", NO_GOAL_BF16)
    rows += scoring_rows(name, s16["tinyrm"], s32["ref"], None, "bf16 scoring",
                         "; reference in float32, as above", no_goal=NO_GOAL_BF16)
    ag = s16["agreement"]
    rows.append([name, "bf16 vs float32 preference (P > 0.5) agreement, max \\|ΔP\\| (each side, same pairs)",
                 _agreement_cell(ag["tinyrm"]), _agreement_cell(ag["ref"]), "—", NO_GOAL_BF16])
    return rows


def summary_rows(name: str, s: dict | None, t: dict | None, peak: float, mem_label: str) -> list[list[str]]:
    """Table rows for one model: scoring (pairs/s, utilisation), training (tokens/s, memory, utilisation)."""
    rows = []
    if s:
        rows += scoring_rows(name, s["tinyrm"], s["ref"], peak)
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


def ceiling_note(name: str, s: dict | None, t: dict | None, peak: float, peak_label: str = "measured peak") -> str:
    """What the ratio goals allow at all: at 100% of the matmul peak tinyrm's time is model FLOPs ÷ peak,
    so its speed-up over the reference cannot exceed 1 ÷ (the reference's utilisation)."""
    parts = []
    if s:
        parts.append(f"scoring ≤ {peak / s['ref']['flops_per_s']:.2f}× (reference at "
                     f"{100 * s['ref']['flops_per_s'] / peak:.0f}% of peak)")
    if t:
        parts.append(f"training ≤ {peak / t['ref']['flops_per_s']:.2f}× (reference at "
                     f"{100 * t['ref']['flops_per_s'] / peak:.0f}% of peak, needed FLOPs)")
    return f"- {name} ceiling — the most any implementation could reach at 100% of the {peak_label}: " + \
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
