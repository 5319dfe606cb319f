"""Training a tiny reward model: cloze prompts read through the MLM head, Bradley–Terry loss, DoRA.

    run = train(load_recipe("default"))      # or: tinyrm train --recipe default --lr 1e-4

One optimiser step = `batch_pairs` preference pairs; pairwise mode feeds both orders of every pair
(chosen as Choice 0 and as Choice 1), so the answer position never leaks the label. Micro-batches are
packed (no padding) up to `micro_tokens` tokens and their gradients accumulated. Validation accuracy
(both orders averaged; pointwise with `length_correct`, the better of the raw and the length-corrected
reward) picks the best checkpoint; RewardBench is never looked at here.
"""
from __future__ import annotations

import json
import math
import random
import resource
import time
from pathlib import Path

import torch
from tqdm import tqdm

from tinyrm.kernels.bt_loss import bradley_terry_loss, preference_stats

from .calibrate import FILE as LENGTH_FILE, LengthExpert, fit_sample, length_balanced, slopes_text
from .checkpoint import find_resumable, rng_state, save_checkpoint, set_rng_state
from .data import drop_overlap, load_mix, prompt_hash
from .dora import add_dora, freeze_layers, param_summary
from .prompts import PAIRWISE_WORDS, POINTWISE_WORDS, length_grouped_batches, pairwise_examples, pointwise_examples
from .recipe import ROOT, TrainConfig, shared_dir
from .scorer import RewardModel, mask_logits
from .validation import for_inference, val_domains, validate_run
from .weights import load_encoder


def _log(msg: str) -> None:
    tqdm.write(msg)


def prepare_model(cfg: TrainConfig, device) -> torch.nn.Module:
    enc = load_encoder(cfg.model if Path(cfg.model).is_absolute() else ROOT / cfg.model, device=device)
    if cfg.adapters:
        add_dora(enc, cfg.rank, cfg.alpha, cfg.targets, use_dora=cfg.use_dora)
    freeze_layers(enc, min(cfg.freeze_layers, enc.config.num_layers))
    if enc.built_head and cfg.freeze_layers < enc.config.num_layers:
        # a head we built ourselves has never been trained: train its transform and the decoder bias
        # (the decoder weight stays tied to the frozen word embeddings)
        for p in [*enc.head_modules()[0].parameters(), enc.decoder_module().bias]:
            p.requires_grad_(True)
    return enc


def make_optimizer(enc, cfg: TrainConfig, total_steps: int, expert: LengthExpert | None = None):
    decay, no_decay = [], []
    for n, p in enc.named_parameters():
        if p.requires_grad:
            # no weight decay on biases, norms and DoRA magnitudes (they are scales, not directions)
            (no_decay if p.ndim < 2 or "norm" in n.lower() or "magnitude" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas),
                            eps=cfg.eps)
    if expert is not None:
        # β is one scalar per domain with a target of order 1, and AdamW moves a parameter by about lr per
        # step: at the adapters' lr it would need ~1000 steps, at 20x it gets there within the warm-up
        opt.add_param_group({"params": [expert.beta], "weight_decay": 0.0, "lr": 20 * cfg.lr})
    warm = max(1, round(cfg.warmup_frac * total_steps))

    def lr_factor(step: int) -> float:  # linear warm-up, then linear decay to final_lr_frac of the peak
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return 1.0 - (1.0 - cfg.final_lr_frac) * min(1.0, t)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


def load_data(cfg: TrainConfig):
    """(train pairs, val pairs, report lines) — validation carved from the training mix (+ cfg.val files)."""
    train, val, reports = load_mix(cfg.data, cfg.seed, skip_bad=cfg.skip_bad, val_frac=cfg.val_frac)
    notes = [str(r) for r in reports if r.skipped]
    rb = shared_dir() / "data" / "rewardbench" / "filtered.jsonl"
    if cfg.drop_rewardbench_overlap and rb.is_file():
        # a guard, not a selection: rows whose prompt is literally a RewardBench prompt are removed
        banned = {json.loads(line)["prompt"] for line in rb.open()}
        (train, n), (val, m) = drop_overlap(train, banned), drop_overlap(val, banned)
        notes.append(f"dropped {n + m} pairs whose prompt is a RewardBench prompt")
    if cfg.length_balance:
        train, n = length_balanced(train, cfg.seed)
        notes.append(f"length balance: dropped {n} training pairs so that, in every domain, the chosen response "
                     "is the longer one as often as the shorter")
    if cfg.val:
        extra, _, _ = load_mix(cfg.val, cfg.seed, skip_bad=cfg.skip_bad, part="val")
        seen = {p.prompt.strip() for p in train}
        val += [p for p in extra if p.prompt.strip() not in seen]
    if len(val) > cfg.val_max_pairs:
        # a fixed, seeded subset keeps validation cheap; an equal share per domain keeps every domain's
        # accuracy measurable (the selection metric averages them)
        by_dom: dict = {}
        for p in val:
            by_dom.setdefault(p.domain, []).append(p)
        share, rng, keep = cfg.val_max_pairs // len(by_dom), random.Random(cfg.seed), []
        for dom in sorted(by_dom, key=str):
            # a canonical order first, so the sample does not depend on how the mix was shuffled
            rows = sorted(by_dom[dom], key=lambda p: (prompt_hash(p.prompt + p.chosen + p.rejected), p.prompt))
            keep += rng.sample(rows, min(share, len(rows)))
        val = keep
    return train, val, notes


