"""`tinyrm eval` glue: verdicts from both orders, any-file accuracy by domain/source, RewardBench wiring."""
import json

import pytest

import tinyrm
from tinyrm import evaluate
from tinyrm.rewardbench import EXPECTED_COUNTS
from tinyrm.scorer import RewardModel
from conftest import write_tiny_bert


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
