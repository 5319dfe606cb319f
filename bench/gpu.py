"""tinyrm against transformers (SDPA) and transformers + peft (DoRA) on a GPU: ModernBERT-large shape, bf16.

    python bench/gpu.py                          # on the GPU machine (bench/gpu.sh runs this)
    python bench/gpu.py --device cpu --tiny      # a CPU smoke run of the same code (tests/test_bench.py)

Measures, like bench/run.py on CPU (shared code: bench/machine.py, flops.py, inputs.py, sides.py and
tables.py):
  * scoring throughput (pairs/s): pre-tokenised pairwise cloze inputs (both orders), tinyrm's RewardModel
    (length-sorted token-budget batches, packed, head at the mask) against transformers'
    ModernBertForMaskedLM with SDPA, padded batches in dataset order, full MLM logits, bf16 weights;
  * training step throughput (tokens/s) and peak memory: DoRA on the same targets, the same bottom layers
    frozen, fp32 master weights under bf16 autocast on both sides, AdamW;
  * utilisation: model FLOP/s ÷ the measured bf16 matmul peak (8192² torch.mm, best of several).
Inputs are RewardBench / UltraFeedback token sequences when the data root (tinyrm/paths.py, or ./shared/data) is
present, else random ids with the token lengths recorded in bench/results/lengths.json (the timing
depends only on the lengths). Writes bench/results/gpu.md (and --json).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops as F  # noqa: E402
import inputs as I  # noqa: E402  (also puts the repo root on sys.path)
import machine as M  # noqa: E402
import sides as S  # noqa: E402
import tables as T  # noqa: E402


def log(t0, msg):
    print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)


def pair_lengths(kind: str, n: int, seed: int, max_len: int) -> tuple[list[int], str]:
    """Recorded lengths (bench/results/lengths.json), else a seeded uniform fallback."""
    import random
    g = random.Random(seed)
    if I.LENGTHS_FILE.is_file():
        d = json.loads(I.LENGTHS_FILE.read_text())
        pool = d[f"{kind}_pair_lengths"]
        return [min(max_len, x) for x in g.sample(pool, min(n, len(pool)))], f"lengths recorded in {I.LENGTHS_FILE.name}"
    return [g.randint(64, max_len) for _ in range(n)], "uniform random lengths (no lengths.json)"


def scoring_inputs(tok, sp, a):
    """(pre-tokenised examples with both orders adjacent, description)."""
    from tinyrm.prompts import DOMAIN_PREFIX
    rb = I.find_data(I.REWARDBENCH)
    if rb is not None and a.real_tokenizer and not a.synthetic:
        pairs = I.rewardbench_sample(a.pairs, a.seed, rb)
        return I.build_pair_examples(tok, sp, pairs, DOMAIN_PREFIX["chat"], a.max_len), f"RewardBench ({rb})"
    lens, how = pair_lengths("rewardbench", a.pairs, a.seed, a.max_len)
    return [e for e, _ in I.synthetic_pair_examples(lens, sp, seed=a.seed)], f"random ids, RewardBench {how}"


def training_inputs(tok, sp, a):
    tr = I.find_data(I.TRAIN_FILE)
    if tr is not None and a.real_tokenizer and not a.synthetic:
        return I.train_sample(tok, sp, a.train_pairs, a.train_max_len, a.seed, tr), f"UltraFeedback ({tr})"
    lens, how = pair_lengths("train", a.train_pairs, a.seed, a.train_max_len)
    return I.synthetic_pair_examples(lens, sp, seed=a.seed), f"random ids, UltraFeedback {how}"


def mem_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.memory_allocated() / 2 ** 20
    return M.rss_mb()


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        M.reset_peak_rss()


def peak_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return M.peak_rss_mb()


def bench_training(path: Path, a, batch, device, autocast) -> dict:
    """Both trainers in this process, alternated step by step. Memory per side = the most any of its
    steps allocated above what existed before that step, plus what its first step left allocated for good
    (optimiser state): so the other side's resident model and state never count."""
    targets = S.MODERNBERT_TARGETS
    torch.manual_seed(0)
    tr = {"tinyrm": S.TinyrmTrainer(path, a.rank, a.alpha, targets, a.frozen, device, autocast),
          "ref": S.RefTrainer(path, "modernbert", a.rank, a.alpha, targets, a.frozen, device, autocast)}
    runs = {k: {"step_s": [], "deltas": [], "trainable": v.trainable()} for k, v in tr.items()}
    for side, t in tr.items():  # warm-up: optimiser state, kernel selection, allocator pools
        M.sync(device)
        m0 = mem_mb(device)
        reset_peak(device)
        t0 = time.perf_counter()
        for _ in range(a.warmup):
            t.step(batch)
        M.sync(device)
        runs[side]["first_step_s"] = (time.perf_counter() - t0) / a.warmup
        runs[side]["deltas"].append(peak_mb(device) - m0)
        runs[side]["persistent_mb"] = mem_mb(device) - m0

    times = M.alternate({k: (lambda t=t: t.step(batch)) for k, t in tr.items()}, a.train_reps, device)
    # memory: one extra step per side with the peak reset just before it
    for side, t in tr.items():
        M.sync(device)
        runs[side]["_base"] = mem_mb(device)
        reset_peak(device)
        t.step(batch)
        M.sync(device)
        runs[side]["deltas"].append(peak_mb(device) - runs[side]["_base"] + runs[side]["persistent_mb"])
    for side in tr:
        runs[side]["step_s"] = times[side]
        runs[side]["peak_delta_mb"] = max(runs[side]["deltas"])
    del tr
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return runs


