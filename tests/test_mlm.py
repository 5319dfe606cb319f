"""The auxiliary masked-LM loss (tinyrm/mlm.py): which tokens it hides, its numbers against transformers'
BertForMaskedLM in float64, its weight in the step's gradient, and exact resume with it on."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from tinyrm.mlm import answer_and_mlm, hide_tokens, mask_generator
from tinyrm.prompts import Cloze
from tinyrm.objective import step_loss
from tinyrm.train import train
from tinyrm.weights import load_encoder
from conftest import write_tiny_bert
from test_train import _cfg, _write, full_and_resumed_agree, repeat_task
from tolerance import encoder_tol, f32_bound

TEXTS = [("What is the capital of France?", "Paris is the capital of France."),
         ("Name a prime number.", "Seven is a prime number, and so is eleven."),
         ("Say hello.", "Hello there! How can I help you today with anything at all?")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path):
    folder = write_tiny_bert(tmp_path_factory.mktemp("bert-mlm"), minilm_path, seed=3, layers=2)
    enc = load_encoder(folder)
    return folder, enc, Cloze.for_encoder(enc, "pointwise", "domain", 64)


def _examples(cloze):
    return [cloze.pointwise(q, r) for q, r in TEXTS]


def test_hides_only_text_tokens_and_is_a_function_of_the_seed(tiny):
    _, _, cloze = tiny
    exs, sp = _examples(cloze), cloze.sp
    seqs, hidden, targets = hide_tokens(exs, sp, 0.5, mask_generator(17, 3, 0))
    special = {sp.cls_id, sp.sep_id, sp.pad_id, sp.mask_id}
    flat = []
    for e, s, pos in zip(exs, seqs, hidden):
        assert len(s) == len(e.input_ids) and e.mask_pos not in pos
        for i, (a, b) in enumerate(zip(e.input_ids, s)):
            if i in pos:
                assert b == sp.mask_id and a not in special
                flat.append(a)
            else:
                assert a == b                                  # everything else, the answer slot included
    assert flat == targets and len(targets) > 0
    again = hide_tokens(exs, sp, 0.5, mask_generator(17, 3, 0))
    assert again == (seqs, hidden, targets)
    assert hide_tokens(exs, sp, 0.5, mask_generator(17, 3, 1))[1] != hidden      # another micro-batch
    assert hide_tokens(exs, sp, 0.0, mask_generator(17, 3, 0))[2] == []


def test_hidden_fraction_matches_mlm_frac(tiny):
    """Over many sequences the share of text tokens hidden is frac, within 5 binomial standard errors."""
    _, _, cloze = tiny
    sp, frac = cloze.sp, 0.15
    exs = _examples(cloze) * 200
    _, hidden, _ = hide_tokens(exs, sp, frac, mask_generator(0, 0, 0))
    special = {sp.cls_id, sp.sep_id, sp.pad_id, sp.mask_id}
    n = sum(sum(1 for i, t in enumerate(e.input_ids) if t not in special and i != e.mask_pos) for e in exs)
    k = sum(len(p) for p in hidden)
    assert abs(k / n - frac) < 5 * math.sqrt(frac * (1 - frac) / n)


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_answer_logits_and_mlm_loss_equal_transformers_in_float64(arch, tiny, tiny_modernbert):
    """answer_and_mlm against transformers' own masked-LM model (float64) on the same hidden tokens."""
    if arch == "bert":
        from transformers import BertForMaskedLM
        folder, enc, cloze = tiny
        ref = BertForMaskedLM.from_pretrained(folder)
    else:
        folder, ref = tiny_modernbert
        enc = load_encoder(folder)
        cloze = Cloze.for_encoder(enc, "pointwise", "domain", 64)
    ref = ref.double().eval()
    exs = _examples(cloze)
    vocab = torch.tensor(cloze.answer_ids)
    with torch.no_grad():
        lg, mlm, m = answer_and_mlm(enc, exs, vocab, cloze.sp, 0.3, mask_generator(5, 0, 0))
    seqs, hidden, targets = hide_tokens(exs, cloze.sp, 0.3, mask_generator(5, 0, 0))
    assert m == len(targets) > 0
    L = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (L - len(s)) for s in seqs])
    att = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs])
    kw = {"token_type_ids": torch.tensor([e.token_type_ids + [0] * (L - len(e.input_ids)) for e in exs])} \
        if arch == "bert" else {}
    with torch.no_grad():
        full = ref(input_ids=ids, attention_mask=att, **kw).logits                    # [B, L, V] float64
    want_lg = torch.stack([full[b, e.mask_pos][vocab] for b, e in enumerate(exs)])
    at_hidden = torch.stack([full[b, i] for b, pos in enumerate(hidden) for i in pos])     # [M, V]
    want_mlm = F.cross_entropy(at_hidden, torch.tensor(targets))
    tol = encoder_tol(enc, full)
    torch.testing.assert_close(lg.double(), want_lg, **tol)
    # the loss is a mean of (logsumexp − target logit): at most twice the logits' error
    assert abs(mlm.item() - want_mlm.item()) <= 2 * tol["atol"]


