"""The relevance floor (tinyrm/relevance.py, relevance_fit.py): the sentence embedding against
transformers' BertModel in float64, β against a brute-force likelihood, the fit rows, the term the
scorer adds (by hand from the reference embedding), a stored file's errors, the hf export that carries
the plain base, and a training run that fits, stores and validates it."""
from __future__ import annotations

import json
import math

import pytest
import torch

import tinyrm
from tinyrm import relevance as R
from tinyrm import relevance_fit as F
from tinyrm.data import PreferencePair
from tinyrm.errors import CheckpointError
from tinyrm.export import export_model
from tinyrm.scorer import RewardModel
from test_train import tiny_bert  # noqa: F401  (the fixture)
from tolerance import U32, encoder_tol, reward_bound

TEXTS = ["How do I boil an egg?", "Put the egg in boiling water for nine minutes, then cool it.",
         "The capital of France is Paris. " * 6, "x"]


def _reference(minilm_path, seqs):
    """float64 transformers BertModel, mean-pooled over the real tokens: ([N, H] unit vectors, per-value atol)."""
    from transformers import BertModel
    L = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (L - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs])
    with torch.no_grad():
        h = BertModel.from_pretrained(minilm_path).double()(input_ids=ids, attention_mask=mask).last_hidden_state
    mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return mean / mean.norm(dim=1, keepdim=True), h[mask.bool()], mean.norm(dim=1, keepdim=True)


def test_embedding_is_transformers_mean_pooling(minilm_path):
    emb = R.SentenceEmbedder(minilm_path, max_len=24, max_tokens=40)        # 40: several packed batches
    ours = emb(TEXTS + TEXTS[:1]).double()                                    # a repeat is embedded once
    seqs = [emb.ids(t) for t in TEXTS]
    assert max(map(len, seqs)) == 24 and emb.tokens == sum(map(len, seqs))   # the third is cut to 24 tokens
    ref, hidden, norms = _reference(minilm_path, seqs)
    # v/|v| moves by at most 2·|Δv|₂/|v|₂ ≤ 2·√H·atol/|v|₂ in any coordinate
    bound = 2 * math.sqrt(ref.shape[1]) * encoder_tol(emb.enc, hidden)["atol"] / norms
    assert ((ours[:4] - ref).abs() <= bound).all()
    assert torch.equal(ours[4], ours[0]) and emb([]).shape == (0, ref.shape[1])


def test_beta_is_the_likelihood_optimum_and_zero_when_the_term_only_hurts():
    g = torch.Generator().manual_seed(0)
    z, s = torch.randn(400, generator=g), torch.randn(400, generator=g) + 0.3   # the term leans right
    loss = lambda b: torch.nn.functional.softplus(-(z.double() + b * s.double())).sum().item()  # noqa: E731
    best = min((i / 1000 for i in range(5001)), key=loss)                                    # float64 grid
    assert 0 < best < 5 and abs(F.fit_beta(z, s) - best) <= 1e-3
    assert F.fit_beta(z, -s.abs()) == 0.0


def test_fit_rows_come_from_training_pairs_of_each_domain():
    train = [PreferencePair(f"q{d}{i}", f"good {d}{i}", f"bad {d}{i}", d, "f") for d in F.DOMAIN_ORDER
             for i in range(20)] + [PreferencePair("qo", "a", "b", "other", "f")]
    rows = F.fit_rows(train, per_domain=5, made=3, seed=1)
    assert rows == F.fit_rows(train, per_domain=5, made=3, seed=1)             # seeded
    for d in F.DOMAIN_ORDER:
        prefs = [p for p in rows if p.domain == d and p in train]
        made = [p for p in rows if p.domain == d and p not in train]
        assert len(prefs) == 5 and len(made) == 3 and all(m.source == F.MADE + "f" for m in made)
        for m in made:   # a picked pair's prompt and chosen answer against another prompt's chosen answer
            src = next(p for p in prefs if p.prompt == m.prompt)
            other = next(p for p in train if p.chosen == m.rejected)
            assert m.chosen == src.chosen and other.prompt != m.prompt and other.domain == d
    assert [p.domain for p in rows if p.domain == "other"] == ["other"]        # one pair: nothing to borrow
    # a recipe's generated pairs in the training set are not preference data: never drawn
    aug = [PreferencePair(f"q{i}", "g", "b", "chat", f"{k}:f") for i in range(50) for k in ("style", "neighbour")]
    assert F.fit_rows(train + aug, per_domain=5, made=3, seed=1) == rows


