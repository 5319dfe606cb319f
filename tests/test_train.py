"""The trainer end to end: recipes, exact resume, a learning test, the scorer API on a trained run."""
import json
import random

import pytest
import torch
from safetensors.torch import load_file

import tinyrm
from tinyrm.errors import RecipeError
from tinyrm.mix import MixEntry
from tinyrm.recipe import TrainConfig, load_recipe
from tinyrm.scorer import RewardModel
from tinyrm.train import make_optimizer, train
from conftest import write_tiny_bert
from tolerance import U32, f32_bound, reward_bound  # float32 bounds (tests/tolerance.py)

WORDS = ("apple river stone cloud piano garden rocket violet candle mirror forest ladder pepper silver "
         "tiger window bridge copper desert falcon harbor island jacket kettle lemon marble needle ocean "
         "pillow quartz saddle tunnel velvet wagon yellow zebra anchor basket cactus dragon").split()


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def repeat_task(n, seed, words=WORDS):
    """'Repeat the word: X' -> chosen 'X', rejected another word. Only a model that compares the
    response with the prompt across the two segments, and reads the answer at the mask, can learn it."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w, v = rng.sample(words, 2)
        rows.append({"prompt": f"Repeat the word: {w}", "chosen": w, "rejected": v, "domain": "chat"})
    return rows


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_path):
    return write_tiny_bert(tmp_path_factory.mktemp("bert-tiny"), minilm_path, seed=0, layers=3)


def _cfg(tmp_path, model, data, **kw):
    base = dict(model=str(model), data=[MixEntry(path=data)], max_len=64, rank=4, alpha=8.0,
                targets=["query", "value", "dense"], freeze_layers=1, batch_pairs=4, micro_tokens=200,
                lr=1e-3, eval_every=3, save_every=100, val_frac=0.1, val_max_pairs=20, threads=1,
                runs_dir=str(tmp_path / "runs"))
    base.update(kw)
    return TrainConfig(**base)


def full_and_resumed_agree(tmp_path, model, data, kw, stop_after):
    """A run straight through (tmp_path/full) and one stopped after `stop_after` steps and resumed
    (tmp_path/part) end with the same bits in last/ and best/."""
    train(_cfg(tmp_path, model, data, **kw), run_dir=tmp_path / "full")
    part = tmp_path / "part"
    train(_cfg(tmp_path, model, data, **kw), run_dir=part, stop_after=stop_after)
    train(_cfg(tmp_path, model, data, **kw), run_dir=part)
    for sub in ("last", "best"):
        a = load_file(tmp_path / "full" / sub / "adapter.safetensors")
        b = load_file(part / sub / "adapter.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub


def test_lr_schedule_warmup_then_linear_decay_to_floor(tiny_bert, tmp_path):
    cfg = _cfg(tmp_path, tiny_bert, "unused", lr=1.0, warmup_frac=0.1, final_lr_frac=0.02)
    enc = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer(enc, cfg, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)        # 10 warm-up steps
    assert lrs[10] == pytest.approx(1.0) and lrs[99] == pytest.approx(1 - 0.98 * 89 / 90)
    assert sched.get_last_lr()[0] == pytest.approx(0.02)                       # the floor at the end
    # no decay on biases (1-D): the optimiser's groups say so
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]
    assert opt.param_groups[1]["params"][0] is enc.bias


def test_exact_resume_bit_for_bit(tiny_bert, tmp_path):
    data = _write(tmp_path / "d.jsonl", repeat_task(60, 1))
    full = train(_cfg(tmp_path, tiny_bert, data, max_steps=8), run_dir=tmp_path / "full")
    assert full["steps"] == 8
    part = tmp_path / "part"
    train(_cfg(tmp_path, tiny_bert, data, max_steps=8), run_dir=part, stop_after=4)
    assert json.loads((part / "last" / "adapter.json").read_text())["step"] == 4
    train(_cfg(tmp_path, tiny_bert, data, max_steps=8), run_dir=part)  # resumes at step 4
    a = load_file(tmp_path / "full" / "last" / "adapter.safetensors")
    b = load_file(part / "last" / "adapter.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics of the resumed half equal the uninterrupted run's
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    la = [r["loss"] for r in rows(tmp_path / "full") if "loss" in r]
    lb = [r["loss"] for r in rows(part) if "loss" in r]
    assert la == lb


def test_hidden_dropout_resumes_exactly_and_changes_training(tiny_bert, tmp_path):
    """The masks come from the saved torch RNG stream, so a stopped run resumes to the same bits; and they
    are drawn (the adapters differ from a run without them), in training only (validation is the same
    computation with or without the setting, so the untrained step-0 validation agrees)."""
    data = _write(tmp_path / "d.jsonl", repeat_task(60, 1))
    kw = dict(max_steps=6, hidden_dropout=0.2, eval_every=6, save_every=2)
    full_and_resumed_agree(tmp_path, tiny_bert, data, kw, stop_after=3)
    train(_cfg(tmp_path, tiny_bert, data, **{**kw, "hidden_dropout": 0.0}), run_dir=tmp_path / "plain")
    a = load_file(tmp_path / "full" / "last" / "adapter.safetensors")
    b = load_file(tmp_path / "plain" / "last" / "adapter.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    v0 = lambda d: next(r["val_score"] for r in rows(d) if r.get("step") == 0 and "val_score" in r)
    assert v0(tmp_path / "full") == v0(tmp_path / "plain")


def test_eval_untrained_off_skips_only_step_zero(tiny_bert, tmp_path):
    data = _write(tmp_path / "d.jsonl", repeat_task(60, 1))
    for flag, steps in ((True, [0, 2, 4]), (False, [2, 4])):
        run = tmp_path / f"r{flag}"
        train(_cfg(tmp_path, tiny_bert, data, max_steps=4, eval_every=2, eval_untrained=flag), run_dir=run)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "val_score" in r] == steps
        assert json.loads((run / "best" / "adapter.json").read_text())["step"] in steps


def test_learns_a_synthetic_preference_task(minilm_path, tmp_path):
    """A few hundred optimiser steps on MiniLM (real weights) lift held-out pairwise accuracy well
    above chance; the untrained cloze starts near chance."""
    data = _write(tmp_path / "train.jsonl", repeat_task(900, 2, WORDS[:32]))
    held = repeat_task(120, 3, WORDS[:32])
    cfg = _cfg(tmp_path, minilm_path, data, max_len=32, rank=8, alpha=16.0, freeze_layers=3,
               targets=["query", "key", "value", "dense"], batch_pairs=8, micro_tokens=4096, lr=2e-3,
               max_steps=110, eval_every=1000, val_frac=0.05, threads=2)
    s = train(cfg)
    rm = RewardModel.load(s["run_dir"])
    p = rm.compare([r["prompt"] for r in held], [r["chosen"] for r in held], [r["rejected"] for r in held])
    acc = sum(x > 0.5 for x in p) / len(p)
    assert acc >= 0.85, acc
    base = RewardModel(tinyrm.load_encoder(minilm_path))
    p0 = base.compare([r["prompt"] for r in held], [r["chosen"] for r in held], [r["rejected"] for r in held])
    assert sum(x > 0.5 for x in p0) / len(p0) < 0.75


def test_recipe_overrides_and_errors(tmp_path):
    cfg = load_recipe("default", ["--lr", "1e-4", "--use-dora", "false", "--targets", "query,value",
                                  "--max_steps", "7"])
    assert cfg.lr == 1e-4 and cfg.use_dora is False and cfg.targets == ["query", "value"] and cfg.max_steps == 7
    assert cfg.data and all(e.synth or e.path.endswith((".jsonl", ".jsonl.gz")) for e in cfg.data)
    with pytest.raises(ValueError, match="unknown override '--nope'"):
        load_recipe("default", ["--nope", "1"])
    with pytest.raises(ValueError, match="expected int"):
        load_recipe("default", ["--max_steps", "many"])
    bad = tmp_path / "bad.toml"
    bad.write_text('lr = 1e-4\nfrobnicate = 3\n')
    with pytest.raises(ValueError, match=r"bad\.toml: unknown key 'frobnicate'"):
        load_recipe(str(bad))
    with pytest.raises(RecipeError, match="recipe 'nothing' not found"):
        load_recipe("nothing")


def test_scorer_api_on_a_run(tiny_bert, tmp_path):
    data = _write(tmp_path / "d.jsonl", repeat_task(40, 4))
    s = train(_cfg(tmp_path, tiny_bert, data, max_steps=3))
    rm = RewardModel.load(s["run_dir"])
    assert rm.mode == "pairwise" and rm.max_len == 64
    prompts, a, b = ["Repeat the word: apple", "Repeat the word: tiger"], ["apple", "zebra"], ["river", "tiger"]
    p_ab = rm.compare(prompts, a, b)
    p_ba = rm.compare(prompts, b, a)
    # averaging both orders makes the comparison antisymmetric: P(a > b) = 1 - P(b > a)
    for x, y in zip(p_ab, p_ba):     # the pair logit moves <= reward_bound between calls, σ' <= 1/4; P rounds once
        assert x == pytest.approx(1 - y, abs=reward_bound(rm.enc) / 4 + 2 * U32)
    with pytest.raises(ValueError, match="pairwise model only compares"):
        rm.score(prompts, a)


@pytest.mark.parametrize("name", ["base-chat", "base-reasoning", "base-safety", "large-chat", "large-reasoning",
                                  "large-safety", "generalist"])
def test_paper_recipes_fit_modernbert(name, tiny_modernbert):
    """Every shipped ModernBERT recipe names real module targets, a paper prefix and a valid freeze depth."""
    from tinyrm.dora import add_dora, freeze_layers
    from tinyrm.prompts import PREFIXES

    cfg = load_recipe(name)
    assert cfg.prefix == "domain" or cfg.prefix in PREFIXES.values()
    assert cfg.batch_pairs == 256 and cfg.epochs == 1.0 and cfg.data
    n_layers = {"base": 22, "large": 28}.get(name.split("-")[0], 22)
    assert 0 <= cfg.freeze_layers < n_layers
    enc = tinyrm.load_encoder(tiny_modernbert[0])
    if cfg.adapters:
        names = add_dora(enc, 4, cfg.alpha, cfg.targets)
        assert {n.rsplit(".", 1)[-1] for n in names} == set(cfg.targets)
    freeze_layers(enc, min(cfg.freeze_layers, enc.config.num_layers))


def test_validation_per_domain_and_selection(tiny_bert, tmp_path):
    """val_score is the mean of the per-domain accuracies (hand-computed from the same logits), the
    validation sample holds an equal share per domain, and the best checkpoint follows val_score."""
    from tinyrm.mix import load_data
    from tinyrm.train import prepare_model
    from tinyrm.validation import validate

    rows = repeat_task(60, 5) + [dict(r, domain="safety") for r in repeat_task(200, 6)]
    data = _write(tmp_path / "d.jsonl", rows)
    cfg = _cfg(tmp_path, tiny_bert, data, val_frac=0.5, val_max_pairs=40)
    _, val, _ = load_data(cfg)
    counts = {d: sum(p.domain == d for p in val) for d in ("chat", "safety")}
    assert counts == {"chat": 20, "safety": 20}, counts               # 40 // 2 domains, not 60/40 by size

    enc = prepare_model(cfg, torch.device("cpu")).eval()
    v = validate(enc, cfg, val)
    rm = RewardModel(enc, cfg.mode, cfg.prefix, cfg.max_len)
    z = rm.compare_logits([p.prompt for p in val], [p.chosen for p in val], [p.rejected for p in val],
                          [p.domain for p in val])
    acc = {d: sum(float(x) > 0 for x, p in zip(z, val) if p.domain == d) / counts[d] for d in counts}
    assert v["val_acc_chat"] == pytest.approx(acc["chat"]) and v["val_acc_safety"] == pytest.approx(acc["safety"])
    assert v["val_score"] == pytest.approx((acc["chat"] + acc["safety"]) / 2)
    assert v["val_acc"] == pytest.approx(sum(float(x) > 0 for x in z) / len(val))
    z_ab, z_ba = rm.pairwise_logits([p.prompt for p in val], [p.chosen for p in val], [p.rejected for p in val],
                                    [p.domain for p in val])
    first = [float(x) > 0 for x in z_ab]                                # chosen shown as Choice 0
    second = [float(x) < 0 for x in z_ba]                               # chosen shown as Choice 1
    assert v["val_acc_chosen_first"] == pytest.approx(sum(first) / len(val))
    assert v["val_acc_chosen_second"] == pytest.approx(sum(second) / len(val))
    assert v["val_same_verdict_both_orders"] == pytest.approx(sum(a == b for a, b in zip(first, second)) / len(val))
    cfg.select = "acc"
    assert validate(enc, cfg, val)["val_score"] == pytest.approx(v["val_acc"])
    cfg.select = "nope"
    with pytest.raises(ValueError, match="select must be"):
        validate(enc, cfg, val)

    s = train(_cfg(tmp_path, tiny_bert, data, max_steps=6, eval_every=2, val_frac=0.5, val_max_pairs=40))
    rows = [json.loads(x) for x in (tmp_path / s["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if "val_score" in r]
    best = max(vals, key=lambda r: r["val_score"])                      # first maximum wins ties
    assert s["best_step"] == best["step"] and s["best_val_score"] == pytest.approx(best["val_score"])
    kept = json.loads((tmp_path / s["run_dir"] / "best" / "adapter.json").read_text())
    assert kept["step"] == best["step"]


def test_cpu_bf16_autocast_trains_close_to_float32(tiny_bert, tmp_path):
    """amp = "bf16" on CPU runs the matmuls in bfloat16 while weights and optimiser state stay float32;
    a short run follows the float32 run's losses within bf16 accuracy."""
    from tinyrm.train import autocast_for

    cfg = _cfg(tmp_path, tiny_bert, "unused", amp="bf16")
    with autocast_for(cfg, torch.device("cpu")):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    with autocast_for(_cfg(tmp_path, tiny_bert, "unused", amp="auto"), torch.device("cpu")):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="amp must be"):
        autocast_for(_cfg(tmp_path, tiny_bert, "unused", amp="fp8"), torch.device("cpu"))

    data = _write(tmp_path / "d.jsonl", repeat_task(60, 7))
    runs = {a: train(_cfg(tmp_path, tiny_bert, data, max_steps=5, amp=a), run_dir=tmp_path / a) for a in ("off", "bf16")}
    loss = {a: [json.loads(x)["loss"] for x in (tmp_path / a / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in x and "val" not in x] for a in runs}
    assert len(loss["off"]) == 5 and loss["off"] != loss["bf16"]        # bf16 really ran
    for x, y in zip(loss["off"], loss["bf16"]):
        assert x == pytest.approx(y, abs=0.03)
    w = load_file(tmp_path / "bf16" / "last" / "adapter.safetensors")
    assert all(t.dtype == torch.float32 for t in w.values())


def test_bf16_on_a_cpu_without_bf16_units_warns(tiny_bert, tmp_path, monkeypatch, capsys):
    """The warning follows the hardware check: said where bf16 is emulated, silent where it is native,
    and never for float32 ("auto" on CPU)."""
    from tinyrm import precision

    for native, warned in ((False, True), (True, False)):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda n=native: n)
        precision.autocast_for(_cfg(tmp_path, tiny_bert, "unused", amp="bf16"), torch.device("cpu"))
        assert ("without bf16 units" in capsys.readouterr().out) == warned
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    precision.autocast_for(_cfg(tmp_path, tiny_bert, "unused", amp="auto"), torch.device("cpu"))
    assert "bf16" not in capsys.readouterr().out
    # the check agrees with the CPU's own flags (Linux): AMX-BF16 or AVX512-BF16 is native bf16; without
    # AVX-512 at all oneDNN emulates it (AVX-512 without BF16 sits between: oneDNN converts with AVX-512)
    from pathlib import Path
    info = Path("/proc/cpuinfo")
    if info.is_file():
        flags = set(info.read_text().split())
        if flags & {"amx_bf16", "avx512_bf16"}:
            assert precision.cpu_has_bf16()
        elif "avx512f" not in flags:
            assert not precision.cpu_has_bf16()


