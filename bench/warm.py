"""Averaging across runs: a model soup (WARM-style), the merged weights of several runs of one base model
averaged tensor by tensor, validated beside each run on the same held-out pairs and probes; or, with
`--outputs`, an ensemble of the runs' verdicts.

    .venv/bin/python bench/warm.py runs/default-a runs/default-b --out bench/results/warm.md
    .venv/bin/python bench/warm.py --outputs runs/a runs/b runs/c --out bench/results/ensemble.md

Each run's kept checkpoint is merged first (as `tinyrm export --format hf` writes it): two seeds start
their DoRA factors from different random A, so averaging A and B would average unrelated subspaces; the
merged weights W_i = m_i ⊙ (W0 + s·B_i A_i) / ‖·‖ all live in the base model's coordinates, and the soup is
W = mean_i W_i (float64 sums). Fine-tunes of one pretrained model tend to share a basin, which is what
makes this work when it does; the table says whether it does here.

Every model is validated with the first run's recipe: its held-out pairs and its probes (generated with
that run's seed), the raw reward (no length correction). A run's own row therefore repeats its recorded
validation only when its seed is the first run's.

`--outputs` averages verdicts instead: each run's kept model scores the pairs as the scorer would (its
own prompt, its kept length correction), and an ensemble's log-odds that a beats b is the mean of its
members' (nothing fitted). Every subset of k runs is validated, for k = 1 … n, so the table shows what
averaging more draws buys. The runs must hold out the same pairs (the same files and `val_seed`).
"""
from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trials import PROBES, _f, publish      # the decision tables' probe kinds, number format and output

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinyrm.augment import probes as make_probes      # noqa: E402
from tinyrm.export import export_model                # noqa: E402
from tinyrm.mix import load_data                      # noqa: E402
from tinyrm.recipe import load_run_config             # noqa: E402
from tinyrm.scorer import RewardModel                 # noqa: E402
from tinyrm.validation import metrics, probe_metrics, validate  # noqa: E402
from tinyrm.weights import load_encoder               # noqa: E402

def average(files: list[Path]) -> dict[str, torch.Tensor]:
    """The mean of each tensor over the files, summed in float64, returned in each tensor's own dtype."""
    states = [load_file(str(f)) for f in files]
    for f, s in zip(files[1:], states[1:]):
        if s.keys() != states[0].keys() or any(s[k].shape != states[0][k].shape for k in s):
            raise SystemExit(f"error: {f}: its tensors differ from {files[0]}'s (not the same base model)")
    return {k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}


def _label(run: Path) -> str:
    return run.name if (run / "config.json").is_file() else f"{run.parent.name}/{run.name}"


