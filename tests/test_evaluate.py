"""`tinyrm eval` glue: verdicts from both orders, any-file accuracy by domain/source, RewardBench wiring."""
import json

import pytest
import torch

import tinyrm
from tinyrm import evaluate
from tinyrm.rewardbench import EXPECTED_COUNTS
from tinyrm.scorer import RewardModel
from conftest import write_tiny_bert
from tolerance import reward_bound  # float32 bounds (tests/tolerance.py)


@pytest.fixture(scope="module")
def rm(tmp_path_factory, minilm_path):
    folder = write_tiny_bert(tmp_path_factory.mktemp("bert-tiny-eval"), minilm_path, seed=1, layers=2)
    return RewardModel(tinyrm.load_encoder(folder), max_len=96)


def test_correctness_uses_both_orders(rm):
    prompts, good, bad = ["Q one", "Q two", "Q three"], ["yes indeed", "a b c", "x"], ["no", "d e", "y z"]
    correct, a, b = evaluate.correctness(rm, prompts, good, bad, ["chat"] * 3)
    z_ab, z_ba = rm.pairwise_logits(prompts, good, bad, ["chat"] * 3)
    assert correct == [float((x - y) / 2 > 0) for x, y in zip(z_ab.tolist(), z_ba.tolist())]
    assert a == [float(x > 0) for x in z_ab.tolist()]     # chosen shown first: needs z_ab > 0
    assert b == [float(y < 0) for y in z_ba.tolist()]     # chosen shown second: needs z_ba < 0


def test_any_file_accuracy_by_domain_and_source(rm, tmp_path, capsys):
    rows = [{"prompt": f"p{i}", "chosen": "good answer", "rejected": "bad", "domain": d, "source": s}
            for i, (d, s) in enumerate([("chat", "a"), ("chat", "b"), ("safety", "a")])]
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = evaluate.evaluate_file(rm, f)
    correct, _, _ = evaluate.correctness(rm, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
                                         [r["rejected"] for r in rows], [r["domain"] for r in rows])
    assert out["domain"]["chat"] == (100.0 * (correct[0] + correct[1]) / 2, 2)
    assert out["source"]["a"] == (100.0 * (correct[0] + correct[2]) / 2, 2)
    assert "| domain=safety |" in capsys.readouterr().out


