"""`tinyrm eval`: score a trained model on RewardBench (or any preference file) and write the report.

Evaluation is a separate command that never feeds back into training or selection: the trainer picks
its checkpoint on validation data carved from the training mix, and this runs once, at the end.

Prompt prefix at evaluation: a `prefix = "domain"` model is given, for each RewardBench subset, the
prefix of that subset's domain (Chat and Chat Hard -> chat, Safety -> safety, Reasoning -> reasoning),
as the paper does for its specialists and generalist.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import tokenizers
import torch

from . import __version__, distributed as dp
from .atomic import atomic_write
from .data import decode_json, json_lines, read_pairs
from .errors import MissingData, TinyrmError
from .paths import REWARDBENCH, data_root
from .recipe import check_files
from .report import markdown_table, plot_sections, write_json
from .rewardbench import SUBSET_SECTION, accuracy_by, check_counts, load_rewardbench, score_from_correct
from .scorer import RewardModel, pair_logit, pick_device

SECTION_DOMAIN = {"Chat": "chat", "Chat Hard": "chat", "Safety": "safety", "Reasoning": "reasoning"}


def resolve_model(name: str) -> Path:
    """'latest' -> the newest run recorded in runs/LATEST; otherwise a path."""
    if name == "latest":
        latest = Path("runs") / "LATEST"
        if not latest.is_file():
            raise MissingData(f"{latest}: no finished run yet; run `make train` (or `tinyrm train`) first")
        return Path("runs") / latest.read_text().strip()
    return Path(name)


def verdicts(first: torch.Tensor, second: torch.Tensor, mode: str):
    """From the model's outputs for (chosen, rejected) pairs: per pair, correct (strictly better; a tie is
    wrong) and, for pairwise models, each order's own verdict (a: chosen shown as Choice 0; b: as Choice 1)."""
    correct = (pair_logit(first, second, mode) > 0).float().tolist()
    if mode == "pairwise":
        return correct, (first > 0).float().tolist(), (second < 0).float().tolist()
    return correct, None, None


def correctness(rm: RewardModel, prompts, chosen, rejected, domains):
    """verdicts() of the model on these pairs; the domains pick each section's prefix, or its length slope
    when the model carries a length correction."""
    return verdicts(*rm.compare_outputs(prompts, chosen, rejected, list(domains)), rm.mode)


def write_rows(path: Path, rows: list[dict], first: list[float], second: list[float], correct, mode: str) -> None:
    """Per-pair scores as reward-bench writes them: pointwise `scores_chosen` / `scores_rejected`; pairwise
    the log-odds that the chosen response wins with it shown first and second, and their mean."""
    out = []
    for r, f, s, c in zip(rows, first, second, correct):
        scores = ({"scores_chosen": f, "scores_rejected": s} if mode == "pointwise" else
                  {"logit_chosen_first": f, "logit_chosen_second": -s, "logit": (f - s) / 2})
        out.append(json.dumps({"id": r["id"], "subset": r["subset"], **scores, "correct": c}) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(out))


def evaluate_rewardbench(rm: RewardModel, path: Path, model_name: str, out_json: Path,
                         extra: dict | None = None, rows_out: Path | None = None) -> dict:
    """Score the filtered split and write the JSON (+ chart). Under a launcher every rank scores its
    shard of the rows (rows[rank::world]), the verdicts are gathered in input order, and rank 0 alone
    prints and writes; every rank returns the same result."""
    t0 = time.time()
    rows = load_rewardbench(path)
    check_counts(rows)
    mine = dp.shard(rows)
    domains = [SECTION_DOMAIN[SUBSET_SECTION[r["subset"]]] for r in mine]
    first, second = rm.compare_outputs([r["prompt"] for r in mine], [r["chosen"] for r in mine],
                                       [r["rejected"] for r in mine], domains)
    local = (*verdicts(first, second, rm.mode), first.tolist(), second.tolist())
    correct, a, b, first, second = (None if x is None else dp.gather_in_order(x, len(rows)) for x in local)
    result = score_from_correct([r["subset"] for r in rows], correct, order_a=a, order_b=b)
    seconds = time.time() - t0
    if not dp.is_main():
        return result
    print(markdown_table(result))
    print(f"\n{len(rows)} pairs in {seconds:.1f} s ({len(rows) / seconds:.1f} pairs/s)")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_json(result, out_json, model=model_name, pairs=len(rows), seconds=seconds, **(extra or {}))
    if rows_out is not None:
        write_rows(rows_out, rows, first, second, correct, rm.mode)
        print(f"wrote per-pair scores to {rows_out}")
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


def versions(device: torch.device, dtype: str) -> dict:
    """What the result was computed with: device, dtype and library versions (recorded in the JSON)."""
    return {"device": str(device), "dtype": dtype, "tinyrm": __version__, "torch": torch.__version__,
            "tokenizers": tokenizers.__version__}


def is_rewardbench(path: Path) -> bool:
    """Whether a file's first row has RewardBench's fields (else it is read as any preference file)."""
    for lineno, line in json_lines(path):
        row = decode_json(path, lineno, line)
        return isinstance(row, dict) and "subset" in row and "chosen_model" in row
    raise TinyrmError(f"{path}: no rows")


def cli(args) -> int:
    data = Path(args.data) if args.data else data_root() / REWARDBENCH
    check_files([data])
    model = resolve_model(args.model)
    device = dp.init(pick_device(args.device))      # under a launcher: join the group, this rank's GPU
    rm = RewardModel.load(model, device=device, max_tokens=args.batch_tokens, progress=dp.is_main(),
                          dtype=getattr(torch, args.dtype))
    if is_rewardbench(data):
        out = Path(args.out) if args.out else (model if model.is_dir() else Path(".")) / "rewardbench.json"
        evaluate_rewardbench(rm, data, str(model), out, extra=versions(device, args.dtype),
                             rows_out=Path(args.rows) if args.rows else None)
    elif dp.is_main():                               # any other file: scored whole by rank 0
        evaluate_file(rm, data)
    return dp.finished(0)
