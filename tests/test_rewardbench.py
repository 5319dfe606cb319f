"""RewardBench arithmetic against hand-computed numbers, the loader on the real file, and the report outputs."""
import json
import os
import sys
from pathlib import Path

import pytest

from tinyrm.rewardbench import (EXPECTED_COUNTS, SECTIONS, RewardBenchError, accuracy_by, check_counts,
                                load_rewardbench, paper_metric, position_bias, score_from_correct)
from tinyrm.report import markdown_table, plot_sections, write_json

from conftest import DATA

FILTERED = DATA / "rewardbench" / "filtered.jsonl"
ALL_SUBSETS = [s for subs in SECTIONS.values() for s in subs]


def _pairs(spec: dict[str, tuple[int, int]]):
    """{subset: (n_correct, n_rows)} -> (subsets, correct) with the correct ones first."""
    subsets, correct = [], []
    for s, (k, n) in spec.items():
        subsets += [s] * n
        correct += [1.0] * k + [0.0] * (n - k)
    return subsets, correct


# Every subset gets 4 rows and none right, except: alpacaeval-easy 4/4, llmbar-adver-neighbor 4/4,
# xstest-should-respond 2/4, math-prm 8/8 (8 rows, to tell its row count from its weight), hep-python 2/4.
SPEC = {s: (0, 4) for s in ALL_SUBSETS}
SPEC.update({"alpacaeval-easy": (4, 4), "llmbar-adver-neighbor": (4, 4), "xstest-should-respond": (2, 4),
             "math-prm": (8, 8), "hep-python": (2, 4)})


def test_section_tables_match_readme():
    assert SECTIONS["Chat"] == {"alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95,
                                "mt-bench-easy": 28, "mt-bench-med": 40}
    assert sum(SECTIONS["Chat Hard"].values()) == 37 + 100 + 134 + 92 + 47 + 46
    assert sum(SECTIONS["Safety"].values()) == 100 + 100 + 154 + 250 + 136
    assert SECTIONS["Reasoning"]["math-prm"] == 984 == 6 * 164
    assert len(EXPECTED_COUNTS) == 23 and EXPECTED_COUNTS["math-prm"] == 447
    assert sum(EXPECTED_COUNTS.values()) == 2985


def score_rewardbench(subsets, chosen, rejected):
    """Scores -> leaderboard result the way `tinyrm eval` decides a pair: pair_logit(chosen, rejected) > 0."""
    import torch

    from tinyrm.scorer import pair_logit
    z = pair_logit(torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64), "pointwise")
    return score_from_correct(subsets, (z > 0).float().tolist())


def test_ties_and_nan_count_wrong():
    r = score_rewardbench(["alpacaeval-easy"] * 4, [1.0, 2.0, 3.0, 3.0], [0.0, 2.0, 4.0, float("nan")])
    assert r["subsets"]["alpacaeval-easy"] == 25.0  # only 1 > 0 counts
    assert r["counts"]["alpacaeval-easy"] == [1.0, 4]
    # A constant model scores 0, not 50.
    assert score_rewardbench(["hep-go"] * 3, [5, 5, 5], [5, 5, 5])["overall"] == 0.0


def test_weighted_section_differs_from_plain_and_pooled_means():
    # alpacaeval-easy 2/2 = 100 %, mt-bench-easy 1/4 = 25 %: weights 100 and 28.
    r = score_from_correct(*_pairs({"alpacaeval-easy": (2, 2), "mt-bench-easy": (1, 4)}))
    want = (100 * 100 + 25 * 28) / 128  # 83.59375; plain mean would be 62.5, pooled 3/6 = 50
    assert r["sections"]["Chat"] == pytest.approx(want)
    assert r["sections"]["Chat"] == pytest.approx(83.59375)
    assert r["overall"] == pytest.approx(83.59375)  # the only section present
    assert r["sections"]["Safety"] is None and not r["complete"] and "mt-bench-med" in r["missing"]