def test_step_gradient_is_bt_plus_weighted_mean_mlm(tiny):
    """step_loss's backward equals autograd of the loss written out by hand in float64: the Bradley–Terry
    sum over n_diffs plus mlm_weight × the micro-batch's mean cross-entropy × its share of the diffs."""
    folder, _, cloze = tiny
    enc = load_encoder(folder).double()
    for p in enc.parameters():
        p.requires_grad_(False)
    w_head = enc.head_modules()[0].dense.weight
    w_head.requires_grad_(True)
    pairs = [[(cloze.pointwise(q, r), 0), (cloze.pointwise(q, r[: len(r) // 2]), 1)] for q, r in TEXTS]
    vocab = torch.tensor(cloze.answer_ids)
    cfg = type("C", (), {"mode": "pointwise", "margin": 0.0, "label_smoothing": 0.0, "mlm_weight": 0.7,
                         "mlm_frac": 0.3})()
    n_diffs = 5                          # this micro-batch holds 3 of the step's 5 diffs
    step_loss(enc, cfg, pairs, [0, 1, 2], vocab, n_diffs, torch.autocast("cpu", enabled=False), None,
              (cloze.sp, mask_generator(9, 2, 1)))
    got, w_head.grad = w_head.grad.clone(), None
    exs = [e for p in pairs for e, _ in p]
    lg, mlm, _ = answer_and_mlm(enc, exs, vocab, cloze.sp, 0.3, mask_generator(9, 2, 1))
    z = lg[:, 0] - lg[:, 1]
    diff = z[0::2] - z[1::2]
    loss = -F.logsigmoid(diff).sum() / n_diffs + 0.7 * mlm * (3 / n_diffs)
    (want,) = torch.autograd.grad(loss, w_head, retain_graph=True)
    # the trainer rounds the answer logits to float32 before the loss: one float32 rounding of the logits
    # and of the loss terms, each carried into the gradient at most at the gradient's own scale
    torch.testing.assert_close(got, want, rtol=0, atol=f32_bound(want, n_terms=enc.config.hidden_size, steps=4))
    # the MLM term moves the gradient: without it the result differs by far more than the bound
    (bt_only,) = torch.autograd.grad(-F.logsigmoid(diff).sum() / n_diffs, w_head)
    assert (want - bt_only).abs().max() > 100 * f32_bound(want, n_terms=enc.config.hidden_size, steps=4)


def test_training_with_mlm_resumes_bit_for_bit_and_reports_its_loss(tiny, tmp_path):
    folder = tiny[0]
    data = _write(tmp_path / "d.jsonl", repeat_task(60, 1))
    kw = dict(max_steps=6, mlm_weight=0.5, mlm_frac=0.2, eval_every=100)
    full_and_resumed_agree(tmp_path, folder, data, kw, stop_after=3)
    part = tmp_path / "part"
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    full = rows(tmp_path / "full")
    assert [r["mlm_loss"] for r in full] == [r["mlm_loss"] for r in rows(part)]
    # a random 30522-word head starts near log(V) and the loss is a real cross-entropy, not a constant
    assert all(0 < r["mlm_loss"] < 2 * math.log(30522) for r in full) and len({r["mlm_loss"] for r in full}) > 1
    plain = train(_cfg(tmp_path, folder, data, max_steps=2, eval_every=100), run_dir=tmp_path / "plain")
    assert all("mlm_loss" not in r for r in rows(tmp_path / "plain")) and plain["steps"] == 2