def test_rewardbench_run_writes_json(rm, tmp_path, monkeypatch):
    """The full path on a synthetic file with the official subset counts (so check_counts passes), with
    one-token rows to keep it fast; the JSON holds the leaderboard keys and the pair count."""
    rows = []
    for subset, n in EXPECTED_COUNTS.items():
        rows += [{"prompt": "q", "chosen": "a", "rejected": "b", "subset": subset, "id": i,
                  "chosen_model": "m", "rejected_model": "n"} for i in range(n)]
    f = tmp_path / "rb.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr("tinyrm.evaluate.plot_sections", lambda *a, **k: None)
    res = evaluate.evaluate_rewardbench(rm, f, "tiny", tmp_path / "out" / "rewardbench.json")
    saved = json.loads((tmp_path / "out" / "rewardbench.json").read_text())
    assert saved["pairs"] == 2985 and set(saved["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    # identical rows inside a section's domain give identical verdicts: every subset is 0 or 100
    assert all(v in (0.0, 100.0) for v in res["subsets"].values())


def test_bfloat16_scoring_tracks_float32(tmp_path, minilm_path):
    """The bf16 path (fast on AMX CPUs) gives the float32 answer-logit differences to bf16 precision."""
    import torch
    folder = write_tiny_bert(tmp_path / "m", minilm_path, seed=2, layers=2)
    prompts, a, b = ["What is two plus two?", "Name a colour."], ["Four.", "Blue."], ["Five.", "A dog."]
    z32 = RewardModel(tinyrm.load_encoder(folder), max_len=64).compare_logits(prompts, a, b)
    z16 = RewardModel(tinyrm.load_encoder(folder, dtype=torch.bfloat16), max_len=64).compare_logits(prompts, a, b)
    assert z16.dtype == torch.float32 and not torch.equal(z16, z32)  # really ran in bf16
    torch.testing.assert_close(z16, z32, atol=0.05 * z32.abs().max().item() + 1e-2, rtol=0)


def _widest_per_token(enc, lengths):
    """The most features per token of any tensor an inference forward creates, seen through the
    dispatcher (every op's outputs), on a packed batch of the given sequence lengths."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from tinyrm.encoder import packed_from_lists

    class Widest(TorchDispatchMode):
        most = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Widest.most = max(Widest.most, t.numel())
            return out

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1000, 2000, (n,), generator=g).tolist() for n in lengths]
    p = packed_from_lists(seqs, [[0] * n for n in lengths])
    rows = p.cu_seqlens[:-1] + torch.tensor([n - 2 for n in lengths])
    with torch.inference_mode(), Widest():
        enc.encode_packed(p, rows)
    return Widest.most / sum(lengths)


@pytest.mark.parametrize("arch", ["modernbert", "bert"])
def test_widest_features_is_the_widest_inference_activation(arch, tiny_modernbert, minilm_path, tmp_path,
                                                            monkeypatch):
    """widest_features() (what the CPU batch budget divides by) is exactly the widest per-token tensor a
    forward creates: ModernBERT's Wqkv / Wi outputs; BERT's [T, H] (its MLP runs in row chunks)."""
    import tinyrm.kernels.chunked as ch
    if arch == "modernbert":
        enc = tinyrm.load_encoder(tiny_modernbert[0])
        c = enc.config
        assert enc.widest_features() == max(3 * c.hidden_size, 2 * c.intermediate_size)
    else:
        import tinyrm.kernels.linear_act as la
        # the fused GEMM pads a chunk's rows up to a multiple of ROW_BUCKET: a padded chunk never exceeds a
        # full one while ROWS is a multiple of it; the toy chunks below are too small for that, so unpadded
        assert ch.ROWS % la.ROW_BUCKET == 0
        monkeypatch.setattr(la, "ROW_BUCKET", 1)
        enc = tinyrm.load_encoder(write_tiny_bert(tmp_path / "b", minilm_path, layers=2))
        monkeypatch.setattr(ch, "ROWS", 8)      # [8, I] chunks are narrower than [T, H] at T = 60
        assert enc.widest_features() == enc.config.hidden_size
    assert _widest_per_token(enc, [25, 20, 15]) == enc.widest_features()


def test_cpu_batch_budget_keeps_activations_small_and_scores_unchanged(tiny_modernbert, minilm_path, monkeypatch):
    """On CPU the default batch holds CPU_ACTIVATION_BYTES // (widest_features × 4) tokens (capped at the
    GPU default), and cutting a scoring run into such batches leaves every probability as it was."""
    import torch
    from tinyrm import scorer
    mb = tinyrm.load_encoder(tiny_modernbert[0])
    assert scorer.default_max_tokens(mb) == min(scorer.GPU_MAX_TOKENS,
                                                scorer.CPU_ACTIVATION_BYTES // (mb.widest_features() * 4))
    assert scorer.default_max_tokens(tinyrm.load_encoder(minilm_path)) == 16384   # 24 MB / (384 × 4 B)
    prompts = [f"Question {i}: " + "word " * (5 * i) for i in range(6)]
    a, b = ["A fine answer."] * 6, ["No."] * 6
    seen, real = [], scorer.mask_logits                        # tokens of each packed forward

    def counting(enc, examples, vocab):
        seen.append([len(e.input_ids) for e in examples])
        return real(enc, examples, vocab)
    monkeypatch.setattr(scorer, "mask_logits", counting)
    rm = RewardModel(mb, max_len=128, max_tokens=60)
    small = rm.compare_logits(prompts, a, b)
    assert len(seen) > 2 and all(sum(s) <= 60 or len(s) == 1 for s in seen)
    seen.clear()
    rm.max_tokens = 1 << 20
    whole = rm.compare_logits(prompts, a, b)
    assert len(seen) == 1 and len(seen[0]) == 12               # both orders of six pairs, one forward
    # other batches round differently: a pair logit is at most two rewards, each within reward_bound
    torch.testing.assert_close(small, whole, atol=2 * reward_bound(mb), rtol=0)


@pytest.mark.parametrize("mode", ["pointwise", "pairwise"])
def test_rows_file_holds_each_pairs_scores(rm, tmp_path, monkeypatch, mode):
    """`tinyrm eval --rows FILE`: one line per RewardBench pair, in file order, with the scores the scorer
    gives that pair (pointwise rewards; pairwise log-odds in both orders) and the verdict counted."""
    from tinyrm.scorer import pair_logit
    from tolerance import reward_bound

    model = RewardModel(rm.enc, mode=mode, max_len=96)
    rows = []
    for subset, n in EXPECTED_COUNTS.items():
        rows += [{"prompt": f"q {i}", "chosen": f"answer {i % 7}", "rejected": f"other {i % 5}", "subset": subset,
                  "id": i, "chosen_model": "m", "rejected_model": "n"} for i in range(n)]
    f = tmp_path / "rb.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr("tinyrm.evaluate.plot_sections", lambda *a, **k: None)
    res = evaluate.evaluate_rewardbench(model, f, "tiny", tmp_path / "rb.json", rows_out=tmp_path / "rows.jsonl")
    out = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [(o["subset"], o["id"]) for o in out] == [(r["subset"], r["id"]) for r in rows]
    assert sum(o["correct"] for o in out) == sum(c for c, _ in res["counts"].values())
    pick = [0, 500, 2984]
    doms = [evaluate.SECTION_DOMAIN[evaluate.SUBSET_SECTION[rows[i]["subset"]]] for i in pick]
    args = ([rows[i]["prompt"] for i in pick], [rows[i]["chosen"] for i in pick], [rows[i]["rejected"] for i in pick], doms)
    first, second = model.compare_outputs(*args)
    tol = reward_bound(model.enc)
    for k, i in enumerate(pick):
        o = out[i]
        if mode == "pointwise":
            assert abs(o["scores_chosen"] - first[k].item()) <= tol and abs(o["scores_rejected"] - second[k].item()) <= tol
            assert o["correct"] == float(o["scores_chosen"] > o["scores_rejected"])
        else:
            assert abs(o["logit_chosen_first"] - first[k].item()) <= tol
            assert abs(o["logit_chosen_second"] + second[k].item()) <= tol
            assert o["logit"] == pytest.approx(pair_logit(torch.tensor(o["logit_chosen_first"]),
                                                          -torch.tensor(o["logit_chosen_second"]), "pairwise").item())
            assert o["correct"] == float(o["logit"] > 0)