def test_shortfall_and_term_by_hand():
    fitted = {"floors": {"chat": 0.3, "*": 0.2}, "weights": {"chat": 10.0, "*": 4.0}}
    cos = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.25])
    got = R.term(fitted, cos, ["chat", "chat", None, "safety", None])
    torch.testing.assert_close(got, torch.tensor([0.0, 10 * -0.2, 4 * -0.1, 4 * -0.1, 0.0]))
    assert R.term(fitted, cos[:2], None).tolist() == pytest.approx([0.0, 4 * -0.1])


@pytest.fixture(scope="module")
def floored_run(tmp_path_factory, minilm_path):
    """A MiniLM pointwise checkpoint (test_export's stand-in for training) with a relevance file beside it."""
    import test_export as TE
    from tinyrm.dora import add_dora, freeze_layers
    enc = tinyrm.load_encoder(minilm_path)
    add_dora(enc, 16, 32, targets=["query", "key", "value", "dense"])
    freeze_layers(enc, 2)
    for p in [*enc.head_modules()[0].parameters(), enc.decoder_module().bias]:
        p.requires_grad_(True)
    TE._perturb(enc, 3)
    fitted = {"floors": {"chat": 0.45, "*": 0.3}, "weights": {"chat": 12.0, "*": 5.0}, "quantile": 0.1,
              "max_len": 40}
    return TE._save_run(tmp_path_factory.mktemp("floored"), enc, minilm_path, "pointwise",
                        {R.FILE: F.text(fitted, {"step": 1})}, max_len=128), fitted


def test_scorer_adds_the_floor_as_computed_from_the_reference_embedding(floored_run, minilm_path):
    run, fitted = floored_run
    prompts = ["How do I boil an egg?"] * 2 + ["Name a primary colour."] * 2
    resps = ["Boil the egg in water for nine minutes.", "Paris is the capital of France.",
             "Red is a primary colour.", "Eggs take nine minutes in boiling water."]
    doms = ["chat", "chat", None, "safety"]
    rm = RewardModel.load(run)
    assert rm.relevance["weights"] == fitted["weights"] and rm.embedder.max_len == 40
    got = torch.tensor(rm.score(prompts, resps, doms), dtype=torch.float64)
    rm.relevance = None
    plain = torch.tensor(rm.score(prompts, resps, doms), dtype=torch.float64)
    seqs = [rm.embedder.ids(t) for t in prompts + resps]
    ref, hidden, norms = _reference(minilm_path, seqs)
    cos = (ref[:4] * ref[4:]).sum(1)
    want = plain + torch.tensor([12.0, 12.0, 5.0, 5.0], dtype=torch.float64) * (cos - torch.tensor(
        [0.45, 0.45, 0.3, 0.3], dtype=torch.float64)).clamp(max=0)
    assert (want - plain).abs().min() == 0 and (want - plain).abs().max() > 1     # one above, one far below
    # cos of two unit vectors, each off by the bound above: ≤ 2·√H·max(bound); times the largest weight
    cos_tol = 2 * math.sqrt(ref.shape[1]) * (2 * math.sqrt(ref.shape[1]) * encoder_tol(
        rm.embedder.enc, hidden)["atol"] / norms).max().item()
    add = 2 * U32 * (plain.abs() + (want - plain).abs())             # the float32 sum r + term, and the term
    assert ((got - want).abs() <= 12.0 * cos_tol + add).all()


