"""Weight averaging across runs (a model soup, WARM-style): the merged weights of several runs of one base
model, averaged tensor by tensor, validated beside each run on the same held-out pairs and probes.

    .venv/bin/python bench/warm.py runs/default-a runs/default-b --out bench/results/warm.md

Each run's kept checkpoint is merged first (as `tinyrm export --format hf` writes it): two seeds start
their DoRA factors from different random A, so averaging A and B would average unrelated subspaces; the
merged weights W_i = m_i ⊙ (W0 + s·B_i A_i) / ‖·‖ all live in the base model's coordinates, and the soup is
W = mean_i W_i (float64 sums). Fine-tunes of one pretrained model tend to share a basin, which is what
makes this work when it does; the table says whether it does here.

Every model is validated with the first run's recipe: its held-out pairs and its probes (generated with
that run's seed), the raw reward (no length correction). A run's own row therefore repeats its recorded
validation only when its seed is the first run's.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trials import PROBES, _f                          # the decision table's probe kinds and number format

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinyrm.augment import probes as make_probes      # noqa: E402
from tinyrm.export import export_model                # noqa: E402
from tinyrm.mix import load_data                      # noqa: E402
from tinyrm.recipe import load_run_config             # noqa: E402
from tinyrm.validation import validate                # noqa: E402
from tinyrm.weights import load_encoder               # noqa: E402

def average(files: list[Path]) -> dict[str, torch.Tensor]:
    """The mean of each tensor over the files, summed in float64, returned in each tensor's own dtype."""
    states = [load_file(str(f)) for f in files]
    for f, s in zip(files[1:], states[1:]):
        if s.keys() != states[0].keys() or any(s[k].shape != states[0][k].shape for k in s):
            raise SystemExit(f"error: {f}: its tensors differ from {files[0]}'s (not the same base model)")
    return {k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}


def soup(runs: list[Path], work: Path) -> list[tuple[str, Path]]:
    """Export every run merged into `work`, write their average beside them: [(label, folder)]."""
    out = []
    for i, run in enumerate(runs):
        label = run.name if (run / "config.json").is_file() else f"{run.parent.name}/{run.name}"
        out.append((label, export_model(run, work / f"run{i}", "hf")))
    mix = work / "soup"
    mix.mkdir()
    save_file(average([d / "model.safetensors" for _, d in out]), str(mix / "model.safetensors"),
              metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(out[0][1] / name, mix / name)
    return out + [(f"average of {len(runs)}", mix)]


def row(label: str, v: dict) -> str:
    keys = ["val_len_balanced", "val_acc_chosen_longer", "val_acc_chosen_shorter",
            *(f"val_acc_{d}" for d in ("chat", "safety", "reasoning")), *(f"val_probe_{p}" for p in PROBES)]
    return (f"| {label} | {_f(v['val_score'], v['val_domain_mean_se'])} | "
            + " | ".join(_f(v.get(k)) for k in keys) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path,
                    help="run folders of one base model (their best/ is used) or checkpoint folders in them")
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
             "reasoning | " + " | ".join(f"probe {p}" for p in PROBES) + " |", "|---|---|" + "---:|" * 9]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, folder in soup(args.runs, Path(tmp)):
            with torch.no_grad():
                v = validate(load_encoder(folder).eval(), cfg, val, probes=probes)
            lines.append(row(label, v))
            records.append({"model": label, **{k: x for k, x in v.items() if isinstance(x, (int, float))}})
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    main()