def test_four_sections_overall_and_reasoning_identity():
    r = score_from_correct(*_pairs(SPEC))
    chat = 100 * 100 / 358                   # 358 = 100+95+95+28+40
    chat_hard = 100 * 134 / 456              # 456 = 37+100+134+92+47+46
    safety = 50 * 250 / 740                  # 740 = 100+100+154+250+136
    reasoning = (100 * 984 + 50 * 164) / 1968
    assert r["sections"]["Chat"] == pytest.approx(27.932960893854748) == pytest.approx(chat)
    assert r["sections"]["Chat Hard"] == pytest.approx(29.385964912280702) == pytest.approx(chat_hard)
    assert r["sections"]["Safety"] == pytest.approx(16.891891891891891) == pytest.approx(safety)
    assert r["sections"]["Reasoning"] == pytest.approx(54.166666666666664) == pytest.approx(reasoning)
    # Reasoning = 1/2 math + 1/2 mean(hep): 50 + 1/2 * (50 / 6)
    hep = [r["subsets"][s] for s in SECTIONS["Reasoning"] if s != "math-prm"]
    assert r["sections"]["Reasoning"] == pytest.approx(0.5 * r["subsets"]["math-prm"] + 0.5 * sum(hep) / 6)
    # overall = plain mean of the four sections (not weighted by their sizes)
    assert r["overall"] == pytest.approx((chat + chat_hard + safety + reasoning) / 4)
    assert r["overall"] == pytest.approx(32.0943710911735)
    assert r["complete"] and r["missing"] == []
    assert list(r["subsets"]) == ALL_SUBSETS  # official order, whatever the input order


def test_fractional_correct():
    r = score_from_correct(["hep-js"] * 4, [1.0, 0.5, 0.5, 0.0])
    assert r["subsets"]["hep-js"] == 50.0 and r["counts"]["hep-js"] == [2.0, 4]
    with pytest.raises(RewardBenchError, match="outside"):
        score_from_correct(["hep-js"], [1.5])
    with pytest.raises(RewardBenchError, match="outside"):
        score_from_correct(["hep-js"], [float("nan")])


def test_bad_inputs_raise():
    with pytest.raises(RewardBenchError, match="unknown subset"):
        score_from_correct(["anthropic_helpful"], [1.0])
    with pytest.raises(RewardBenchError, match="2 subset labels but 1"):
        score_from_correct(["hep-js", "hep-go"], [1.0])


def test_paper_metric_by_hand():
    p = score_from_correct(*_pairs(SPEC))["paper"]
    chat_pooled = 4 / 20 * 100       # 5 chat subsets x 4 rows, 4 right
    chat_hard_pooled = 4 / 24 * 100  # 6 chat-hard subsets x 4 rows, 4 right
    assert p["Chat"] == pytest.approx(0.843 * chat_pooled + 0.157 * chat_hard_pooled)
    assert p["Chat"] == pytest.approx(19.476666666666667)
    assert p["Safety"] == pytest.approx(2 / 20 * 100)
    assert p["Reasoning"] == pytest.approx((8 + 2) / (8 + 6 * 4) * 100)  # 31.25: math-prm at its rows
    assert p["mean"] == pytest.approx((19.476666666666667 + 10 + 31.25) / 3)
    assert set(p) == {"Chat", "Reasoning", "Safety", "mean"}


def test_paper_metric_from_subset_accuracies_uses_official_rows():
    acc = {s: 50.0 for s in ALL_SUBSETS}
    acc["math-prm"] = 100.0
    p = paper_metric(acc)
    assert p["Reasoning"] == pytest.approx((447 + 0.5 * 984) / 1431 * 100)  # 65.618..., leaderboard gives 75
    assert p["Chat"] == pytest.approx(50.0) and p["Safety"] == pytest.approx(50.0)
    # counts form gives the same as the result form
    r = score_from_correct(*_pairs(SPEC))
    assert paper_metric(r["counts"]) == paper_metric(r) == r["paper"]


def test_position_bias():
    a, b = [1, 1, 1, 0], [1, 0, 0, 0]
    pb = position_bias(a, b)
    assert pb == {"acc_order_a": 75.0, "acc_order_b": 25.0, "difference": 50.0, "consistent": 50.0, "n": 4}
    r = score_from_correct(["alpacaeval-easy"] * 4, [(x + y) / 2 for x, y in zip(a, b)], order_a=a, order_b=b)
    assert r["subsets"]["alpacaeval-easy"] == 50.0
    assert r["pairwise"]["overall_order_a"] == 75.0 and r["pairwise"]["overall_order_b"] == 25.0
    assert "pairwise" not in score_from_correct(["hep-go"], [1.0])
    with pytest.raises(RewardBenchError):
        score_from_correct(["hep-go"], [1.0], order_a=[1.0])


