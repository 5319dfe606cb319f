"""Training a tiny reward model: cloze prompts read through the MLM head, Bradley–Terry loss, DoRA.

    summary = train(load_recipe("default"))      # or: tinyrm train --recipe default --lr 1e-4

One optimiser step = `batch_pairs` preference pairs; pairwise mode feeds both orders of every pair
(chosen as Choice 0 and as Choice 1), so the answer position never leaks the label. Micro-batches are
packed (no padding) up to `micro_tokens` tokens and their gradients accumulated. Validation accuracy
(both orders averaged; pointwise with `length_correct`, the better of the raw and the length-corrected
reward) picks the best checkpoint; RewardBench is never looked at here.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from tinyrm.kernels.bt_loss import bradley_terry_loss, preference_stats

from . import distributed as dp
from .adapters import checkpoint_hash, load_adapter
from .atomic import atomic_write
from .augment import probes as make_probes
from .batching import length_grouped_batches, micro_batches
from .calibrate import FILE as LENGTH_FILE, LengthExpert, fit_sample, slopes_text
from .checkpoint import find_resumable, load_trainer_state, save_checkpoint, trim_metrics
from .dora import add_dora, freeze_layers, param_summary
from .ema import Ema, weight_average
from .errors import RecipeError
from .guard import note_step
from .mix import load_data
from .mlm import masking
from .objective import step_loss, with_pairwise
from .optim import make_optimizer
from .precision import autocast_for
from .prompts import Cloze
from .recipe import TrainConfig, check_files, needed_files
from .relevance_fit import after_training
from .scorer import pick_device
from .summary import finish
from .validation import for_inference, val_domains, validate_run
from .weights import load_encoder


def prepare_model(cfg: TrainConfig, device) -> torch.nn.Module:
    enc = load_encoder(cfg.model, device=device)
    if cfg.adapters:
        add_dora(enc, cfg.rank, cfg.alpha, cfg.targets, use_dora=cfg.use_dora, dropout=cfg.dropout)
    enc.set_hidden_dropout(cfg.hidden_dropout)          # a RecipeError where the architecture has none
    n = enc.config.num_layers
    freeze_layers(enc, min(cfg.freeze_layers, n))
    if enc.built_head and cfg.freeze_layers < n:
        # a head we built ourselves has never been trained: train its transform and the decoder bias
        # (the decoder weight stays tied to the frozen word embeddings)
        for p in [*enc.head_modules()[0].parameters(), enc.decoder_module().bias]:
            p.requires_grad_(True)
    if not any(p.requires_grad for p in enc.parameters()):      # else the first backward fails, unexplained
        raise RecipeError(f"freeze_layers = {cfg.freeze_layers} freezes all {n} layers and the head: nothing to train")
    return enc


def training_clozes(enc, cfg: TrainConfig) -> list[Cloze]:
    """The prompts a training step reads: the recipe's, then, with `pairwise_weight`, the pairwise one
    trained beside it (objective.py). Their answer words, in this order, are the step's vocabulary."""
    side = ([Cloze.for_encoder(enc, "pairwise", cfg.prefix, cfg.max_len, cfg.truncate)]
            if cfg.pairwise_weight > 0 else [])
    return [Cloze.for_encoder(enc, cfg.mode, cfg.prefix, cfg.max_len, cfg.truncate)] + side


def build_examples(enc, cfg: TrainConfig, pairs):
    """Per pair, its labelled examples (Cloze.training_examples: pairwise both orders, pointwise both sides),
    then, with `pairwise_weight`, its pairwise examples as side rows (objective.py)."""
    cloze, *side = training_clozes(enc, cfg)
    return [with_pairwise(cloze.training_examples(p), side[0].training_examples(p)) if side
            else cloze.training_examples(p) for p in tqdm(pairs, desc="tokenising", unit="pair", leave=False)]


def answer_vocab(enc, cfg: TrainConfig, device) -> torch.Tensor:
    """The answer words' ids a training forward reads: the recipe's two, then the side pairwise two."""
    return torch.tensor([i for c in training_clozes(enc, cfg) for i in c.answer_ids], device=device)