def report(info, peak, name, s, t, a, notes, wall, dtype_name) -> str:
    rows = T.summary_rows(name, s, t["summary"], peak, "allocated" if a.device == "cuda" else "RSS rise")
    ts = t["summary"]
    lines = [f"# tinyrm vs transformers (+ peft) on {info.get('gpu', a.device)}", "",
             f"Machine: {info.get('gpu', info['cpu'])}; torch {info['torch']} (CUDA {info.get('cuda')}), "
             f"transformers {info.get('transformers', '?')}, peft {info.get('peft', '?')}; dtype {dtype_name}.",
             f"Measured {dtype_name} matmul peak ({a.mm_n}×{a.mm_n} torch.mm, best of several): "
             f"**{peak / 1e12:.1f} TFLOP/s**.", "",
             T.md_table(["model", "measure", "tinyrm", "reference", "tinyrm / ref", "goal"], rows), "",
             f"- scoring: {s['pairs']} pairs × both orders = {s['sequences']} sequences, {s['tokens']:,} tokens "
             f"(mean {s['mean_len']:.0f}, max {s['max_len']}, max_len {a.max_len}); inputs: {notes['scoring']}; "
             f"pre-tokenised (model work only); reference padded batches of {a.batch} in dataset order "
             f"({s['padded_tokens']:,} padded tokens), {dtype_name} weights on both sides; {a.reps} alternated reps, medians "
             f"{s['tinyrm']['s'] * 1e3:.1f} ms vs {s['ref']['s'] * 1e3:.1f} ms; max |P_tinyrm − P_ref| = "
             f"{s['max_abs_prob_diff']:.1e}.",
             f"- training: one step = {ts['sequences']} sequences ({ts['sequences'] // 2} pairs × both orders), "
             f"{ts['tokens']:,} real tokens (ref padded {ts['padded_tokens']:,}); inputs: {notes['training']}; "
             f"DoRA r={a.rank} α={a.alpha:g} on {S.MODERNBERT_TARGETS}, embeddings + {a.frozen} layers frozen, "
             f"trainable {ts['tinyrm']['trainable']:,} / {ts['ref']['trainable']:,}; fp32 weights"
             f"{' + bf16 autocast' if dtype_name == 'bf16' else ''} on both sides; "
             f"{a.warmup} warm-up steps then {a.train_reps} alternated steps per side, medians "
             f"{ts['tinyrm']['s'] * 1e3:.0f} ms vs {ts['ref']['s'] * 1e3:.0f} ms; needed "
             f"{ts['flops']['needed'] / 1e12:.2f} TFLOP per step (6N convention "
             f"{ts['flops']['convention'] / 1e12:.2f}). Memory: peak allocated during a step above what was "
             f"allocated before it, plus the side's own persistent state (optimiser moments).",
             T.ceiling_note(name, s, ts, peak),
             "", f"Wall time: {wall:.0f} s.", ""]
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shape and sizes (a smoke test)")
    p.add_argument("--shape", default="modernbert-large")
    p.add_argument("--dtype", default=None, help="bf16 (default on cuda) or fp32 (default on cpu)")
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=32, help="reference scoring batch (sequences)")
    p.add_argument("--train-pairs", type=int, default=16)
    p.add_argument("--train-max-len", type=int, default=512)
    p.add_argument("--train-reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--frozen", type=int, default=9)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--mm-n", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--out", default=None, help="default bench/results/gpu.md (--tiny: a temp file)")
    p.add_argument("--json", default=None)
    p.add_argument("--synthetic", action="store_true", help="random ids with recorded lengths even if data exist")
    p.add_argument("--minimal-tokenizer", action="store_true", help="use the built-in word-level tokenizer")
    a = p.parse_args(argv)
    if a.tiny:
        a.shape, a.pairs, a.reps, a.max_len, a.batch = "modernbert-tiny", 4, 1, 96, 4
        a.train_pairs, a.train_max_len, a.train_reps, a.warmup, a.frozen, a.mm_n = 2, 96, 1, 1, 1, 256
        a.out = a.out or str(Path(tempfile.gettempdir()) / "tinyrm-gpu-tiny.md")
    a.out = a.out or str(I.ROOT / "bench" / "results" / "gpu.md")
    return a