def test_length_balance_per_domain():
    """Per domain, as many chosen-longer as chosen-shorter pairs survive (the minority side is kept whole);
    equal lengths are kept; the survivors keep their order; the same seed drops the same pairs."""
    from tinyrm.data import PreferencePair
    from tinyrm.mix import length_balanced

    rng = random.Random(0)
    pairs = []
    for i in range(300):
        dom = ["chat", "safety", None][i % 3]
        a, b = "x" * rng.randint(1, 9), "y" * rng.randint(1, 9)
        longer_first = rng.random() < (0.7 if dom == "chat" else 0.4)
        c, r = (max(a, b, key=len), min(a, b, key=len)) if longer_first else (min(a, b, key=len), max(a, b, key=len))
        pairs.append(PreferencePair(f"q{i}", c, r, dom, "t"))
    kept, dropped = length_balanced(pairs, seed=1)
    assert len(kept) + dropped == len(pairs) and dropped > 0
    for dom in ("chat", "safety", None):
        before = [p for p in pairs if p.domain == dom]
        after = [p for p in kept if p.domain == dom]
        n_long = sum(len(p.chosen) > len(p.rejected) for p in after)
        n_short = sum(len(p.chosen) < len(p.rejected) for p in after)
        assert n_long == n_short == min(sum(len(p.chosen) > len(p.rejected) for p in before),
                                        sum(len(p.chosen) < len(p.rejected) for p in before))
        assert sum(len(p.chosen) == len(p.rejected) for p in after) == sum(len(p.chosen) == len(p.rejected) for p in before)
    pos = {id(p): i for i, p in enumerate(pairs)}
    assert [pos[id(p)] for p in kept] == sorted(pos[id(p)] for p in kept)
    again, _ = length_balanced(pairs, seed=1)
    assert [id(p) for p in again] == [id(p) for p in kept]