def plan_steps(examples, cfg: TrainConfig) -> list[list[int]]:
    """Every optimiser step's pair indices, fixed by the seed (so a resumed run sees the same data)."""
    lengths = [max(len(e.input_ids) for e, _ in ex) for ex in examples]
    steps, epoch = [], 0
    n_total = math.ceil(cfg.epochs * math.ceil(len(examples) / cfg.batch_pairs))
    while len(steps) < n_total:
        steps += length_grouped_batches(lengths, batch_size=cfg.batch_pairs, seed=cfg.seed + epoch)
        epoch += 1
    return steps[:min(n_total, cfg.max_steps) if cfg.max_steps > 0 else n_total]


@dataclass
class Run:
    """Everything one training run holds, built by `setup` and advanced by the loop."""
    cfg: TrainConfig
    run_dir: Path
    enc: torch.nn.Module
    train_pairs: list
    val: list
    examples: list
    steps: list[list[int]]
    vocab: torch.Tensor
    autocast: object
    opt: torch.optim.Optimizer
    sched: object
    meta: dict
    expert: LengthExpert | None = None
    fit: list | None = None                          # training pairs the length slopes are fitted on
    probes: list = field(default_factory=list)       # generated from validation pairs (augment.probes)
    ema: Ema | None = None                           # the weight average validated and kept (ema.py)
    start: int = 0
    best: dict = field(default_factory=lambda: {"val_score": -1.0, "step": -1})
    t0: float = field(default_factory=time.time)
    bad_in_row: int = 0                              # non-finite steps in a row, and in all (guard.py)
    skipped_steps: int = 0

    def record(self, row: dict) -> None:
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:                       # a failed write() names no file: say which
            raise OSError(e.errno, e.strerror, str(path)) from None


