"""Memory of `tinyrm score` on a long file: resident memory sampled while it streams N generated rows.

    .venv/bin/python bench/score_memory.py --model runs/LATEST                 # 1,000,000 rows (about 2 h, 2 cores)
    .venv/bin/python bench/score_memory.py --model M --rows 20000 --every 2    # a quick look

The rows are short random-word prompts and responses (seeded): `single` rows {id, prompt, response} for a
pointwise model, `pair` rows {id, prompt, chosen, rejected} for either kind. The tool runs
`python -m tinyrm.cli score --model M --in rows.jsonl.gz --out scored.jsonl.gz` as a child process and
every `--every` seconds reads the child's resident set (VmRSS in /proc) and the rows done (tqdm's count on
its stderr). The claim to check is flat memory: after the model is loaded and the first chunk's buffers
exist, RSS should not grow with the rows read. The report gives the peak, RSS at each tenth of the run,
the growth from the first tenth to the end, and a PNG of RSS against rows (results/score-memory.{md,png},
the samples in .jsonl).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tables import md_table

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "score-memory"
WORDS = ("the a river stone cloud piano garden rocket violet candle mirror forest ladder pepper silver "
         "tiger window bridge copper desert falcon harbor island").split()


def write_rows(path: Path, n: int, kind: str = "single", seed: int = 0) -> Path:
    """n seeded rows of random words (3-12 in a prompt, 2-20 in a response) to a .jsonl.gz file."""
    rng = random.Random(seed)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(n):
            p = " ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + "?"
            r = " ".join(rng.choices(WORDS, k=rng.randint(2, 20))) + "."
            if kind == "single":
                row = {"id": i, "prompt": p, "response": r}
            else:
                row = {"id": i, "prompt": p, "chosen": r, "rejected": " ".join(rng.choices(WORDS, k=6)) + "."}
            f.write(json.dumps(row) + "\n")
    return path


def rss_mb(pid: int) -> float | None:
    """The process's resident set in MB (VmRSS), or None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rows_done(log: Path) -> int:
    """The last row count tqdm wrote ("1234row [") to the child's stderr log; 0 before the first."""
    counts = re.findall(r"(\d+)row \[", log.read_text(errors="replace")) if log.exists() else []
    return int(counts[-1]) if counts else 0


def measure(model: str, src: Path, dst: Path, every: float, threads: int) -> tuple[list[dict], float]:
    """Run `tinyrm score` on src and sample it -> (samples {t, rss_mb, rows}, wall seconds)."""
    log = dst.with_name(dst.name + ".log")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "tinyrm.cli", "score", "--model", model, "--in", str(src), "--out", str(dst)]
    t0, samples = time.time(), []
    with open(log, "w") as err:
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        while child.poll() is None:
            mb = rss_mb(child.pid)
            if mb:                                     # 0 for the moment between fork and exec
                samples.append({"t": round(time.time() - t0, 1), "rss_mb": round(mb, 1), "rows": rows_done(log)})
            time.sleep(every)
    if child.returncode != 0:
        sys.exit(f"tinyrm score failed ({child.returncode}): {log.read_text(errors='replace')[-2000:]}")
    return samples, time.time() - t0


def summarise(samples: list[dict], n_rows: int) -> dict:
    """Peak RSS; at each tenth of the rows the first sample at or past it (rows, RSS); growth in RSS from
    the first tenth's sample to the last sample."""
    tenths = []
    for k in range(1, 11):
        s = next((s for s in samples if s["rows"] * 10 >= k * n_rows), None)
        tenths.append(s if s is not None else (samples[-1] if k == 10 and samples else None))
    first = next((s for s in tenths if s is not None), None)
    return {"rows": n_rows, "samples": len(samples), "peak_mb": max(s["rss_mb"] for s in samples),
            "tenths": tenths,
            "growth_after_first_tenth_mb": None if first is None else round(samples[-1]["rss_mb"] - first["rss_mb"], 1)}


def plot(curves: list[tuple[str, list[dict]]], path: Path, title: str):
    """RSS against rows, one line per (label, samples); returns the matplotlib Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    for label, samples in curves:
        ax.plot([s["rows"] / 1e3 for s in samples], [s["rss_mb"] for s in samples], lw=1, label=label)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    ax.set_xlabel("rows scored (thousands)")
    ax.set_ylabel("resident memory (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def read_samples(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def compare_arg(text: str) -> tuple[str, list[dict]]:
    """--compare LABEL=JSONL -> (label, its samples); a malformed value is argparse's one-line error."""
    label, sep, path = text.partition("=")
    if not sep or not label or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: want LABEL=JSONL with an existing samples file")
    return label, read_samples(Path(path))


def report(summary: dict, wall: float, model: str, threads: int) -> str:
    rows = [[f"{k * 10} %", "-", "-"] if t is None else [f"{k * 10} %", f"{t['rows']:,}", f"{t['rss_mb']:,.0f}"]
            for k, t in enumerate(summary["tenths"], 1)]
    growth = summary["growth_after_first_tenth_mb"]
    return "\n".join([
        f"# `tinyrm score` memory over {summary['rows']:,} rows\n",
        f"Model `{Path(model).name}`, {threads} thread(s); {summary['samples']} samples of the process's resident "
        f"memory; wall {wall / 60:.1f} min, {summary['rows'] / wall:,.0f} rows/s. Made by `bench/score_memory.py`.\n",
        f"- peak resident memory: **{summary['peak_mb']:,.0f} MB**",
        f"- from the first tenth of the rows to the end: {'-' if growth is None else f'{growth:+,.0f} MB'}\n",
        md_table(["tenth", "rows done at the sample", "RSS (MB)"], rows), ""])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--kind", choices=("single", "pair"), default="single")
    ap.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT, help="results prefix: writes .md, .png and .jsonl")
    ap.add_argument("--label", default="this run", help="its line's label when --compare draws others")
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=JSONL", type=compare_arg,
                    help="also draw an earlier run's samples (its .jsonl) in the PNG; repeatable")
    ap.add_argument("--plot-only", type=Path, metavar="JSONL",
                    help="draw these samples (and --compare's) into --out's .png instead of measuring")
    args = ap.parse_args(argv)
    others = args.compare
    title = f"tinyrm score, {args.rows:,} rows: RSS against rows"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        plot([(args.label, read_samples(args.plot_only)), *others], args.out.with_suffix(".png"), title)
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = write_rows(Path(tmp) / "rows.jsonl.gz", args.rows, args.kind)
        samples, wall = measure(args.model, src, Path(tmp) / "scored.jsonl.gz", args.every, args.threads)
        with gzip.open(Path(tmp) / "scored.jsonl.gz", "rt") as f:
            n_out = sum(1 for _ in f)
    if n_out != args.rows:
        sys.exit(f"tinyrm score wrote {n_out} rows for {args.rows}")
    if not samples:
        sys.exit("no memory sample was taken: lower --every")
    s = summarise(samples, args.rows)
    args.out.with_suffix(".jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
    plot([(args.label, samples), *others], args.out.with_suffix(".png"), title)
    text = report(s, wall, args.model, args.threads)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
