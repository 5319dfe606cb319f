"""Length decorrelation of the pointwise reward: the slope fit against hand values, the scorer applying
it, and a training run that fits, stores and validates it."""
import json
import math
import random

import pytest
import torch

from conftest import write_tiny_bert
from tinyrm.calibrate import fit_slopes, load_slopes, log_length, save_slopes
from tinyrm.data import MixEntry
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
    save_slopes(tmp_path, s)
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
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # compare() goes through score(): the corrected difference
    z = rm.compare_logits(q[:1], resp[1:2], resp[:1], ["chat"])
    r_long, r_short = rm.score(q[:2], resp[1::-1], ["chat", "chat"])
    assert float(z) == pytest.approx(r_long - r_short, abs=1e-5)
    rm.length_slopes = None
    raw_long, raw_short = rm.score(q[:2], resp[1::-1], ["chat", "chat"])
    assert float(z) == pytest.approx(raw_long - raw_short - 0.7 * (math.log1p(20) - math.log1p(1)), abs=1e-5)


def test_training_fits_stores_and_validates_the_correction(tiny_bert, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(60, 3)))
    cfg = TrainConfig(model=str(tiny_bert), data=[MixEntry(path=str(data))], mode="pointwise", max_len=64, rank=4,
                      alpha=8.0, targets=["query", "value", "dense"], freeze_layers=1, batch_pairs=4,
                      micro_tokens=200, lr=1e-3, max_steps=4, eval_every=2, save_every=100, val_frac=0.2,
                      val_max_pairs=20, threads=1, runs_dir=str(tmp_path / "runs"), length_correct=True,
                      length_fit_pairs=30)
    s = train(cfg)
    best = tmp_path / s["run_dir"] / "best"
    slopes = s["length_slopes"]
    assert set(slopes) == {"chat", "safety", "*"}
    # stored (and so applied by the scorer) exactly when the corrected reward validates at least as well
    assert s["length_correction_applied"] == (s["corrected_val_score"] >= s["best_val_score"])
    assert (load_slopes(best) is not None) == s["length_correction_applied"]
    from tinyrm.calibrate import correct_run
    from tinyrm.train import load_data
    train_pairs, val, _ = load_data(cfg)
    rows = []
    for raw, applied in ((2.0, False), (-1.0, True)):       # unbeatable / always beaten raw scores
        out = correct_run(cfg, best, train_pairs, val, rows.append, lambda m: None, raw)
        assert out["length_correction_applied"] is applied and (load_slopes(best) is not None) is applied
        assert out["length_slopes"] == pytest.approx(slopes)      # the same seeded fit each time
    assert [r["length_correction_applied"] for r in rows] == [False, True]
    rm = RewardModel.load(tmp_path / s["run_dir"])
    assert rm.length_slopes == pytest.approx(slopes)
    # the fit used the raw reward of a seeded sample of 30 TRAINING pairs: refit by hand, the same slopes,
    # and the corrected reward on that sample has no linear trend in log length left (per domain)
    sample = random.Random(f"length-fit-{cfg.seed}").sample(train_pairs, 30)
    q, resp = [p.prompt for p in sample] * 2, [p.chosen for p in sample] + [p.rejected for p in sample]
    doms = [p.domain for p in sample] * 2
    rm.length_slopes = None
    raw = rm.score(q, resp)
    assert fit_slopes(raw, [log_length(t) for t in resp], doms) == pytest.approx(slopes, abs=1e-5)
    rm.length_slopes = slopes
    corrected = rm.score(q, resp, doms)
    for dom in ("chat", "safety"):
        idx = [i for i, d in enumerate(doms) if d == dom]
        assert fit_slopes([corrected[i] for i in idx], [log_length(resp[i]) for i in idx], [dom] * len(idx))[dom] \
            == pytest.approx(0.0, abs=1e-4)
    # the summary's corrected validation is validate() with those slopes
    v = validate(rm.enc, cfg, val, slopes)
    assert s["corrected_val_score"] == pytest.approx(v["val_score"])
    assert s["length_slopes"] == pytest.approx(slopes)
    # a pairwise run never gets one
    s2 = train(TrainConfig(**{**cfg.to_dict(), "mode": "pairwise", "data": cfg.data, "val": cfg.val,
                              "runs_dir": str(tmp_path / "runs2"),
                              "betas": tuple(cfg.betas)}))
    assert load_slopes(tmp_path / s2["run_dir"] / "best") is None and "length_slopes" not in s2


def test_rewardbench_scoring_uses_each_sections_slope(tiny_bert):
    """tinyrm eval scores pointwise pairs with the slope of the pair's domain, as validation does."""
    import tinyrm
    from tinyrm.evaluate import correctness

    rm = RewardModel(tinyrm.load_encoder(tiny_bert), "pointwise", max_len=64)
    q, long_, short = ["Name a fruit"] * 2, ["apple " * 20] * 2, ["pear"] * 2
    rm.length_slopes = {"chat": 100.0, "safety": -100.0, "*": 0.0}    # huge: length decides everything
    correct, _, _ = correctness(rm, q, long_, short, ["chat", "safety"])
    assert correct == [0.0, 1.0]   # chat penalises length -> the long chosen loses; safety rewards it