def test_accuracy_by():
    assert accuracy_by(["x", "y", "x", "z"], [1, 0, 0, 1]) == {"x": (50.0, 2), "y": (0.0, 1), "z": (100.0, 1)}
    by = accuracy_by([None, "chat", None], [1, 1, 0.5])  # HH files carry no domain
    assert by == {"chat": (100.0, 1), None: (75.0, 2)} and list(by) == ["chat", None]


def test_loader_reports_file_and_line(tmp_path):
    good = {"prompt": "p", "chosen": "c", "rejected": "r", "subset": "hep-go", "id": 1,
            "chosen_model": "m", "rejected_model": "n"}
    cases = {
        "not valid JSON": "{oops",
        "missing field 'chosen'": json.dumps({k: v for k, v in good.items() if k != "chosen"}),
        "unknown subset": json.dumps({**good, "subset": "nope", "id": 2}),
        "duplicate": json.dumps(good),
        "'rejected' is empty": json.dumps({**good, "rejected": " ", "id": 3}),
    }
    for msg, bad in cases.items():
        f = tmp_path / "rb.jsonl"
        f.write_text(json.dumps(good) + "\n" + bad + "\n")
        with pytest.raises(RewardBenchError, match=msg) as e:
            load_rewardbench(f)
        assert f"{f}:2:" in str(e.value)


def test_check_counts_synthetic():
    rows = [{"subset": s} for s, n in EXPECTED_COUNTS.items() for _ in range(n)]
    check_counts(rows)
    with pytest.raises(RewardBenchError, match="math-prm: 446 rows, expected 447"):
        check_counts([r for i, r in enumerate(rows) if i != rows.index({"subset": "math-prm"})])


@pytest.mark.skipif(not FILTERED.exists() and os.environ.get("CI") != "true", reason="RewardBench file absent")
def test_loader_reads_official_file():
    rows = load_rewardbench(FILTERED)
    assert len(rows) == 2985
    check_counts(rows)
    assert sum(r["subset"] == "math-prm" for r in rows) == 447
    assert sum(r["subset"] == "alpacaeval-length" for r in rows) == 95
    assert set(rows[0]) == {"prompt", "chosen", "rejected", "subset", "id", "chosen_model", "rejected_model"}


# ---------------------------------------------------------------- report

def _result_with_bias():
    subsets, correct = _pairs(SPEC)
    return score_from_correct(subsets, correct, order_a=correct, order_b=[0.0] * len(correct))


def test_markdown_table_contains_numbers():
    md = markdown_table(_result_with_bias())
    for text in ("| Chat | 27.9 |", "| Chat Hard | 29.4 |", "| Safety | 16.9 |", "| Reasoning | 54.2 |",
                 "**32.1**", "| Reasoning | math-prm | 8 | 8 | 100.0 |",
                 "| Safety | xstest-should-respond | 4 | 2 | 50.0 |",
                 "| 19.5 | 31.2 | 10.0 | 20.2 |"):
        assert text in md, text
    assert "paper's metric (not leaderboard)" in md.lower()
    # order a = the correct list (20 of 96 rows right), order b all wrong
    assert "position bias" in md.lower() and "| 20.8 | 0.0 | 20.8 | 79.2 | 96 |" in md
    assert "| leaderboard overall | 32.1 | 0.0 | 32.1 |" in md


def test_write_json_keys_and_atomic(tmp_path):
    r = _result_with_bias()
    path = write_json(r, tmp_path, model="runs/x", pairs=96, seconds=1.5)
    assert path == tmp_path / "rewardbench.json"
    assert [p.name for p in tmp_path.iterdir()] == ["rewardbench.json"]  # no temp file left behind
    doc = json.loads(path.read_text())
    required = {"overall", "sections", "subsets", "model", "pairs", "seconds"}
    assert required <= set(doc) and set(doc) - required == {"paper", "counts", "pairwise", "complete", "missing"}
    assert set(doc["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    assert doc["overall"] == pytest.approx(r["overall"]) and doc["pairs"] == 96 and doc["model"] == "runs/x"
    assert doc["counts"]["math-prm"] == [8.0, 8]


def test_plot_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_sections(_result_with_bias(), tmp_path / "rb.png", "test model")
    data = Path(out).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000


def test_plot_without_matplotlib_returns_none(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import raise ImportError
    assert plot_sections(_result_with_bias(), tmp_path / "rb.png", "x") is None
    assert not (tmp_path / "rb.png").exists()
