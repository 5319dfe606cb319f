"""`make bench`: tinyrm against transformers (+ peft) on this CPU, one Markdown table.

    .venv/bin/python bench/run.py                 # the full run (< 10 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick         # tiny settings, for development (~1 minute)
    .venv/bin/python bench/run.py --no-bf16       # without the bfloat16 scoring rows

For MiniLM-L6 (real weights) and a randomly initialised ModernBERT-base-shaped model it measures
scoring throughput on RewardBench pairs, DoRA training-step throughput and peak memory, and the model
FLOP/s achieved against this machine's measured float32 matmul peak; then scoring again with both sides
in bfloat16 (against the measured bf16 matmul peak, and bf16-vs-float32 preference agreement on the same
pairs; no goal is claimed in bf16). Sides alternate (tinyrm, ref, tinyrm, ref, ...) and medians are
reported; each training repetition runs in a fresh subprocess so one side's allocations never count
against the other. Method and formulas: bench/README.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops as F  # noqa: E402  (the shared bench/*.py; importing inputs also puts the repo root on sys.path)
import inputs as I  # noqa: E402
import machine as M  # noqa: E402
import sides as S  # noqa: E402
import tables as T  # noqa: E402


def bench_scoring(path: Path, arch: str, n_pairs: int, a, dtype=torch.float32, reps=None,
                  mode: str = "pairwise") -> dict:
    """Text in, probabilities out, on both sides (tokenisation timed on both: the same build_pairwise or
    build_pointwise code)."""
    return S.bench_scoring(path, arch, reps or a.reps, a.max_len, a.batch, pairs=I.rewardbench_sample(n_pairs, a.seed),
                           dtype=dtype, mode=mode)


def bench_scoring_bf16(path: Path, arch: str, n_pairs: int, a, s32: dict) -> dict:
    """Both sides in bfloat16 on the float32 run's pairs (the same seeded sample): tinyrm
    load_encoder(dtype=bfloat16) (what `tinyrm eval --dtype bfloat16` loads) vs transformers
    from_pretrained(dtype=bfloat16), the same code as float32 otherwise; plus each side's preference
    agreement with its own float32 run `s32`."""
    s16 = bench_scoring(path, arch, n_pairs, a, torch.bfloat16, a.reps_bf16)
    s16["agreement"] = {side: T.preference_agreement(s16["probs"][side], s32["probs"][side]) for side in ("tinyrm", "ref")}
    return s16


# --------------------------------------------------------------------------- training (subprocess worker)

def train_worker(a) -> dict:
    """One side, one fresh process: build, baseline RSS, warm-up step, timed steps, peak RSS."""
    torch.set_num_threads(a.threads)
    if a.side == "ref":
        S.quiet_transformers()
    torch.manual_seed(0)
    targets = S.MINILM_TARGETS if a.arch == "bert" else S.MODERNBERT_TARGETS
    if a.side == "tinyrm":
        tr = S.TinyrmTrainer(a.path, a.rank, a.alpha, targets, a.frozen)
    else:
        tr = S.RefTrainer(a.path, a.arch, a.rank, a.alpha, targets, a.frozen)
    from tinyrm.tokens import load_tokenizer
    batch = I.train_sample(load_tokenizer(Path(a.path)), tr.sp, a.pairs, a.max_len, a.seed)
    lengths = [len(e) for e, _ in batch]
    gc.collect()
    base = M.rss_mb()
    exact = M.reset_peak_rss()
    t = time.perf_counter()
    losses = [tr.step(batch)]
    first = time.perf_counter() - t
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        losses.append(tr.step(batch))
        times.append(time.perf_counter() - t)
    peak = M.peak_rss_mb()
    return {"side": a.side, "lengths": lengths, "tokens": sum(lengths), "padded_tokens": len(lengths) * max(lengths),
            "first_step_s": first, "step_s": times, "rss_base_mb": base, "rss_peak_mb": peak,
            "peak_delta_mb": peak - base, "peak_exact": exact, "trainable": tr.trainable(), "losses": losses}


def run_worker(path: Path, arch: str, side: str, a, frozen: int, n_pairs: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--side", side, "--path", str(path), "--arch", arch,
           "--pairs", str(n_pairs), "--max-len", str(a.train_max_len), "--rank", str(a.rank),
           "--alpha", str(a.alpha), "--frozen", str(frozen), "--steps", str(a.train_steps),
           "--threads", str(a.threads), "--seed", str(a.seed)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"training worker {side} failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_training(path: Path, arch: str, a, frozen: int, cfg, n_pairs: int) -> dict:
    runs = {"tinyrm": [], "ref": []}
    for _ in range(a.train_reps):
        for side in ("tinyrm", "ref"):
            runs[side].append(run_worker(path, arch, side, a, frozen, n_pairs))
    targets = S.MINILM_TARGETS if arch == "bert" else S.MODERNBERT_TARGETS
    return T.training_summary(runs, runs["tinyrm"][0]["lengths"], F.Shape.of(cfg), frozen, a.rank, targets)


# --------------------------------------------------------------------------- the report

def report(info, peak, results, a, wall) -> str:
    peak16 = max(a.peaks_bf16) if a.peaks_bf16 else None
    rows = [row for name, r in results.items()
            for row in T.summary_rows(name, r.get("scoring"), r.get("training"), peak, "RSS rise")
            + (T.scoring_rows(name, r["scoring_pointwise"]["tinyrm"], r["scoring_pointwise"]["ref"], peak,
                              "pointwise scoring") if r.get("scoring_pointwise") else [])
            + (T.bf16_rows(name, r["scoring_bf16"], r["scoring"], peak16) if r.get("scoring_bf16") else [])]
    table = T.md_table(["model", "measure", "tinyrm", "reference", "tinyrm / ref", "goal"], rows)
    lines = ["# tinyrm vs transformers (+ peft) on CPU", "",
             f"Machine: {info['cpu']}, {info['usable_cores']} usable cores ({info['logical_cores']} logical); "
             f"torch {info['torch']}, {info['threads']} threads; transformers {info.get('transformers', '?')}, "
             f"peft {info.get('peft', '?')}. Other processes kept {info['other_load_cores']:.2f} cores busy on "
             f"average during the run (from /proc/stat; 1-min load average at start "
             f"{info.get('load_avg_1m', float('nan')):.2f}): figures taken on a shared machine are noisy.",
             f"Measured float32 matmul peak ({a.mm_n}×{a.mm_n} torch.mm, best of several, measured {len(a.peaks)} times "
             f"during the run): **{peak / 1e9:.0f} GFLOP/s** (all: {', '.join(f'{p / 1e9:.0f}' for p in a.peaks)})."]
    if peak16:
        lines.append(f"Measured bfloat16 matmul peak (the same torch.mm on bf16 tensors, measured {len(a.peaks_bf16)} "
                     f"times): **{peak16 / 1e9:.0f} GFLOP/s** (all: {', '.join(f'{p / 1e9:.0f}' for p in a.peaks_bf16)}), "
                     f"{peak16 / peak:.1f}× the float32 peak; the bf16 rows' utilisation is against this peak.")
    lines.append("")
    if info["other_load_cores"] > 0.2:
        lines += [f"**Warning: other processes used {info['other_load_cores']:.2f} of the "
                  f"{info['usable_cores']} cores during this run; with 2 threads every parallel op then waits for "
                  "the scheduler, so these figures (and the peak) are not representative. Re-run on an idle "
                  "machine.**", ""]
    lines += [table, ""]
    for name, r in results.items():
        s, t = r.get("scoring"), r.get("training")
        if s:
            lines.append(f"- {name} scoring: {s['pairs']} seeded RewardBench pairs × both orders = {s['sequences']} "
                         f"sequences, {s['tokens']:,} tokens (mean {s['mean_len']:.0f}, max {s['max_len']}, max_len "
                         f"{a.max_len}); reference padded to {s['padded_tokens']:,} tokens (batches of {a.batch} "
                         f"in dataset order, unsorted); text in, probabilities out on both sides (tokenisation included, the same "
                         f"build_pairwise code); {a.reps} alternated reps, medians {s['tinyrm']['s']:.2f} s "
                         f"vs {s['ref']['s']:.2f} s; model {s['flops'] / 1e12:.2f} TFLOP per rep; max |P_tinyrm − "
                         f"P_ref| = {s['max_abs_prob_diff']:.1e}.")
        sp = r.get("scoring_pointwise")
        if sp:
            lines.append(f"- {name} pointwise scoring (the default recipe's mode: one sequence per response, "
                         f"`RewardModel.compare` on a pointwise model vs the same padded transformers code on "
                         f"build_pointwise examples): the same {sp['pairs']} pairs = {sp['sequences']} sequences, "
                         f"{sp['tokens']:,} tokens (mean {sp['mean_len']:.0f}); reference padded to "
                         f"{sp['padded_tokens']:,}; medians {sp['tinyrm']['s']:.2f} s vs {sp['ref']['s']:.2f} s; "
                         f"max |P_tinyrm − P_ref| = {sp['max_abs_prob_diff']:.1e}.")
        if t:
            lines.append(f"- {name} training: one step = {t['sequences']} sequences ({t['sequences'] // 2} "
                         f"UltraFeedback pairs × both orders), {t['tokens']:,} real tokens (ref padded: "
                         f"{t['padded_tokens']:,}); DoRA r={a.rank} α={a.alpha:g}, embeddings + {t['frozen']} "
                         f"layers frozen, trainable params {t['tinyrm']['trainable']:,} (tinyrm) / "
                         f"{t['ref']['trainable']:,} (peft); medians {t['tinyrm']['s']:.2f} s vs {t['ref']['s']:.2f} s "
                         f"per step ({a.train_reps} alternated fresh processes × {a.train_steps} timed step after a "
                         f"warm-up step); needed {t['flops']['needed'] / 1e12:.2f} TFLOP per step "
                         f"(6N convention {t['flops']['convention'] / 1e12:.2f}: utilisation "
                         f"{100 * t['tinyrm']['flops_per_s_convention'] / peak:.0f}% vs "
                         f"{100 * t['ref']['flops_per_s_convention'] / peak:.0f}%).")
        b = r.get("scoring_bf16")
        if b:
            ag = b["agreement"]
            lines.append(f"- {name} scoring in bf16: the same {b['pairs']} pairs, text in, probabilities out; tinyrm "
                         f"`load_encoder(path, dtype=torch.bfloat16)` (as `tinyrm eval --dtype bfloat16`), reference "
                         f"`from_pretrained(..., dtype=torch.bfloat16)` with the same SDPA padded code; "
                         f"{a.reps_bf16} alternated reps, medians {b['tinyrm']['s']:.2f} s vs {b['ref']['s']:.2f} s; "
                         f"max |P_tinyrm − P_ref| (both bf16) = {b['max_abs_prob_diff']:.1e}. The \"reference in "
                         f"float32\" row divides by the float32 reference's median from the float32 rows "
                         f"(the default a transformers user gets; measured earlier in this run, not alternated with "
                         f"the bf16 tinyrm). Agreement = pairs whose preference (P > 0.5) is the same in bf16 as in "
                         f"float32 on the same side: tinyrm {ag['tinyrm']['agree']}/{ag['tinyrm']['pairs']}, max "
                         f"|P_bf16 − P_fp32| = {ag['tinyrm']['max_abs_diff']:.1e}; transformers "
                         f"{ag['ref']['agree']}/{ag['ref']['pairs']}, {ag['ref']['max_abs_diff']:.1e} (a pair at exactly "
                         f"P = 0.5, no preference, counts as \"not a\"; the table says how many there are).")
    lines += [T.ceiling_note(name, r.get("scoring"), r.get("training"), peak) for name, r in results.items()]
    lines += [T.ceiling_note(f"{name} bf16", r["scoring_bf16"], None, peak16, "measured bf16 peak")
              for name, r in results.items() if r.get("scoring_bf16")]
    lines += ["",
              "Reference = the obvious transformers code: `attn_implementation=\"sdpa\"`, padded batches, the full "
              "MLM head over every position, then the [MASK] row's two answer logits; training adds peft "
              "`LoraConfig(use_dora=True)` on the same targets with the same layers frozen, dropout off on both "
              "sides. MiniLM-L6 has no MLM head: tinyrm builds one (identity transform, tied decoder) and the "
              "same values are copied into transformers' randomly initialised head for scoring (so the "
              "probabilities can be compared); for training the reference's head stays random (timing only). "
              "ModernBERT-base is random-init (transformers' init), vocab 50368, max_len 512 to keep time down. "
              "Memory = the training process's peak RSS (VmHWM, reset after the model, adapters, optimiser and "
              "batch exist) minus its RSS at that point: activations, gradients, optimiser state and temporaries "
              "of a warm-up step plus the timed steps. Throughput counts real (unpadded) tokens for both sides."
              + (" The goals are float32 goals: the bf16 rows claim none. The random ModernBERT's probabilities sit "
                 "close to 0.5, so its bf16 agreement measures rounding at near-ties, not ranking quality."
                 if peak16 else ""),
              "", f"Wall time of this run: {wall:.0f} s.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings for development")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="minilm,modernbert")
    p.add_argument("--parts", default="scoring,training")
    p.add_argument("--pairs-minilm", type=int, default=32)
    p.add_argument("--pairs-modernbert", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the bfloat16 scoring rows")
    p.add_argument("--reps-bf16", type=int, default=3, help="alternated reps of the bf16 scoring")
    p.add_argument("--no-pointwise", dest="pointwise", action="store_false",
                   help="skip MiniLM's pointwise scoring rows (the default recipe's mode)")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train-pairs", type=int, default=8, help="MiniLM pairs per step (x2 orders = sequences)")
    p.add_argument("--train-pairs-modernbert", type=int, default=4)
    p.add_argument("--train-max-len", type=int, default=384)
    p.add_argument("--train-reps", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=1)
    p.add_argument("--frozen-minilm", type=int, default=2)
    p.add_argument("--frozen-modernbert", type=int, default=7)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--mm-n", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default bench/results/cpu.md (--quick: a temp file)")
    p.add_argument("--json", default=None, help="raw results (default bench/results/cpu.json; --quick: none)")
    p.add_argument("--write-lengths", action="store_true",
                   help=f"only write {I.LENGTHS_FILE.relative_to(I.ROOT)} (token lengths bench/gpu.py uses without ../shared)")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--arch", help=argparse.SUPPRESS)
    p.add_argument("--pairs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--frozen", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.pairs_minilm, a.pairs_modernbert, a.reps, a.reps_bf16, a.max_len = 4, 2, 1, 1, 128
        a.train_pairs, a.train_pairs_modernbert, a.train_max_len, a.train_reps, a.mm_n = 2, 2, 128, 1, 512
        a.frozen_modernbert = 2
        a.modernbert_shape = "modernbert-tiny"
        a.out = a.out or str(Path(tempfile.gettempdir()) / "tinyrm-bench-quick.md")
    else:
        a.out = a.out or str(I.ROOT / "bench" / "results" / "cpu.md")
        a.json = a.json or str(I.ROOT / "bench" / "results" / "cpu.json")
        a.modernbert_shape = "modernbert-base"
    return a


def main(argv=None) -> int:
    a = parse(argv)
    if a.worker:
        a.path = Path(a.path)
        a.max_len = a.max_len
        print(json.dumps(train_worker(a)))
        return 0
    if a.write_lengths:
        d = I.write_lengths()
        print(f"wrote {I.LENGTHS_FILE}: {len(d['rewardbench_pair_lengths'])} RewardBench and "
              f"{len(d['train_pair_lengths'])} training pair lengths")
        return 0
    t0 = time.time()
    load = M.OtherLoad()
    torch.set_num_threads(a.threads)
    S.quiet_transformers()
    info = M.machine_info()
    a.peaks = [M.matmul_peak(n=a.mm_n)]
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    parts = {x.strip() for x in a.parts.split(",")}
    a.peaks_bf16 = [M.matmul_peak(dtype=torch.bfloat16, n=a.mm_n)] if a.bf16 and "scoring" in parts else []
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tinyrm-bench-") as tmp:
        for m in models:
            if m == "minilm":
                name, path, arch, frozen = "MiniLM-L6", I.minilm_path(), "bert", a.frozen_minilm
            elif m == "modernbert":
                name, arch, frozen = a.modernbert_shape.replace("modernbert", "ModernBERT") + " (random)", "modernbert", a.frozen_modernbert
                print(f"[{time.time() - t0:5.0f}s] building {a.modernbert_shape} ...", flush=True)
                path = I.write_modernbert(Path(tmp) / "modernbert", I.minilm_path() / "tokenizer.json", a.modernbert_shape)
            else:
                raise SystemExit(f"unknown model {m!r}")
            from tinyrm.config import config_from_hf
            cfg = config_from_hf(path / "config.json")
            frozen = min(frozen, cfg.num_layers - 1)  # at least one layer trains
            results[name] = {}
            if "scoring" in parts:
                print(f"[{time.time() - t0:5.0f}s] {name}: scoring ...", flush=True)
                n_score = a.pairs_minilm if arch == "bert" else a.pairs_modernbert
                results[name]["scoring"] = bench_scoring(path, arch, n_score, a)
                a.peaks.append(M.matmul_peak(n=a.mm_n))
                if a.pointwise and arch == "bert":  # the default recipe (MiniLM) scores pointwise
                    print(f"[{time.time() - t0:5.0f}s] {name}: pointwise scoring ...", flush=True)
                    results[name]["scoring_pointwise"] = bench_scoring(path, arch, n_score, a, mode="pointwise")
                    a.peaks.append(M.matmul_peak(n=a.mm_n))
                if a.bf16:
                    print(f"[{time.time() - t0:5.0f}s] {name}: scoring in bf16 ...", flush=True)
                    results[name]["scoring_bf16"] = bench_scoring_bf16(path, arch, n_score, a, results[name]["scoring"])
                    a.peaks_bf16.append(M.matmul_peak(dtype=torch.bfloat16, n=a.mm_n))
            if "training" in parts:
                print(f"[{time.time() - t0:5.0f}s] {name}: training ...", flush=True)
                results[name]["training"] = bench_training(
                    path, arch, a, frozen, cfg, a.train_pairs if arch == "bert" else a.train_pairs_modernbert)
                a.peaks.append(M.matmul_peak(n=a.mm_n))
    peak = max(a.peaks)
    wall = time.time() - t0
    info["other_load_cores"] = load.cores()
    text = report(info, peak, results, a, wall)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": info, "peak": peak, "peaks": a.peaks,
                                            "peaks_bf16": a.peaks_bf16, "results": results},
                                           indent=1, default=str))
    print(f"wrote {out}; wall time {wall:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