def test_a_bad_relevance_file_is_named_and_the_export_carries_the_plain_base(floored_run, tmp_path):
    run, fitted = floored_run
    out = export_model(run, tmp_path / "hf")
    assert json.loads((out / "tinyrm.json").read_text())["relevance"] == fitted
    assert sorted(p.name for p in (out / "relevance-encoder").iterdir()) == ["config.json", "model.safetensors",
                                                                            "tokenizer.json"]
    assert "min(0, c - floors[domain])" in (out / "README.md").read_text()
    args = (["How do I boil an egg?", "Name a primary colour."], ["Paris is the capital.", "Red."], ["chat", None])
    mine, ref = RewardModel.load(out), RewardModel.load(run)
    assert mine.relevance == ref.relevance
    assert max(abs(a - b) for a, b in zip(mine.score(*args), ref.score(*args))) < reward_bound(ref.enc)
    bad = tmp_path / "bad"
    import shutil
    shutil.copytree(run, bad)
    (bad / "best" / R.FILE).write_text(json.dumps({"floors": {"chat": 0.1}, "weights": {"chat": 1.0},
                                                   "quantile": 0.1, "max_len": 40}))
    with pytest.raises(CheckpointError, match=f"{bad / 'best' / R.FILE}.*'\\*'"):
        RewardModel.load(bad)


def test_training_fits_stores_and_validates_the_floor(tiny_bert, tmp_path):
    """relevance_floor > 0: after the last step the kept checkpoint gets relevance.json (fitted on training
    rows), metrics.jsonl a relevance_* row and the summary its figures; scoring the run's held-out pairs
    with the stored floor reproduces that row, and a resumed finished run fits the same values again."""
    from test_train import _cfg, _write, repeat_task
    from tinyrm.mix import load_data
    from tinyrm.train import train
    from tinyrm.validation import metrics
    rows = repeat_task(80, 5) + [dict(r, domain="safety") for r in repeat_task(80, 6)]
    cfg = _cfg(tmp_path, tiny_bert, _write(tmp_path / "d.jsonl", rows), mode="pointwise", max_steps=3,
               relevance_floor=0.2, relevance_fit_pairs=12, relevance_fit_made=5)
    s = train(cfg, run_dir=tmp_path / "run")
    stored = R.load(tmp_path / "run" / "best")
    assert set(stored["weights"]) == {"chat", "safety", "*"} and stored["quantile"] == 0.2
    assert s["relevance"]["weights"] == stored["weights"]
    row = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["relevance_val_score"] == s["relevance"]["val_score"]
    _, val, _ = load_data(cfg)
    z = RewardModel.load(tmp_path / "run").compare_logits([p.prompt for p in val], [p.chosen for p in val],
                                                          [p.rejected for p in val], [p.domain for p in val])
    assert metrics(z, val)["val_score"] == pytest.approx(row["relevance_val_score"])
    # τ by hand: the quantile of cos(prompt, chosen) over the fit rows' preference pairs of the domain
    fit_rows = F.fit_rows(load_data(cfg)[0], 12, 5, cfg.seed)
    emb = R.SentenceEmbedder(tiny_bert, cfg.max_len)
    prefs = [p for p in fit_rows if p.domain == "chat" and not p.source.startswith(F.MADE)]
    cos = emb.cosines([p.prompt for p in prefs], [p.chosen for p in prefs])
    assert stored["floors"]["chat"] == pytest.approx(torch.quantile(cos, 0.2).item(), abs=1e-5)
    train(cfg, run_dir=tmp_path / "run")                    # resume a finished run: fitted afresh, the same
    assert R.load(tmp_path / "run" / "best")["weights"] == pytest.approx(stored["weights"])


def test_reading_past_the_trained_length_is_allowed_with_a_warning(floored_run, tmp_path, caplog):
    """A caller may score at another max_len than the model trained at (128 here); a longer one reads more of
    each answer, and is warned about, by the checkpoint and by its export alike; a shorter one is not."""
    run, _ = floored_run
    long = "word " * 300
    export_model(run, tmp_path / "export")
    for path in (run, tmp_path / "export"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="tinyrm.scorer"):
            as_trained, longer = RewardModel.load(path), RewardModel.load(path, max_len=256)
            shorter = RewardModel.load(path, max_len=64)
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) == 1 and "max_len 256, longer than the 128 tokens" in warned[0]
        assert (as_trained.max_len, longer.max_len, shorter.max_len) == (128, 256, 64)
        assert len(longer.cloze.pointwise("q", long).input_ids) == 256
        assert len(as_trained.cloze.pointwise("q", long).input_ids) == 128


