"""Length and the pointwise reward: the slope fit against hand values, the scorer applying it, every
validation of a run fitting it and keeping the better reward, and the length expert of training."""
import json
import math
import random
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_bert
from tolerance import f32_bound, ols_slope_bound, reward_bound  # float32 bounds (tests/tolerance.py)
from tinyrm.calibrate import fit_slopes, load_slopes, log_length, slopes_text
from tinyrm.mix import MixEntry
from tinyrm.recipe import TrainConfig
from tinyrm.scorer import RewardModel
from tinyrm.train import train
from tinyrm.validation import validate


def test_fit_slopes_hand_values(tmp_path):
    # chat: r = 1 + 2x exactly -> 2; safety: r = 5 - 0.5x -> -0.5; "none": one length only -> 0
    x = [0.0, 1.0, 2.0, 3.0, 1.0, 3.0, 2.0, 2.0]
    r = [1.0, 3.0, 5.0, 7.0, 4.5, 3.5, 9.0, 1.0]
    d = ["chat"] * 4 + ["safety"] * 2 + [None] * 2
    s = fit_slopes(r, x, d)
    assert s["chat"] == pytest.approx(2.0) and s["safety"] == pytest.approx(-0.5) and s["none"] == 0.0
    # pooled: cov(r, x) / var(x) over all eight rows, done by hand
    mx, mr = sum(x) / 8, sum(r) / 8
    pooled = sum((a - mx) * (b - mr) for a, b in zip(x, r)) / sum((a - mx) ** 2 for a in x)
    assert s["*"] == pytest.approx(pooled)
    (tmp_path / "length.json").write_text(slopes_text(s))
    assert load_slopes(tmp_path) == pytest.approx(s) and load_slopes(tmp_path / "nowhere") is None
    (tmp_path / "length.json").write_text('{"slope": 1}')
    with pytest.raises(ValueError, match=r"length\.json: not a length-correction file"):
        load_slopes(tmp_path)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_path):
    return write_tiny_bert(tmp_path_factory.mktemp("bert-cal"), minilm_path, seed=1, layers=2)


def _rows(n, seed):
    """Chosen = the word asked for; rejected = another word said 1-6 times (lengths vary a lot)."""
    rng, words = random.Random(seed), "apple river stone cloud piano garden rocket violet candle".split()
    rows = []
    for _ in range(n):
        w, v = rng.sample(words, 2)
        rows.append({"prompt": f"Repeat the word: {w}", "chosen": w, "rejected": " ".join([v] * rng.randint(1, 6)),
                     "domain": rng.choice(["chat", "safety"])})
    return rows


def test_scorer_subtracts_slope_times_log_length(tiny_bert):
    import tinyrm

    rm = RewardModel(tinyrm.load_encoder(tiny_bert), "pointwise", max_len=64)
    q, resp = ["Say a word", "Say a word", "Say a word"], ["a", "a much longer answer", "mid size"]
    raw = torch.tensor(rm.score(q, resp, ["chat", "safety", None]), dtype=torch.float64)
    rm.length_slopes = {"chat": 0.7, "safety": -0.2, "*": 0.3}
    got = torch.tensor(rm.score(q, resp, ["chat", "safety", None]), dtype=torch.float64)
    want = raw - torch.tensor([0.7 * math.log1p(1), -0.2 * math.log1p(20), 0.3 * math.log1p(8)], dtype=torch.float64)
    # two forwards (each reward within reward_bound of the other's) and the correction's float32 rounding
    torch.testing.assert_close(got, want, rtol=0, atol=reward_bound(rm.enc) + f32_bound(raw, want, n_terms=2))
    # compare() goes through score(): the corrected difference
    z = rm.compare_logits(q[:1], resp[1:2], resp[:1], ["chat"])
    r_long, r_short = rm.score(q[:2], resp[1::-1], ["chat", "chat"])
    assert float(z) == pytest.approx(r_long - r_short,
                                     abs=2 * reward_bound(rm.enc) + f32_bound(r_long, r_short, n_terms=2))
    rm.length_slopes = None
    raw_long, raw_short = rm.score(q[:2], resp[1::-1], ["chat", "chat"])
    assert float(z) == pytest.approx(raw_long - raw_short - 0.7 * (math.log1p(20) - math.log1p(1)),
                                     abs=2 * reward_bound(rm.enc)
                                     + f32_bound(raw_long, raw_short, 0.7 * math.log1p(20), n_terms=4))