def soup(runs: list[Path], work: Path) -> list[tuple[str, Path]]:
    """Export every run merged into `work`, write their average beside them: [(label, folder)]."""
    out = []
    for i, run in enumerate(runs):
        out.append((_label(run), export_model(run, work / f"run{i}", "hf")))
    mix = work / "soup"
    mix.mkdir()
    save_file(average([d / "model.safetensors" for _, d in out]), str(mix / "model.safetensors"),
              metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(out[0][1] / name, mix / name)
    return out + [(f"average of {len(runs)}", mix)]


def verdicts(runs: list[Path], rows) -> list[tuple[str, torch.Tensor]]:
    """Each run's kept model on `rows` (PreferencePairs): [(label, z [N])], z the log-odds that the chosen
    answer beats the rejected one, as the scorer gives it."""
    out = []
    for run in runs:
        rm = RewardModel.load(run)
        z = rm.compare_logits([p.prompt for p in rows], [p.chosen for p in rows], [p.rejected for p in rows],
                              [p.domain for p in rows])
        out.append((_label(run), z.double()))
    return out


def ensembles(zs: list[torch.Tensor], val, probes, select: str) -> list[dict]:
    """For k = 1 … n: every subset of k members, its mean log-odds validated -> one summary per k: the
    subsets' count, their domain means (mean, min, max) and the means of their other figures."""
    k_val, out = len(val), []
    for k in range(1, len(zs) + 1):
        ms = []
        for members in itertools.combinations(range(len(zs)), k):
            z = sum(zs[i] for i in members) / k
            ms.append({**metrics(z[:k_val], val, select), **probe_metrics(z[k_val:], probes)})
        keys = [x for x in ms[0] if isinstance(ms[0][x], float)]
        out.append({"k": k, "subsets": len(ms), "min": min(m["val_score"] for m in ms),
                    "max": max(m["val_score"] for m in ms), **{x: sum(m[x] for m in ms) / len(ms) for x in keys}})
    return out


def agreement(zs: list[torch.Tensor]) -> dict:
    """The shares of pairs that every member gets right (z > 0) and that every member gets wrong."""
    right = torch.stack([z > 0 for z in zs])                              # [members, pairs]
    return {"all_right": right.all(0).double().mean().item(), "all_wrong": (~right).all(0).double().mean().item()}


def groups(val) -> dict[str, list[bool]]:
    """Held-out pairs by domain and length side (is the chosen answer the longer one?), then by source file
    (RMB's sources to their first level: rmb/Helpfulness, rmb/Harmlessness)."""
    out = {"all": [True] * len(val)}
    for d in sorted({p.domain or "none" for p in val}):
        for side, longer in (("chosen longer", True), ("chosen shorter", False)):
            out[f"{d}, {side}"] = [(p.domain or "none") == d and (len(p.chosen) > len(p.rejected)) == longer
                                   and len(p.chosen) != len(p.rejected) for p in val]
    top = lambda src: "/".join(src.split("/")[:2])
    for src in sorted({top(p.source) for p in val if p.source}):
        out[src] = [bool(p.source) and top(p.source) == src for p in val]
    return out


def agreement_table(zs: list[torch.Tensor], val) -> tuple[list[str], dict]:
    """agreement() over each group of pairs: Markdown lines and {group: {n, all_right, all_wrong}}."""
    lines = ["| held-out pairs | n | every member right | every member wrong | split |", "|---|---:|---:|---:|---:|"]
    out = {}
    for name, keep in groups(val).items():
        idx = torch.tensor(keep, dtype=torch.bool)
        if not idx.any():
            continue
        a = agreement([z[idx] for z in zs])
        out[name] = {"n": int(idx.sum()), **a}
        lines.append(f"| {name} | {out[name]['n']} | {a['all_right']:.3f} | {a['all_wrong']:.3f} | "
                     f"{1 - a['all_right'] - a['all_wrong']:.3f} |")
    return lines, out


def row(label: str, v: dict) -> str:
    keys = ["val_len_balanced", "val_acc_chosen_longer", "val_acc_chosen_shorter",
            *(f"val_acc_{d}" for d in ("chat", "safety", "reasoning")), *(f"val_probe_{p}" for p in PROBES)]
    return (f"| {label} | {_f(v['val_score'], v['val_domain_mean_se'])} | "
            + " | ".join(_f(v.get(k)) for k in keys) + " |")


def averaged_outputs(runs: list[Path], val, probes, select: str) -> tuple[list[str], list[dict]]:
    """--outputs: each member's row and the whole ensemble's, then the table of k = 1 … n."""
    members = verdicts(runs, list(val) + list(probes))
    k = len(val)
    lines, records = [], []
    for label, z in members + [(f"mean of {len(runs)} verdicts", sum(z for _, z in members) / len(members))]:
        v = {**metrics(z[:k], val, select), **probe_metrics(z[k:], probes)}
        lines.append(row(label, v))
        records.append({"model": label, **v})
    per_k = ensembles([z for _, z in members], val, probes, select)
    lines += ["", "| members | subsets | domain mean: mean (min – max) | length-balanced | chat | safety | reasoning |",
              "|---:|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['k']} | {r['subsets']} | {_f(r['val_score'])} ({_f(r['min'])} – {_f(r['max'])}) | "
              f"{_f(r['val_len_balanced'])} | " + " | ".join(_f(r[f"val_acc_{d}"]) for d in ("chat", "safety", "reasoning"))
              + " |" for r in per_k]
    more, agree = agreement_table([z[:k] for _, z in members], val)
    return lines + [""] + more, records + [{"ensembles": per_k, "agreement": agree}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path,
                    help="run folders of one base model (their best/ is used) or checkpoint folders in them")
    ap.add_argument("--outputs", action="store_true", help="average the runs' verdicts instead of their weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the Markdown table here and the figures as JSONL beside it")
    args = ap.parse_args()
    if len(args.runs) < 2:
        ap.error("give at least two runs to average")
    torch.set_num_threads(args.threads)
    first = args.runs[0]
    cfg = load_run_config(first if (first / "config.json").is_file() else first.parent)
    _, val, _ = load_data(cfg)
    probes = make_probes(val, cfg.probes, cfg.split_seed) if cfg.probes else []
    lines = ["| model | domain mean ± se | length-balanced | chosen longer | chosen shorter | chat | safety | "
             "reasoning | " + " | ".join(f"probe {p}" for p in PROBES) + " |", "|---|---|" + "---:|" * (6 + len(PROBES))]
    records = []
    if args.outputs:
        more, records = averaged_outputs(args.runs, val, probes, cfg.select)
        lines += more
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for label, folder in soup(args.runs, Path(tmp)):
                with torch.no_grad():
                    v = validate(load_encoder(folder).eval(), cfg, val, probes=probes)
                lines.append(row(label, v))
                records.append({"model": label, **{k: x for k, x in v.items() if isinstance(x, (int, float))}})
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    publish(text, records, args.out)


if __name__ == "__main__":
    main()