def test_validation_metrics_by_hand():
    """Accuracy per domain, per length side and per source, and the length-balanced score, against
    counts done by hand on six pairs."""
    from tinyrm.data import PreferencePair
    from tinyrm.validation import metrics

    P = PreferencePair
    val = [P("q1", "long answer", "short", "chat", "a"),      # chosen longer,  right
           P("q2", "long answer", "short", "chat", "a"),      # chosen longer,  right
           P("q3", "short", "long answer", "chat", "b"),      # chosen shorter, wrong
           P("q4", "short", "long answer", "chat", "b"),      # chosen shorter, right
           P("q5", "same1", "same2", "safety", "b"),          # equal length,   tie -> wrong
           P("q6", "short", "long answer", "safety", "b")]    # chosen shorter, wrong
    z = torch.tensor([2.0, 0.5, -1.0, 0.3, 0.0, -0.2])
    m = metrics(z, val)
    assert m["val_acc"] == pytest.approx(3 / 6)
    ref = torch.nn.functional.softplus(-z.double())         # float32 softplus and mean over 6 pairs at most
    assert m["val_loss"] == pytest.approx(float(ref.mean()), abs=f32_bound(ref, n_terms=len(val), steps=2))
    assert m["val_acc_chat"] == pytest.approx(3 / 4) and m["val_acc_safety"] == 0.0
    assert m["val_score"] == pytest.approx((3 / 4 + 0) / 2)
    assert m["val_acc_chosen_longer"] == 1.0 and m["val_acc_chosen_shorter"] == pytest.approx(1 / 3)
    # chat: (longer 2/2 + shorter 1/2) / 2 = 0.75; safety: only a shorter side, 0/1 -> 0
    assert m["val_len_balanced"] == pytest.approx((0.75 + 0.0) / 2)
    assert m["val_src_acc_a"] == 1.0 and m["val_src_acc_b"] == pytest.approx(1 / 4)
    assert metrics(z, val, "acc")["val_score"] == pytest.approx(0.5)


