"""The step loss (tinyrm/objective.py) with the pairwise cloze trained beside the pointwise one
(`pairwise_weight`): its gradient against the loss written out by hand in float64, its examples and answer
words, the recipe's checks, and a run that trains with it, resumes bit for bit and scores pointwise."""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tinyrm.errors import RecipeError
from tinyrm.objective import AUX, step_loss, with_pairwise
from tinyrm.prompts import Cloze
from tinyrm.recipe import load_recipe
from tinyrm.scorer import RewardModel, mask_logits
from tinyrm.train import answer_vocab, build_examples, train
from tinyrm.weights import load_encoder
from conftest import write_tiny_bert
from test_train import _cfg, _write, full_and_resumed_agree, repeat_task
from tolerance import encoder_tol, f32_bound

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

PAIRS = [("What is the capital of France?", "Paris is the capital of France.", "It is Lyon."),
         ("Name a prime number.", "Seven is a prime number.", "Nine, which is also odd and small."),
         ("Say hello.", "Hello there! How can I help?", "No.")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path):
    return write_tiny_bert(tmp_path_factory.mktemp("bert-objective"), minilm_path, seed=5, layers=2)


class _Pair:
    def __init__(self, prompt, chosen, rejected, domain="chat"):
        self.prompt, self.chosen, self.rejected, self.domain = prompt, chosen, rejected, domain


def _float64_head_only(tiny):
    """The tiny encoder in float64 with only the MLM head's dense weight trainable, and its pointwise cloze."""
    enc = load_encoder(tiny).double()
    for p in enc.parameters():
        p.requires_grad_(False)
    w_head = enc.head_modules()[0].dense.weight
    w_head.requires_grad_(True)
    return enc, w_head, Cloze.for_encoder(enc, "pointwise", "domain", 96)


def test_side_pairwise_gradient_is_pointwise_plus_weighted_pairwise_mean(tiny):
    """step_loss with side rows: the pointwise Bradley–Terry sum over n_diffs plus pairwise_weight × the
    pairwise Bradley–Terry sum over 2·n_diffs, each read from its own two answer words."""
    enc, w_head, point = _float64_head_only(tiny)
    pair = Cloze.for_encoder(enc, "pairwise", "domain", 96)
    rows = [_Pair(*t) for t in PAIRS]
    examples = [with_pairwise(point.training_examples(r), pair.training_examples(r)) for r in rows]
    assert [y for _, y in examples[0]] == [0, 1, AUX, AUX + 1]
    vocab = torch.tensor(point.answer_ids + pair.answer_ids)
    cfg = type("C", (), {"mode": "pointwise", "margin": 0.0, "label_smoothing": 0.0, "mlm_weight": 0.0,
                         "pairwise_weight": 0.6})()
    n_diffs = 5                                          # this micro-batch holds 3 of the step's 5 pairs
    diff, tokens, _ = step_loss(enc, cfg, examples, [0, 1, 2], vocab, n_diffs,
                                torch.autocast("cpu", enabled=False))
    got, w_head.grad = w_head.grad.clone(), None
    assert tokens == sum(len(e.input_ids) for ex in examples for e, _ in ex)

    pw = [point.pointwise(r.prompt, x) for r in rows for x in (r.chosen, r.rejected)]
    r = mask_logits(enc, pw, torch.tensor(point.answer_ids))
    z = r[:, 0] - r[:, 1]
    want_diff = z[0::2] - z[1::2]                                            # r(chosen) - r(rejected)
    both = [pair.pairwise(x.prompt, a, b) for x in rows for a, b in ((x.chosen, x.rejected), (x.rejected, x.chosen))]
    c = mask_logits(enc, both, torch.tensor(pair.answer_ids))
    side = (c[:, 0] - c[:, 1]) * torch.tensor([1.0, -1.0] * len(rows), dtype=c.dtype)   # the chosen's log-odds
    loss = -F.logsigmoid(want_diff).sum() / n_diffs + 0.6 * -F.logsigmoid(side).sum() / (2 * n_diffs)
    (want,) = torch.autograd.grad(loss, w_head, retain_graph=True)
    tol = f32_bound(want, n_terms=enc.config.hidden_size, steps=4)
    # the returned diffs are the pointwise ones: what the step's accuracy and logged loss report
    # (each logit rounded to float32 once, then two float32 subtractions)
    torch.testing.assert_close(diff.double(), want_diff.detach(), rtol=0, atol=f32_bound(r, n_terms=1, steps=4))
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    (point_only,) = torch.autograd.grad(-F.logsigmoid(want_diff).sum() / n_diffs, w_head)
    assert (want - point_only).abs().max() > 100 * tol              # the side term moves the gradient


def test_label_smoothing_gradient_is_the_conservative_bradley_terry_loss(tiny):
    """step_loss with `label_smoothing` ε: the gradient of Σ [(1-ε)·-log σ(d) + ε·-log σ(-d)] / n_diffs over
    the pointwise diffs d = r(chosen) - r(rejected), written out in float64."""
    enc, w_head, point = _float64_head_only(tiny)
    rows = [_Pair(*t) for t in PAIRS]
    examples = [point.training_examples(r) for r in rows]
    vocab = torch.tensor(point.answer_ids)
    cfg = type("C", (), {"mode": "pointwise", "margin": 0.0, "label_smoothing": 0.2, "mlm_weight": 0.0,
                         "pairwise_weight": 0.0})()
    step_loss(enc, cfg, examples, [0, 1, 2], vocab, 4, torch.autocast("cpu", enabled=False))
    got, w_head.grad = w_head.grad.clone(), None

    r = mask_logits(enc, [point.pointwise(x.prompt, y) for x in rows for y in (x.chosen, x.rejected)], vocab)
    d = (r[:, 0] - r[:, 1])[0::2] - (r[:, 0] - r[:, 1])[1::2]
    (want,) = torch.autograd.grad((0.8 * -F.logsigmoid(d) + 0.2 * -F.logsigmoid(-d)).sum() / 4, w_head,
                                  retain_graph=True)
    tol = f32_bound(want, n_terms=enc.config.hidden_size, steps=4)
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    (plain,) = torch.autograd.grad(-F.logsigmoid(d).sum() / 4, w_head)
    assert (want - plain).abs().max() > 100 * tol                    # the smoothing moves the gradient