def _cfg(tiny_bert, tmp_path, **kw):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(60, 3)))
    return TrainConfig(**{**dict(model=str(tiny_bert), data=[MixEntry(path=str(data))], mode="pointwise", max_len=64,
                                 rank=4, alpha=8.0, targets=["query", "value", "dense"], freeze_layers=1,
                                 batch_pairs=4, micro_tokens=200, lr=1e-3, max_steps=6, eval_every=2,
                                 save_every=100, val_frac=0.2, val_max_pairs=20, threads=1,
                                 runs_dir=str(tmp_path / "runs"), length_correct=True, length_fit_pairs=30), **kw})


def _rows_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_validation_fits_both_rewards_and_keeps_the_better(tiny_bert, tmp_path):
    cfg = _cfg(tiny_bert, tmp_path)
    s = train(cfg)
    run = Path(s["run_dir"])
    evals = [r for r in _rows_of(run) if "val_score" in r]
    assert [r["step"] for r in evals] == [0, 2, 4, 6]
    assert "length_slopes" not in evals[0]                    # the untrained model: raw only
    score = [evals[0]["val_score"]]
    for r in evals[1:]:
        assert set(r["length_slopes"]) == {"chat", "safety", "*"}
        # per domain (the default length_choice): the correction where it is at least as accurate
        shares = {d: float(r[f"corrected_val_acc_{d}"] >= r[f"val_acc_{d}"]) for d in ("chat", "safety")}
        assert {d: r["length_shares"][d] for d in shares} == shares
        assert r["length_corrected"] == any(r["length_shares"].values())
        assert r["kept_val_score"] == pytest.approx(sum(max(r[f"val_acc_{d}"], r[f"corrected_val_acc_{d}"])
                                                        for d in shares) / 2)
        score.append(r["kept_val_score"])
    # the kept checkpoint is the first best of those scores, and it carries each domain's share of the
    # slopes iff any share is on: the scorer then applies exactly the reward that was selected
    i = max(range(len(score)), key=lambda k: (score[k], -k))
    row = evals[i]
    assert s["best_step"] == row["step"] and s["best_val_score"] == pytest.approx(score[i])
    assert s["length_correction_applied"] == bool(row.get("length_corrected"))
    best = run / "best"
    kept = {d: row["length_shares"][d] * b for d, b in row["length_slopes"].items()} if i > 0 else None
    assert load_slopes(best) == (pytest.approx(kept) if row.get("length_corrected") else None)
    # the slopes are the raw reward's OLS slopes on a seeded sample of 30 TRAINING pairs (refit by hand on
    # the kept checkpoint), and the corrected reward on that sample has no linear trend in log length left
    from tinyrm.mix import load_data
    train_pairs, val, _ = load_data(cfg)
    rm = RewardModel.load(run)
    rm.length_slopes = None
    sample = random.Random(f"length-fit-{cfg.seed}").sample(train_pairs, 30)
    q, resp = [p.prompt for p in sample] * 2, [p.chosen for p in sample] + [p.rejected for p in sample]
    doms = [p.domain for p in sample] * 2
    slopes = fit_slopes(rm.score(q, resp), [log_length(t) for t in resp], doms)
    xs = [log_length(t) for t in resp]
    delta = reward_bound(rm.enc)                             # the training run's forwards vs these
    subsets = {d: [x for x, e in zip(xs, doms) if e == d] for d in set(doms)} | {"*": xs}
    if i > 0:
        assert slopes == pytest.approx(row["length_slopes"],
                                       abs=max(ols_slope_bound(v, delta) for v in subsets.values()))
    rm.length_slopes = slopes
    corrected = rm.score(q, resp, doms)
    for dom in ("chat", "safety"):
        idx = [k for k, d in enumerate(doms) if d == dom]
        assert fit_slopes([corrected[k] for k in idx], [log_length(resp[k]) for k in idx], [dom] * len(idx))[dom] \
            == pytest.approx(0.0, abs=ols_slope_bound(subsets[dom], delta + f32_bound(*corrected, n_terms=2)))
    # both logged scores are what the scorer's own validation gives, raw and with those slopes
    if i > 0:
        assert validate(rm.enc, cfg, val)["val_score"] == pytest.approx(row["val_score"])
        assert validate(rm.enc, cfg, val, slopes)["val_score"] == pytest.approx(row["corrected_val_score"])
        assert validate(rm.enc, cfg, val, {d: row["length_shares"][d] * b for d, b in slopes.items()}
                        )["val_score"] == pytest.approx(row["kept_val_score"])
    # a pairwise recipe cannot ask for it
    with pytest.raises(ValueError, match="pointwise"):
        train(TrainConfig(**{**cfg.to_dict(), "mode": "pairwise", "data": cfg.data, "val": cfg.val,
                             "runs_dir": str(tmp_path / "runs2"), "betas": tuple(cfg.betas)}))