def test_standard_errors_and_probe_accuracies_by_hand():
    """Binomial standard errors per domain and of the domain mean, and per-kind probe accuracies."""
    from tinyrm.data import PreferencePair
    from tinyrm.validation import metrics, probe_metrics

    P = PreferencePair
    val = [P(f"q{i}", "a", "b", "chat" if i < 4 else "safety", "s") for i in range(6)]
    z = torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0, -1.0])        # chat 3/4, safety 1/2
    m = metrics(z, val)
    se_chat, se_safety = (0.75 * 0.25 / 4) ** 0.5, (0.5 * 0.5 / 2) ** 0.5
    assert m["val_se_chat"] == pytest.approx(se_chat) and m["val_se_safety"] == pytest.approx(se_safety)
    assert m["val_domain_mean_se"] == pytest.approx((se_chat ** 2 + se_safety ** 2) ** 0.5 / 2)
    probes = [P("q", "a", "b", "chat", "probe-style")] * 3 + [P("q", "a", "b", "chat", "probe-relevance")] * 2
    pm = probe_metrics(torch.tensor([1.0, -1.0, 1.0, 0.0, 2.0]), probes)   # a tie (0) is wrong
    assert pm["val_probe_style"] == pytest.approx(2 / 3) and pm["val_probe_relevance"] == pytest.approx(0.5)
    assert pm["val_probe_style_se"] == pytest.approx((2 / 3 * 1 / 3 / 3) ** 0.5)


def test_every_shipped_recipe_loads():
    """configs/*.toml and the recorded trials in configs/trials/ parse, with entries that name real kinds."""
    from tinyrm.paths import configs_dir

    paths = sorted(configs_dir().rglob("*.toml"))
    assert any(p.parent.name == "trials" for p in paths)
    for p in paths:
        cfg = load_recipe(str(p))
        assert cfg.data, p
        assert all(bool(e.path) != bool(e.synth) for e in cfg.data + cfg.val), p


def test_cli_resume_continues_from_the_runs_own_config(tiny_bert, tmp_path, capsys):
    """`tinyrm train --resume RUN` rebuilds the config from RUN/config.json (the same TrainConfig) and
    finishes the run; the closing lines name the run folder and the kept step."""
    from tinyrm.cli import main
    from tinyrm.recipe import load_run_config

    data = _write(tmp_path / "d.jsonl", repeat_task(60, 1))
    cfg = _cfg(tmp_path, tiny_bert, data, max_steps=6)
    run = tmp_path / "run"
    train(cfg, run_dir=run, stop_after=3)
    assert load_run_config(run) == cfg
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"run folder: {run}" in out and "of 6)" in out
    assert json.loads((run / "last" / "adapter.json").read_text())["step"] == 6