def build_examples(enc, cfg: TrainConfig, pairs):
    """Per pair, its examples with labels: pairwise both orders; pointwise (chosen, rejected)."""
    rm = RewardModel(enc, cfg.mode, cfg.prefix, cfg.max_len)
    out = []
    for p in tqdm(pairs, desc="tokenising", unit="pair", leave=False):
        if cfg.mode == "pairwise":
            out.append(pairwise_examples(enc.tokenizer, rm.sp, p, rm.prefix_for(p.domain), rm.max_len))
        else:
            out.append(pointwise_examples(enc.tokenizer, rm.sp, p, max_len=rm.max_len))
    return out


def plan_steps(examples, cfg: TrainConfig) -> list[list[int]]:
    """Every optimiser step's pair indices, fixed by the seed (so a resumed run sees the same data)."""
    lengths = [max(len(e.input_ids) for e, _ in ex) for ex in examples]
    steps, epoch = [], 0
    n_total = math.ceil(cfg.epochs * math.ceil(len(examples) / cfg.batch_pairs))
    while len(steps) < n_total:
        steps += length_grouped_batches(lengths, batch_size=cfg.batch_pairs, seed=cfg.seed + epoch)
        epoch += 1
    steps = steps[:n_total]
    return steps[:cfg.max_steps] if cfg.max_steps > 0 else steps


def micro_batches(pair_ids: list[int], examples, max_tokens: int) -> list[list[int]]:
    out, cur, tok = [], [], 0
    for i in pair_ids:
        n = sum(len(e.input_ids) for e, _ in examples[i])
        if cur and tok + n > max_tokens:
            out.append(cur)
            cur, tok = [], 0
        cur.append(i)
        tok += n
    return out + ([cur] if cur else [])


def step_loss(enc, cfg, examples, pair_ids, vocab, n_diffs: int, autocast, expert=None):
    """Forward + backward for one micro-batch; returns (diffs, tokens). `expert`: a LengthExpert whose
    term joins each pair's logit (pointwise)."""
    exs = [ex for i in pair_ids for ex in examples[i]]
    with autocast:
        lg = mask_logits(enc, [e for e, _ in exs], vocab).float()             # [N, 2]
    z = lg[:, 0] - lg[:, 1]                        # log-odds of answer word 0 ('0' / 'yes')
    labels = torch.tensor([y for _, y in exs], device=z.device)
    if cfg.mode == "pairwise":
        diff = torch.where(labels == 0, z, -z)     # chosen's log-odds, one per order
    else:
        diff = z[0::2] - z[1::2]                   # r(chosen) - r(rejected)
        if expert is not None:
            diff = diff + expert(pair_ids)          # + β_d · (log-length gap)
    loss = bradley_terry_loss(diff, cfg.margin, reduction="sum") / n_diffs
    loss.backward()
    return diff.detach(), sum(len(e.input_ids) for e, _ in exs)