def test_validate_run_rule(monkeypatch):
    """The kept reward takes each domain's share of the correction (chosen as choose_shares does), its score
    is the selection's, and the stored slopes are the fitted ones times the shares ("*" by the pooled slope
    over all pairs); "global" gives every domain and "*" one share, as before per-domain choice; without a
    fitting sample, plain validation. A pointwise model's raw rewards come back unchanged (the relevance
    floor's validation reuses them); a pairwise model has none, nor does a pass under bf16 autocast."""
    from tinyrm.data import PreferencePair as P
    import tinyrm.validation as V

    val = [P(f"q{i}", "a", "b", d, "t") for i, d in enumerate(["chat"] * 3 + ["safety"] * 3)]
    z = torch.tensor([1., 1, 1, -1, 1, 1], dtype=torch.float64)
    gap = torch.tensor([2., 2, 0, -2, 0, 0], dtype=torch.float64)
    # chat: raw 3/3, corrected 1/3; safety: raw 2/3, corrected 3/3; domain means raw 5/6, corrected 2/3
    slopes = {"chat": 0.5, "safety": 0.25, "*": 0.4}
    monkeypatch.setattr(V, "RewardModel", lambda *a, **k: None)
    helps, hurts = torch.tensor([0., 0, 0, -2, 0, 0]), torch.tensor([2., 2, 2, 0, 0, 0])    # 6/6 and 2/6 pooled
    raw, enc = torch.arange(12.).reshape(2, 6), torch.nn.Linear(1, 1)   # enc: only its device is read
    for pooled, star in ((helps, 1.0), (hurts, 0.0)):
        monkeypatch.setattr(V, "correction_terms", lambda rm, held, fit, p=pooled: (z, gap, p.double(), slopes, raw))
        row, score, kept, rewards = V.validate_run(enc, TrainConfig(mode="pointwise"), val, fit_pairs=["a pair"])
        assert rewards is raw
        assert row["length_shares"] == {"chat": 0.0, "safety": 1.0, "*": star}
        assert score == row["kept_val_score"] == 1.0
        assert row["val_score"] == pytest.approx(5 / 6) and row["corrected_val_score"] == pytest.approx(2 / 3)
        assert kept == {"chat": 0.0, "safety": 0.25, "*": 0.4 * star} and row["length_corrected"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        row, score, kept, rewards = V.validate_run(enc, TrainConfig(mode="pointwise", length_choice="global"), val,
                                                   ["a pair"])
    assert rewards is None
    assert row["length_shares"] == {"chat": 0.0, "safety": 0.0, "*": 0.0} and kept is None
    assert score == row["kept_val_score"] == pytest.approx(5 / 6)
    assert not row["length_corrected"]
    first, second = torch.tensor([0.5, 2.0]), torch.tensor([1.0, -1.0])
    monkeypatch.setattr(V, "_validate", lambda enc, cfg, val, slopes, probes: ({"val_score": 0.4}, first, second))
    assert V.validate_run(enc, TrainConfig(mode="pairwise"), [], None) == ({"val_score": 0.4}, 0.4, None, None)
    row, score, kept, rewards = V.validate_run(enc, TrainConfig(mode="pointwise"), [], None)
    assert (row, score, kept) == ({"val_score": 0.4}, 0.4, None)
    assert torch.equal(rewards, torch.tensor([[0.5, 2.0], [1.0, -1.0]]))


def test_choose_shares_by_hand():
    """The share of the length correction each policy picks, against accuracies counted by hand: chat is
    right raw (4/5, corrected 2/5), safety corrected (4/4 vs 2/4), reasoning only at half (2/2, else 1/2)."""
    from tinyrm.data import PreferencePair as P
    from tinyrm.validation import choose_shares, shared

    doms = ["chat"] * 5 + ["safety"] * 4 + ["reasoning"] * 2
    val = [P(f"q{i}", "a", "b", d, "t") for i, d in enumerate(doms)]
    z = torch.tensor([1., 1, 1, -1, 1, -1, -1, 1, 1, -1, 3], dtype=torch.float64)
    gap = torch.tensor([2., 2, 0, 0, 0, -2, -2, 0, 0, -4, 4], dtype=torch.float64)
    # global: raw (.8 + .5 + .5) / 3 = .600 < corrected (.4 + 1 + .5) / 3 = .633 -> 1 for every domain
    assert choose_shares(z, gap, val, "global") == {"chat": 1.0, "safety": 1.0, "reasoning": 1.0}
    # per domain from (0, 1): chat raw; reasoning ties at 1/2 and the tie goes to the corrected reward
    assert choose_shares(z, gap, val, "domain") == {"chat": 0.0, "safety": 1.0, "reasoning": 1.0}
    # the grid: chat is 4/5 at 0 and at 1/4 (the larger wins the tie), reasoning is 2/2 only at 1/2,
    # safety is 4/4 at 3/4 and at 1
    s = choose_shares(z, gap, val, "blend")
    assert s == {"chat": 0.25, "safety": 1.0, "reasoning": 0.5}
    assert shared(z, gap, val, s).tolist() == [0.5, 0.5, 1, -1, 1, 1, 1, 1, 1, 1, 1]
    # a domain without a share is scored raw; an unknown policy is named in the error
    assert shared(z[:1], gap[:1], [P("q", "a", "b", "other", "t")], s).tolist() == [1.0]
    with pytest.raises(ValueError, match="length_choice must be one of.*'sometimes'"):
        choose_shares(z, gap, val, "sometimes")


def test_for_inference_merges_and_gives_the_training_mode_back(tiny_bert, tmp_path):
    from tinyrm.dora import adapted_modules
    from tinyrm.mix import load_data
    from tinyrm.train import prepare_model
    from tinyrm.validation import for_inference

    cfg = _cfg(tiny_bert, tmp_path)
    enc = prepare_model(cfg, torch.device("cpu"))
    for m in adapted_modules(enc).values():                 # a non-trivial adapter
        torch.nn.init.normal_(m.lora_B, std=0.05)
    _, val, _ = load_data(cfg)
    enc.eval()
    plain = validate(enc, cfg, val)
    enc.train()
    with for_inference(enc):
        assert not enc.training and all(m.merged for m in adapted_modules(enc).values())
        merged = validate(enc, cfg, val)
    assert enc.training and not any(m.merged for m in adapted_modules(enc).values())
    # softplus is 1-Lipschitz: the mean loss moves no more than a pair logit r_a − r_b (2 rewards)
    assert merged["val_loss"] == pytest.approx(plain["val_loss"],
                                               abs=2 * reward_bound(enc) + f32_bound(plain["val_loss"], n_terms=len(val)))
    assert merged["val_acc"] == plain["val_acc"]


def test_length_expert_joins_the_pair_logit(tiny_bert, tmp_path):
    from tinyrm.calibrate import LengthExpert
    from tinyrm.scorer import mask_logits
    from tinyrm.mix import load_data
    from tinyrm.train import build_examples, prepare_model, step_loss

    cfg = _cfg(tiny_bert, tmp_path, length_expert=True)
    pairs, _, _ = load_data(cfg)
    enc = prepare_model(cfg, torch.device("cpu"))
    expert = LengthExpert(pairs)
    assert expert.domains == ["chat", "safety"]
    expert.beta.data = torch.tensor([0.75, -1.5])
    ids = [0, 3, 5, 8]
    examples = build_examples(enc, cfg, pairs)
    vocab = torch.tensor(RewardModel(enc, "pointwise").cloze.answer_ids)
    diff, _, _ = step_loss(enc, cfg, examples, ids, vocab, len(ids), torch.autocast("cpu", enabled=False), expert)
    with torch.no_grad():
        lg = mask_logits(enc, [e for i in ids for e, _ in examples[i]], vocab)
    r = lg[:, 0] - lg[:, 1]
    beta = {"chat": 0.75, "safety": -1.5}
    want = [float(r[2 * k] - r[2 * k + 1]) + beta[pairs[i].domain] * (math.log1p(len(pairs[i].chosen))
            - math.log1p(len(pairs[i].rejected))) for k, i in enumerate(ids)]
    # the training forward vs the inference one: two rewards each, plus β·Δlog's float32 rounding
    assert diff.tolist() == pytest.approx(want, abs=2 * reward_bound(enc) + f32_bound(
        *want, 1.5 * max(math.log1p(len(t)) for i in ids for t in (pairs[i].chosen, pairs[i].rejected)), n_terms=4))
    assert expert.beta.grad is not None and expert.beta.grad.abs().sum() > 0   # it trains


def test_length_expert_learns_the_length_preference_and_resumes_exactly(tiny_bert, tmp_path):
    """In these pairs the chosen answer is one word and the rejected one 1-6 words: length alone predicts
    the label, and β goes negative in both domains. A stopped and resumed run ends bit for bit where the
    uninterrupted one does, β and its optimiser state included."""
    from safetensors.torch import load_file

    cfg = _cfg(tiny_bert, tmp_path, length_expert=True, length_correct=False, max_steps=10, eval_every=100)
    full = train(cfg, run_dir=tmp_path / "full")
    assert set(full["length_expert"]) == {"chat", "safety"} and max(full["length_expert"].values()) < -0.05
    part = tmp_path / "part"
    train(cfg, run_dir=part, stop_after=4)
    again = train(cfg, run_dir=part)
    assert again["length_expert"] == full["length_expert"]
    a, b = load_file(tmp_path / "full" / "last" / "adapter.safetensors"), load_file(part / "last" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    betas = [[r[f"length_beta_{d}"] for d in ("chat", "safety")] for r in _rows_of(part) if "loss" in r]
    assert betas == [[r[f"length_beta_{d}"] for d in ("chat", "safety")] for r in _rows_of(tmp_path / "full")
                     if "loss" in r]
    # the scorer never sees β: the kept model's reward is the encoder's own
    assert "length_expert" not in json.loads((tmp_path / "full" / "last" / "adapter.json").read_text())["tensors"]
    # a run saved without the expert cannot be resumed with one: said, not silently started from β = 0
    plain = tmp_path / "plain"
    train(TrainConfig(**{**cfg.to_dict(), "length_expert": False, "data": cfg.data, "val": cfg.val,
                         "betas": tuple(cfg.betas)}), run_dir=plain, stop_after=2)
    with pytest.raises(ValueError, match=r"plain/last: saved without a length expert"):
        train(cfg, run_dir=plain)


def test_rewardbench_scoring_uses_each_sections_slope(tiny_bert):
    """tinyrm eval scores pointwise pairs with the slope of the pair's domain, as validation does."""
    import tinyrm
    from tinyrm.evaluate import correctness

    rm = RewardModel(tinyrm.load_encoder(tiny_bert), "pointwise", max_len=64)
    q, long_, short = ["Name a fruit"] * 2, ["apple " * 20] * 2, ["pear"] * 2
    rm.length_slopes = {"chat": 100.0, "safety": -100.0, "*": 0.0}    # huge: length decides everything
    correct, _, _ = correctness(rm, q, long_, short, ["chat", "safety"])
    assert correct == [0.0, 1.0]   # chat penalises length -> the long chosen loses; safety rewards it