def main(argv=None) -> int:
    a = parse(argv)
    t0 = time.time()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny for the smoke path")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, None: None}[a.dtype]
    dtype = dtype or (torch.bfloat16 if a.device == "cuda" else torch.float32)
    autocast = torch.bfloat16 if dtype == torch.bfloat16 else None
    dname = "bf16" if dtype == torch.bfloat16 else "fp32"
    S.quiet_transformers()
    info = M.machine_info(a.device)
    log(t0, f"{info}")
    peaks = [M.matmul_peak(a.device, dtype, n=a.mm_n, reps=10, inner=10 if a.device == "cuda" else 2)]
    log(t0, f"{dname} matmul peak {peaks[0] / 1e12:.1f} TFLOP/s")

    from tinyrm.tokens import Specials, load_tokenizer
    with tempfile.TemporaryDirectory(prefix="tinyrm-gpu-") as tmp:
        tok_json = None if a.minimal_tokenizer else I.find_tokenizer()
        a.real_tokenizer = tok_json is not None
        if tok_json is None:
            tok_json = I.write_minimal_tokenizer(Path(tmp) / "tok" / "tokenizer.json")
        log(t0, f"building {a.shape} (random init) with tokenizer {tok_json}")
        path = I.write_modernbert(Path(tmp) / "model", tok_json, a.shape)
        tok = load_tokenizer(path)
        sp = Specials.from_tokenizer(tok)
        exs, note_s = scoring_inputs(tok, sp, a)
        batch, note_t = training_inputs(tok, sp, a)
        log(t0, f"scoring {len(exs)} sequences ({note_s})")
        s = S.bench_scoring(path, "modernbert", a.reps, a.max_len, a.batch, examples=exs, device=a.device, dtype=dtype)
        log(t0, f"scoring: tinyrm {s['tinyrm']['pairs_per_s']:.0f} pairs/s, ref {s['ref']['pairs_per_s']:.0f} pairs/s")
        peaks.append(M.matmul_peak(a.device, dtype, n=a.mm_n, reps=5, inner=10 if a.device == "cuda" else 2))
        log(t0, f"training on {len(batch)} sequences ({note_t})")
        runs = bench_training(path, a, batch, a.device, autocast)
        from tinyrm.config import config_from_hf
        shape = F.Shape.of(config_from_hf(path / "config.json"))
        t = {"runs": runs, "summary": T.training_summary(
            {k: [v] for k, v in runs.items()}, [len(e) for e, _ in batch], shape, a.frozen, a.rank,
            S.MODERNBERT_TARGETS)}
        log(t0, f"training: tinyrm {t['summary']['tinyrm']['tokens_per_s']:.0f} tok/s, "
                f"ref {t['summary']['ref']['tokens_per_s']:.0f} tok/s")
    peak = max(peaks)
    name = a.shape.replace("modernbert", "ModernBERT") + " (random)"
    text = report(info, peak, name, s, t, a, {"scoring": note_s, "training": note_t}, time.time() - t0, dname)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": info, "peaks": peaks, "scoring": s, "training": t},
                                           indent=1, default=str))
    log(t0, f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