def autocast_for(cfg: TrainConfig, device: torch.device):
    """bf16 autocast: on CUDA by default; on CPU when asked (AMX / AVX512-BF16 units make it ~1.6x faster)."""
    if cfg.amp not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {cfg.amp!r}")
    on = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def train(cfg: TrainConfig, run_dir: str | Path | None = None, stop_after: int | None = None) -> dict:
    """Run (or resume, when run_dir holds a checkpoint) a training job; returns the summary dict."""
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    run_dir = Path(run_dir) if run_dir else ROOT / cfg.runs_dir / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    enc = prepare_model(cfg, device)
    _log(f"model {cfg.model}: {param_summary(enc)}")
    train_pairs, val, notes = load_data(cfg)
    for n in notes:
        _log(n)
    examples = build_examples(enc, cfg, train_pairs)
    steps = plan_steps(examples, cfg)
    _log(f"{len(train_pairs)} training pairs, {len(val)} validation pairs, {len(steps)} steps -> {run_dir}")
    if cfg.mode != "pointwise" and (cfg.length_expert or cfg.length_correct):
        raise ValueError("length_expert and length_correct are for pointwise models; this recipe is pairwise")
    expert = LengthExpert(train_pairs) if cfg.length_expert else None
    fit = fit_sample(train_pairs, cfg.length_fit_pairs, cfg.seed) if cfg.length_correct else None
    opt, sched = make_optimizer(enc, cfg, len(steps), expert)
    words = PAIRWISE_WORDS if cfg.mode == "pairwise" else POINTWISE_WORDS
    vocab = torch.tensor(RewardModel(enc, cfg.mode).answer_ids, device=device)
    autocast = autocast_for(cfg, device)
    meta = {"base": str(cfg.model), "train": cfg.to_dict(), "answer_words": list(words)}

    start, best = 0, {"val_score": -1.0, "step": -1}
    ckpt = find_resumable(run_dir)
    if ckpt is not None:
        from .adapters import load_adapter
        load_adapter(enc, ckpt / "adapter.safetensors")
        st = torch.load(ckpt / "trainer.pt", weights_only=False)
        if (expert is not None) != ("length_expert" in st):   # else the optimiser's groups would not match
            had = "length_expert" in st
            raise ValueError(f"{ckpt}: saved {'with' if had else 'without'} a length expert; resume it with "
                             f"length_expert = {str(had).lower()}")
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        set_rng_state(st["rng"])
        if expert is not None:
            expert.beta.data.copy_(st["length_expert"])
        start, best = st["step"], st["best"]
        _log(f"resumed from {ckpt} at step {start}")

    metrics = (run_dir / "metrics.jsonl").open("a")

    def record(row):
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()

    def evaluate_and_keep(step, fit=None):
        with for_inference(enc, autocast):            # merged adapters, the step's precision
            v, score, slopes = validate_run(enc, cfg, val, fit)
        record({"step": step, **v})
        if score > best["val_score"]:
            c = "corrected_" if slopes else ""
            best.update(val_score=score, val_acc=v[c + "val_acc"], step=step, raw_val_score=v["val_score"],
                        length_corrected=slopes is not None, corrected_val_score=v.get("corrected_val_score"),
                        corrected_val_acc=v.get("corrected_val_acc"))
            files = {LENGTH_FILE: slopes_text(slopes, {"fitted_on": f"{len(fit)} training pairs", "step": step})
                     } if slopes else None
            save_checkpoint(run_dir / "best", enc, {**meta, "step": step, **v}, files=files)
        return v, score

    doms = val_domains(val)  # the per-domain accuracies shown on the progress bar
    if start == 0 and val:
        _log(f"step 0 (untrained cloze): val_score {evaluate_and_keep(0)[1]:.4f}")
    enc.train()
    done = start
    bar = tqdm(range(start, len(steps)), initial=start, total=len(steps), desc="train", unit="step")
    for step in bar:
        ts = time.time()
        n_diffs = len(steps[step]) * (2 if cfg.mode == "pairwise" else 1)
        diffs, tokens = [], 0
        for mb in micro_batches(steps[step], examples, cfg.micro_tokens):
            d, n = step_loss(enc, cfg, examples, mb, vocab, n_diffs, autocast, expert)
            diffs.append(d)
            tokens += n
        gnorm = torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        d = torch.cat(diffs)
        row = {"step": step + 1, "lr": sched.get_last_lr()[0], "loss": bradley_terry_loss(d).item(),
               **preference_stats(d), "grad_norm": gnorm.item(), "tokens": tokens,
               "tokens_per_s": tokens / (time.time() - ts), "elapsed": time.time() - t0,
               **({f"length_beta_{k}": b for k, b in expert.values().items()} if expert else {})}
        record(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['acc']:.2f}", tok_s=f"{row['tokens_per_s']:.0f}")
        done = step + 1
        if val and (done % cfg.eval_every == 0 or done == len(steps)):
            v, score = evaluate_and_keep(done, fit)
            enc.train()
            per = " ".join(f"{d} {v['val_acc_' + d]:.3f}" for d in doms)
            fix = f", length-corrected {v['corrected_val_score']:.4f}" if "corrected_val_score" in v else ""
            bar.write(f"step {done}: val_score {v['val_score']:.4f} [{per}]{fix} (best {best['val_score']:.4f} "
                      f"at {best['step']})")
        if done % cfg.save_every == 0 or done == len(steps) or done == stop_after:
            save_checkpoint(run_dir / "last", enc, {**meta, "step": done},
                            {"step": done, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                             "rng": rng_state(), "best": best,
                             **({"length_expert": expert.beta.detach().clone()} if expert else {})})
        if done == stop_after:
            break
    bar.close()
    metrics.close()
    corrected = {k: best.get(k) for k in ("raw_val_score", "corrected_val_score", "corrected_val_acc")
                 } if cfg.length_correct else {}
    summary = {"run_dir": str(run_dir), "best_val_score": best["val_score"], "best_val_acc": best.get("val_acc", -1.0),
               **corrected, "length_correction_applied": bool(best.get("length_corrected")),
               **({"length_expert": expert.values()} if expert else {}),
               "select": cfg.select, "best_step": best["step"],
               "steps": len(steps), "train_pairs": len(train_pairs), "val_pairs": len(val),
               "seconds": time.time() - t0,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir.parent / "LATEST").write_text(run_dir.name + "\n")
    return summary
