"""`tinyrm eval`: score a trained model on RewardBench (or any preference file) and write the report.

Evaluation is a separate command that never feeds back into training or selection: the trainer picks
its checkpoint on validation data carved from the training mix, and this runs once, at the end.

Prompt prefix at evaluation: a `prefix = "domain"` model is given, for each RewardBench subset, the
prefix of that subset's domain (Chat and Chat Hard -> chat, Safety -> safety, Reasoning -> reasoning),
as the paper does for its specialists and generalist.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .data import read_pairs
from .recipe import ROOT, shared_dir
from .report import markdown_table, plot_sections, write_json
from .rewardbench import (SUBSET_SECTION, accuracy_by, check_counts, load_rewardbench, score_from_correct)
from .scorer import RewardModel

SECTION_DOMAIN = {"Chat": "chat", "Chat Hard": "chat", "Safety": "safety", "Reasoning": "reasoning"}


def resolve_model(name: str) -> Path:
    """'latest' -> the newest run recorded in runs/LATEST; otherwise a path."""
    if name == "latest":
        latest = ROOT / "runs" / "LATEST"
        if not latest.is_file():
            raise FileNotFoundError("no finished run yet: run `make train` first (runs/LATEST is missing)")
        return ROOT / "runs" / latest.read_text().strip()
    return Path(name)


def correctness(rm: RewardModel, prompts, chosen, rejected, domains):
    """Per pair: correct (strictly better; a tie is wrong) and, for pairwise models, each order's own
    verdict (order a: chosen shown as Choice 0; order b: chosen as Choice 1)."""
    if rm.mode == "pairwise":
        z_ab, z_ba = rm.pairwise_logits(prompts, chosen, rejected, domains)
        avg = (z_ab - z_ba) / 2
        return (avg > 0).float().tolist(), (z_ab > 0).float().tolist(), (z_ba < 0).float().tolist()
    # the domains pick each section's length slope when the model carries a length correction
    r = torch.tensor(rm.score(list(prompts) * 2, list(chosen) + list(rejected), list(domains) * 2))
    n = len(prompts)
    return (r[:n] > r[n:]).float().tolist(), None, None


def evaluate_rewardbench(rm: RewardModel, path: Path, model_name: str, out_json: Path) -> dict:
    t0 = time.time()
    rows = load_rewardbench(path)
    check_counts(rows)
    domains = [SECTION_DOMAIN[SUBSET_SECTION[r["subset"]]] for r in rows]
    correct, a, b = correctness(rm, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
                                [r["rejected"] for r in rows], domains)
    result = score_from_correct([r["subset"] for r in rows], correct, order_a=a, order_b=b)
    seconds = time.time() - t0
    print(markdown_table(result))
    print(f"\n{len(rows)} pairs in {seconds:.1f} s ({len(rows) / seconds:.1f} pairs/s)")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_json(result, out_json, model=model_name, pairs=len(rows), seconds=seconds)
    png = plot_sections(result, out_json.with_suffix(".png"), label=f"tinyrm {Path(model_name).name}")
    print(f"wrote {out_json}" + (f" and {png}" if png else " (matplotlib missing: no chart)"))
    return result


def evaluate_file(rm: RewardModel, path: Path) -> dict:
    """Any preference file: accuracy per domain and per source."""
    pairs, rep = read_pairs(path)
    correct, _, _ = correctness(rm, [p.prompt for p in pairs], [p.chosen for p in pairs],
                                [p.rejected for p in pairs], [p.domain for p in pairs])
    by_domain = accuracy_by([p.domain for p in pairs], correct)
    by_source = accuracy_by([p.source for p in pairs], correct)
    lines = ["| group | accuracy | n |", "|---|---|---|"]
    for title, table in (("domain", by_domain), ("source", by_source)):
        for k, (acc, n) in table.items():
            lines.append(f"| {title}={k} | {acc:.1f} | {n} |")
    print("\n".join(lines))
    return {"domain": by_domain, "source": by_source}


def cli(args) -> int:
    model = resolve_model(args.model)
    rm = RewardModel.load(model, max_tokens=args.batch_tokens, progress=True,
                          dtype=getattr(torch, getattr(args, "dtype", "float32")))
    data = Path(args.data) if args.data else shared_dir() / "data" / "rewardbench" / "filtered.jsonl"
    first = data.open().readline()
    if '"subset"' in first and '"chosen_model"' in first:
        out = Path(args.out) if args.out else (model if model.is_dir() else Path(".")) / "rewardbench.json"
        evaluate_rewardbench(rm, data, str(model), out)
    else:
        evaluate_file(rm, data)
    return 0