def setup(cfg: TrainConfig, run_dir: str | Path | None = None) -> Run:
    """Check the inputs, build the model, data, step plan and optimiser; the run folder is made only
    once all of that worked, so a bad input leaves nothing behind."""
    if cfg.mode != "pointwise" and (cfg.length_expert or cfg.length_correct or cfg.relevance_floor > 0):
        raise RecipeError("length_expert, length_correct and relevance_floor are for pointwise models; "
                          "this recipe is pairwise")
    if cfg.mode != "pointwise" and cfg.pairwise_weight > 0:
        raise RecipeError("pairwise_weight adds a pairwise loss beside a pointwise one; this recipe is pairwise")
    check_files(needed_files(cfg))
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = dp.init(pick_device(cfg.device))        # under a launcher: join the group, take this rank's GPU
    enc = prepare_model(cfg, device)
    dp.say(f"model {cfg.model}: {param_summary(enc)}")
    train_pairs, val, notes = load_data(cfg)
    for n in notes:
        dp.say(n)
    examples = build_examples(enc, cfg, train_pairs)
    steps = plan_steps(examples, cfg)
    expert = LengthExpert(train_pairs) if cfg.length_expert else None
    fit = fit_sample(train_pairs, cfg.length_fit_pairs, cfg.seed) if cfg.length_correct else None
    opt, sched = make_optimizer(enc, cfg, len(steps), expert)
    dp.start_together([p for g in opt.param_groups for p in g["params"]], cfg.seed, (len(train_pairs), len(val), steps))
    ema = weight_average(enc, cfg.ema, cfg.swa_from, len(steps))          # after the ranks agree on the start
    probes = make_probes(val, cfg.probes, cfg.split_seed) if cfg.probes else []
    cloze = Cloze.for_encoder(enc, cfg.mode, cfg.prefix, cfg.max_len, cfg.truncate)
    meta = {"base": str(cfg.model), "base_path": str(Path(cfg.model).absolute()),
            "base_hash": checkpoint_hash(cfg.model), "train": cfg.to_dict(), "answer_words": list(cloze.words)}
    run_dir = Path(run_dir) if run_dir else Path(cfg.runs_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(dp.broadcast_object(str(run_dir)))     # rank 0's name (its clock) on every rank
    if dp.is_main():                                      # only rank 0 writes the run folder
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
    dp.say(f"{len(train_pairs)} training pairs, {len(val)} validation pairs, {len(steps)} steps -> {run_dir}")
    return Run(cfg, run_dir, enc, train_pairs, val, examples, steps, answer_vocab(enc, cfg, device),
               autocast_for(cfg, device), opt, sched, meta, expert, fit, probes, ema)


def resume(run: Run) -> None:
    """Continue from the run folder's last checkpoint, when it has one."""
    ckpt = find_resumable(run.run_dir)
    st = None if ckpt is None else load_trainer_state(ckpt)
    if dp.is_main():                       # rows a killed attempt wrote after that checkpoint go
        trim_metrics(run.run_dir, 0 if st is None else st["step"])
    if st is None:
        return
    load_adapter(run.enc, ckpt / "adapter.safetensors")
    if (run.expert is not None) != ("length_expert" in st):   # else the optimiser's groups would not match
        had = "length_expert" in st
        raise RecipeError(f"{ckpt}: saved {'with' if had else 'without'} a length expert; resume it with "
                          f"length_expert = {str(had).lower()}")
    run.opt.load_state_dict(st["optimizer"])
    run.sched.load_state_dict(st["scheduler"])
    dp.restore_rng(st, run.cfg.seed)                  # this rank's own state (rng_ranks under several)
    if run.expert is not None:
        run.expert.beta.data.copy_(st["length_expert"])
    if (run.ema is not None) != ("ema" in st):
        raise RecipeError(f"{ckpt}: saved {'with' if 'ema' in st else 'without'} a weight average; resume it "
                          f"with the ema it was started with")
    if run.ema is not None:
        run.ema.load_state_dict(st["ema"])
    run.start, run.best = st["step"], st["best"]
    dp.say(f"resumed from {ckpt} at step {run.start}")


def validate_and_keep(run: Run, step: int) -> tuple[dict, float]:
    """Validate merged adapters at the step's precision (with any weight average); keep `best/` if better."""
    fit, live = (run.fit if step > 0 else None), {}
    compare = run.ema is not None and run.cfg.ema_compare           # the live weights too, for the record
    if compare and not run.ema.is_live:        # (an unstarted tail average is the live weights: no rerun)
        with for_inference(run.enc, run.autocast):
            live = validate_run(run.enc, run.cfg, run.val, fit, run.probes)[0]
    with run.ema.swapped() if run.ema is not None else contextlib.nullcontext():
        with for_inference(run.enc, run.autocast):
            v, score, slopes, rewards = validate_run(run.enc, run.cfg, run.val, fit, run.probes)
        run.record({"step": step, **v, **{f"live_{k}": x for k, x in (live or v if compare else {}).items()}})
        if score > run.best["val_score"]:
            run.best.update(val_score=score, val_acc=v.get("kept_val_acc", v["val_acc"]), step=step,
                            raw_val_score=v["val_score"], length_shares=v.get("length_shares"),
                            length_corrected=slopes is not None, corrected_val_score=v.get("corrected_val_score"),
                            corrected_val_acc=v.get("corrected_val_acc"), rewards=rewards)
            files = {LENGTH_FILE: slopes_text(slopes, {"fitted_on": f"{len(run.fit)} training pairs", "step": step})
                     } if slopes else None
            save_checkpoint(run.run_dir / "best", run.enc, {**run.meta, "step": step, **v}, files=files)
    run.enc.train()
    return v, score


def train_step(run: Run, step: int) -> dict:
    """One optimiser step over the step's pairs, in micro-batches; returns its metrics row."""
    ts, cfg = time.time(), run.cfg
    pairs = dp.shard(run.steps[step])      # this rank's fixed slice; n_diffs counts the whole step's
    n_diffs = len(run.steps[step]) * (2 if cfg.mode == "pairwise" else 1)   # diffs (see distributed.py)
    sizes = {i: sum(len(e.input_ids) for e, _ in run.examples[i]) for i in pairs}
    diffs, tokens, mlm_sum = [], 0, 0.0
    for k, mb in enumerate(micro_batches(pairs, sizes, cfg.micro_tokens)):
        mlm = masking(run.enc, cfg.seed + dp.rank(), step, k) if cfg.mlm_weight > 0 else None
        d, n, m = step_loss(run.enc, cfg, run.examples, mb, run.vocab, n_diffs, run.autocast, run.expert, mlm)
        diffs.append(d)
        tokens += n
        mlm_sum += 0.0 if m is None else m * len(d) / n_diffs
    dp.sum_grads(p for g in run.opt.param_groups for p in g["params"])      # the whole step's gradient
    gnorm = torch.nn.utils.clip_grad_norm_([p for g in run.opt.param_groups for p in g["params"]], cfg.grad_clip)
    finite = bool(torch.isfinite(gnorm))     # a NaN/inf gradient is not applied; the lr schedule still steps
    if finite:
        run.opt.step()
        if run.ema is not None:
            run.ema.update()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    bad = note_step(run, finite, step)        # the row's skip counts; raises after max_bad_steps in a row
    d, tokens = dp.gather_cat(diffs, run.vocab.device), dp.sum_int(tokens)  # every rank's pairs
    return {"step": step + 1, "lr": run.sched.get_last_lr()[0], "loss": bradley_terry_loss(d).item(),
            **preference_stats(d), "grad_norm": gnorm.item(), "tokens": tokens,
            "tokens_per_s": tokens / (time.time() - ts), "elapsed": time.time() - run.t0,
            **({f"length_beta_{k}": b for k, b in run.expert.values().items()} if run.expert else {}),
            **({"mlm_loss": dp.sum_float(mlm_sum)} if cfg.mlm_weight > 0 else {}), **bad}


def save_last(run: Run, done: int) -> None:
    rngs = dp.rng_states()            # every rank calls this; rank 0 writes every rank's RNG state
    state = {"step": done, "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
             "rng": rngs[0], "best": run.best, **({"rng_ranks": rngs} if len(rngs) > 1 else {}),
             **({"length_expert": run.expert.beta.detach().clone()} if run.expert else {}),
             **({"ema": run.ema.state_dict()} if run.ema else {})}
    if dp.is_main():
        save_checkpoint(run.run_dir / "last", run.enc, {**run.meta, "step": done}, state)


def loop(run: Run, stop_after: int | None = None) -> None:
    """The optimiser steps from run.start on, validating every eval_every and saving every save_every."""
    cfg, total, doms = run.cfg, len(run.steps), val_domains(run.val)
    run.enc.train()
    bar = tqdm(range(run.start, total), initial=run.start, total=total, desc="train", unit="step",
               disable=not dp.is_main())
    for step in bar:
        row = train_step(run, step)
        if dp.is_main():                # rank 0 writes: its row already holds every rank's pairs
            run.record(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['acc']:.2f}", tok_s=f"{row['tokens_per_s']:.0f}")
        done = step + 1
        if run.val and (done % cfg.eval_every == 0 or done == total):
            if dp.is_main():            # rank 0 alone (it writes best/); the others wait at the barrier
                v, _ = validate_and_keep(run, done)
                per = " ".join(f"{d} {v['val_acc_' + d]:.3f}" for d in doms)
                fix = f", kept (per-domain length form) {v['kept_val_score']:.4f}" if "kept_val_score" in v else ""
                bar.write(f"step {done}: val_score {v['val_score']:.4f} [{per}]{fix} (best "
                          f"{run.best['val_score']:.4f} at {run.best['step']})")
            dp.barrier()
        if done % cfg.save_every == 0 or done == total or done == stop_after:
            save_last(run, done)
        if done == stop_after:
            break
    bar.close()


def train(cfg: TrainConfig, run_dir: str | Path | None = None, stop_after: int | None = None) -> dict:
    """Run (or resume, when run_dir holds a checkpoint) a training job; returns the summary dict."""
    run = setup(cfg, run_dir)
    resume(run)
    if run.start == 0 and run.val and cfg.eval_untrained:
        dp.on_main(lambda: tqdm.write(f"step 0 (untrained cloze): val_score {validate_and_keep(run, 0)[1]:.4f}"))
    loop(run, stop_after)
    if cfg.relevance_floor > 0 and run.best["step"] >= 0 and (stop_after is None or stop_after >= len(run.steps)):
        dp.on_main(after_training, run)       # after the last step, on the kept checkpoint (relevance_fit.py)
    return finish(run)