def test_the_floors_validation_adds_its_terms_to_the_kept_rewards(tiny_bert, tmp_path, monkeypatch):
    """The validation that keeps a checkpoint hands on its raw rewards of val + probes (kept in the trainer
    state's best); after training, the floor's validation adds the length and relevance terms to them
    (RewardModel.add_terms) instead of a second forward over every answer. They agree with a fresh scoring
    within float32 rounding (that pass batches the answers beside the length-fit pairs), so the recorded
    figures are the fresh scoring's; without them attach_to_run scores afresh, as it did before."""
    from test_train import _cfg, _write, repeat_task
    from tinyrm.augment import probes as make_probes
    from tinyrm.checkpoint import load_trainer_state
    from tinyrm.mix import load_data
    from tinyrm.train import train
    from tinyrm.validation import metrics, probe_metrics
    rows = repeat_task(80, 5) + [dict(r, domain="safety") for r in repeat_task(80, 6)]
    cfg = _cfg(tmp_path, tiny_bert, _write(tmp_path / "d.jsonl", rows), mode="pointwise", max_steps=3, probes=2,
               length_correct=True, length_fit_pairs=16, relevance_floor=0.2, relevance_fit_pairs=12,
               relevance_fit_made=5)
    scored = []                                       # how many answers each forward pass of the scorer read
    forward = RewardModel._logits
    monkeypatch.setattr(RewardModel, "_logits", lambda self, exs: scored.append(len(exs)) or forward(self, exs))
    train(cfg, run_dir=tmp_path / "run")
    train_pairs, val, _ = load_data(cfg)
    probes = make_probes(val, cfg.probes, cfg.split_seed)
    held = list(val) + list(probes)
    n, doms = len(held), [p.domain for p in held] * 2
    qs, answers = [p.prompt for p in held] * 2, [p.chosen for p in held] + [p.rejected for p in held]
    kept = load_trainer_state(tmp_path / "run" / "last")["best"]["rewards"]            # [2, n]
    assert kept.shape == (2, n) and kept.dtype == torch.float32 and len(probes) > 0
    row = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]

    rm = RewardModel.load(tmp_path / "run")                       # with its length slopes and the floor
    assert rm.relevance is not None
    terms = (rm.relevance, rm.embedder, rm.length_slopes)
    rm.relevance = rm.embedder = rm.length_slopes = None
    fresh = torch.tensor(rm.score(qs, answers, doms))                                  # [2n] raw, alone
    tol = reward_bound(rm.enc) / 2                                                     # one reward, two passes
    torch.testing.assert_close(kept.reshape(-1), fresh, rtol=0, atol=tol)
    rm.relevance, rm.embedder, rm.length_slopes = terms
    z_fresh = rm.compare_logits(qs[:n], answers[:n], answers[n:], doms[:n])            # [n] what a user gets
    z_kept = rm.compare_logits(qs[:n], answers[:n], answers[n:], doms[:n], raw=kept)   # the terms added alone
    r = rm.add_terms(kept.reshape(-1), qs, answers, doms)                              # its rewards, for the bound
    # the terms are identical arithmetic on both sides: only the two rewards' rounding separates them
    torch.testing.assert_close(z_kept, z_fresh, rtol=0, atol=2 * tol + 8 * U32 * r.abs().max().item())
    assert (z_fresh.abs() > 1e-3).all()           # no pair near a tie, so rounding cannot flip a verdict
    want = {**metrics(z_fresh[:len(val)], val, cfg.select), **probe_metrics(z_fresh[len(val):], probes)}
    assert {k: row[f"relevance_{k}"] for k in want if want[k] == want[k]} == {k: v for k, v in want.items() if v == v}

    # the floor's validation read only the fit rows' answers; without the rewards it reads every held one too
    calls, step = [], json.loads((tmp_path / "run" / "summary.json").read_text())["best_step"]
    for given in (kept, None):
        scored.clear()
        F.attach_to_run(cfg, tmp_path / "run" / "best", step, train_pairs, val, probes, "cpu", lambda _: None, given)
        calls.append(sum(scored))
    assert calls[1] - calls[0] == 2 * n