def test_examples_and_answer_words_with_and_without_side_rows(tiny, tmp_path):
    enc = load_encoder(tiny)
    rows = [_Pair(*t) for t in PAIRS]
    plain = _cfg(tmp_path, tiny, "unused", mode="pointwise", max_len=96)
    both = _cfg(tmp_path, tiny, "unused", mode="pointwise", max_len=96, pairwise_weight=1.0)
    point = Cloze.for_encoder(enc, "pointwise", "domain", 96)
    pair = Cloze.for_encoder(enc, "pairwise", "domain", 96)
    ids = lambda ex: [(e.input_ids, y) for e, y in ex]
    for r, a, b in zip(rows, build_examples(enc, plain, rows), build_examples(enc, both, rows)):
        assert ids(a) == ids(point.training_examples(r))
        assert ids(b) == ids(a) + [(e.input_ids, AUX + y) for e, y in pair.training_examples(r)]
    assert answer_vocab(enc, plain, "cpu").tolist() == list(point.answer_ids)
    assert answer_vocab(enc, both, "cpu").tolist() == list(point.answer_ids + pair.answer_ids)
    assert point.words == ("yes", "no") and pair.words == ("0", "1")


def test_recipe_checks_pairwise_weight(tmp_path, tiny):
    with pytest.raises(RecipeError, match="pairwise_weight.*>= 0"):
        load_recipe("default", ["--pairwise_weight", "-1"])
    data = _write(tmp_path / "d.jsonl", repeat_task(20, 1))
    with pytest.raises(RecipeError, match="pairwise_weight adds a pairwise loss"):
        train(_cfg(tmp_path, tiny, data, mode="pairwise", pairwise_weight=0.5, max_steps=1))


def test_training_with_side_pairwise_resumes_bit_for_bit_and_scores_pointwise(tiny, tmp_path):
    data = _write(tmp_path / "d.jsonl", repeat_task(60, 1))
    kw = dict(mode="pointwise", max_steps=6, pairwise_weight=1.0, eval_every=6)
    full_and_resumed_agree(tmp_path, tiny, data, kw, stop_after=3)
    a = load_file(tmp_path / "full" / "last" / "adapter.safetensors")
    plain = tmp_path / "plain"
    train(_cfg(tmp_path, tiny, data, **{**kw, "pairwise_weight": 0.0}), run_dir=plain)
    c = load_file(plain / "last" / "adapter.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)                # the side loss trained the weights
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    # every step's forward carried the pairwise sequences too: more tokens than the pointwise run's
    assert all(s["tokens"] > p["tokens"] for s, p in zip(rows(tmp_path / "full"), rows(plain)))
    meta = json.loads((tmp_path / "full" / "best" / "adapter.json").read_text())
    assert meta["answer_words"] == ["yes", "no"]                      # the kept model scores pointwise
    side_head_is_what_the_side_loss_trained(tmp_path / "full" / "best")


def side_head_is_what_the_side_loss_trained(ckpt):
    """bench/heads.py reads the kept model's pairwise head through a pairwise RewardModel on its encoder.
    That must be the reading the side loss trained: training's own side rows (build_examples) through
    training's four-word vocabulary, "0" minus "1" (columns 2 and 3), both orders averaged; and the
    pointwise head the same rows' "yes" minus "no". The token counts are those rows' lengths."""
    import heads as H
    cfg, val, _, z_point, z_pair, tokens, _ = H.heads(ckpt)
    enc = RewardModel.load(ckpt).enc
    exs = build_examples(enc, cfg, val)                      # per pair: (chosen, rejected), then (ab, ba)
    seqs = [e for ex in exs for e, _ in ex]
    assert [y for ex in exs for _, y in ex] == [0, 1, AUX, AUX + 1] * len(val)
    with torch.no_grad():
        lg = mask_logits(enc, seqs, answer_vocab(enc, cfg, "cpu")).view(len(val), 4, 4)
    ref_point = (lg[:, 0, 0] - lg[:, 0, 1]) - (lg[:, 1, 0] - lg[:, 1, 1])
    ref_pair = ((lg[:, 2, 2] - lg[:, 2, 3]) - (lg[:, 3, 2] - lg[:, 3, 3])) / 2
    torch.testing.assert_close(z_point[:len(val)], ref_point, **encoder_tol(enc, lg, sides=2))
    torch.testing.assert_close(z_pair[:len(val)], ref_pair, **encoder_tol(enc, lg, sides=2))
    assert tokens["pointwise"] * len(val) == sum(len(e.input_ids) for ex in exs for e, _ in ex[:2])
    assert tokens["pairwise"] * len(val) == sum(len(e.input_ids) for ex in exs for e, _ in ex[2:])
