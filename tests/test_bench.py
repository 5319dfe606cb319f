"""The benchmark helpers (bench/flops.py, machine.py, inputs.py, tables.py, run.py's report): FLOP formula
against hand computations and against the real modules' weights, the alternating timer, medians, the
float32 and bf16 matmul peaks, bf16-vs-float32 preference agreement, the bf16 rows (ratios, no goal
claimed), memory probes, and a CPU smoke run of bench/gpu.py."""
from __future__ import annotations

import gc
import json
import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import flops as F  # noqa: E402
import inputs as I  # noqa: E402
import machine as M  # noqa: E402
import tables as T  # noqa: E402
from tolerance import U32, reward_bound  # noqa: E402  float32 bounds (tests/tolerance.py)
from test_train import tiny_bert  # noqa: E402,F401  (the fixture)


def test_attn_pairs_by_hand():
    assert F.attn_pairs(5, None) == 25
    # |i - j| <= 1 on 5 tokens: the diagonal (5) + two off-diagonals of 4
    assert F.attn_pairs(5, 1) == 13
    # |i - j| <= 2: 5 + 2 * (4 + 3)
    assert F.attn_pairs(5, 2) == 19
    assert F.attn_pairs(5, 4) == 25 and F.attn_pairs(5, 100) == 25
    # brute force
    for L, w in [(7, 2), (200, 64), (64, 64), (1, 3)]:
        assert F.attn_pairs(L, w) == sum(abs(i - j) <= w for i in range(L) for j in range(L))


def test_bert_forward_flops_by_hand():
    s = F.Shape("bert", hidden=4, layers=2, heads=2, intermediate=8)
    # per layer: q, k, v, o = 4 * 4*4 = 64; up 4*8 = 32; down 8*4 = 32  -> 128 weights
    assert F.layer_linear_weights(s) == 128
    # tokens 3 + 2 = 5: linears 2 * 128 * 5 * 2 layers = 2560; attention 4 * 4 * (9 + 4) * 2 layers = 416
    assert F.forward_flops(s, [3, 2]) == 2560 + 416
    # head at the mask: 2 * 16 (dense) + 2 * 4 * 2 (two answer rows) = 48 per sequence
    assert F.scoring_flops(s, [3, 2]) == 2560 + 416 + 2 * 48
    # adapters of rank 1 on query and value: + 1 * (4 + 4) each
    assert F.layer_linear_weights(s, rank=1, targets=("query", "value")) == 128 + 16


def test_modernbert_flops_use_the_window_on_local_layers():
    s = F.Shape("modernbert", hidden=4, layers=3, heads=2, intermediate=6, window=1, global_every=3)
    # Wqkv 4*12 + Wo 4*4 + Wi 4*12 + Wo 6*4 = 48 + 16 + 48 + 24 = 136
    assert F.layer_linear_weights(s) == 136
    L = 5  # layer 0 global (25 pairs), layers 1 and 2 local (13 pairs each)
    assert F.forward_flops(s, [L]) == 2 * 136 * 5 * 3 + 4 * 4 * (25 + 13 + 13)


def test_train_flops_conventions():
    s = F.Shape("bert", hidden=4, layers=2, heads=2, intermediate=8)
    f = F.train_flops(s, [3, 2], frozen=1, rank=0, targets=())
    fwd = F.scoring_flops(s, [3, 2])
    upper_lin, upper_att, head = 2 * 128 * 5, 4 * 4 * 13, 2 * 48
    assert f["convention"] == fwd + 2 * (upper_lin + upper_att + head)
    # needed: no weight gradient of the frozen base -> the linears' backward is 1x, attention 2x
    assert f["needed"] == fwd + upper_lin + 2 * upper_att + 2 * head
    # everything frozen but the head
    g = F.train_flops(s, [3, 2], frozen=2, rank=0, targets=())
    assert g["convention"] == fwd + 2 * head


@pytest.mark.parametrize("preset,arch", [("minilm-l6", "bert"), ("modernbert-base", "modernbert")])
def test_flop_weights_match_the_real_modules(preset, arch):
    """The formula's per-layer weights equal the nn.Linear weights of one real tinyrm layer."""
    from tinyrm.bert import Bert
    from tinyrm.config import EncoderConfig
    from tinyrm.modernbert import ModernBert
    cfg = EncoderConfig.preset(preset)
    with torch.device("meta"):
        enc = (Bert if arch == "bert" else ModernBert)(cfg)
    layer = enc.layers[1]
    real = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert F.layer_linear_weights(F.Shape.of(cfg)) == real


def test_median_and_alternation_order():
    assert M.median([3, 1, 2]) == 2 and M.median([4, 1, 2, 3]) == 2.5
    with pytest.raises(ValueError):
        M.median([])
    calls = []
    times = M.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3,
                        before=lambda k: calls.append("before-" + k))
    assert calls == ["before-a", "a", "before-b", "b"] * 3
    assert set(times) == {"a", "b"} and all(len(v) == 3 and min(v) >= 0 for v in times.values())


def test_summary_rows_goals():
    s = {"tinyrm": {"pairs_per_s": 30.0, "flops_per_s": 70.0}, "ref": {"pairs_per_s": 10.0, "flops_per_s": 20.0}}
    t = {"tinyrm": {"tokens_per_s": 200.0, "peak_delta_mb": 40.0, "flops_per_s": 50.0},
         "ref": {"tokens_per_s": 100.0, "peak_delta_mb": 100.0, "flops_per_s": 25.0}}
    rows = T.summary_rows("m", s, t, peak=100.0, mem_label="x")
    assert rows[0][4] == "3.00×" and "met" in rows[0][5] and "not" not in rows[0][5]
    assert rows[1][2] == "70%" and "not" not in rows[1][5]
    assert rows[2][4] == "2.00×" and "not met" in rows[2][5]
    assert rows[3][4] == "0.40×" and "not" not in rows[3][5]


def test_matmul_peak_and_memory_probes():
    assert M.matmul_peak(n=64, reps=2, inner=1) > 0
    gc.collect()      # else earlier tests' garbage, collected mid-test, can drop the RSS below `base`
    base = M.rss_mb()
    if not M.reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs here")
    x = torch.ones(64 * 2 ** 20 // 4)  # 64 MB, touched
    x += 1
    del x
    assert M.peak_rss_mb() - base > 40


def test_matmul_peak_in_bf16_uses_bf16_tensors_and_the_flop_formula(monkeypatch):
    """The bf16 peak is timed on bf16 operands, and is 2·n³ ÷ the best per-mm time (a fake clock that
    advances 1 s per reading: inner=2 mms between two readings -> 0.5 s per mm)."""
    seen, real_mm = [], torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b, out=None: (seen.append((a.dtype, b.dtype, out.dtype)),
                                                              real_mm(a, b, out=out))[1])
    clock = iter(range(1000))
    monkeypatch.setattr(M, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    peak = M.matmul_peak(dtype=torch.bfloat16, n=64, reps=3, inner=2)
    assert peak == 2 * 64 ** 3 / 0.5
    assert len(seen) == 1 + 3 * 2 and set(seen) == {(torch.bfloat16,) * 3}
    monkeypatch.undo()
    assert M.matmul_peak(dtype=torch.bfloat16, n=64, reps=2, inner=1) > 0  # the real clock


def test_preference_agreement_by_hand():
    # prefers a (P > 0.5): p T F T F ; q T T F F -> the same on pairs 0 and 3; 0.5 counts as "not a"
    a = T.preference_agreement([0.9, 0.4, 0.51, 0.5], [0.8, 0.6, 0.49, 0.2])
    assert (a["pairs"], a["agree"], a["fraction"], a["ties"]) == (4, 2, 0.5, 1)
    assert a["max_abs_diff"] == pytest.approx(0.3)
    assert T.preference_agreement(torch.tensor([0.7, 0.2]), [0.7, 0.2]) == \
        {"pairs": 2, "agree": 2, "fraction": 1.0, "max_abs_diff": pytest.approx(0.0, abs=U32 * 0.7), "ties": 0}
    with pytest.raises(ValueError):
        T.preference_agreement([0.1, 0.2], [0.1])
    with pytest.raises(ValueError):
        T.preference_agreement([], [])


def _scoring(tin_pps, ref_pps, tin_fps, ref_fps, **kw):
    return {"tinyrm": {"pairs_per_s": tin_pps, "flops_per_s": tin_fps},
            "ref": {"pairs_per_s": ref_pps, "flops_per_s": ref_fps}, **kw}


def test_bf16_rows_ratios_and_no_goal_claimed():
    s32 = _scoring(12.0, 5.0, 90.0, 30.0)
    ag = {"tinyrm": T.preference_agreement([0.9, 0.4, 0.6], [0.8, 0.6, 0.7]),
          "ref": T.preference_agreement([0.9, 0.5, 0.6], [0.9, 0.5, 0.6])}
    s16 = _scoring(40.0, 10.0, 600.0, 200.0, agreement=ag)
    rows = T.bf16_rows("m", s16, s32, peak16=1000.0)
    assert len(rows) == 4 and all(r[0] == "m" and len(r) == 6 for r in rows)
    speed, util, vs32, agree = rows
    # tinyrm bf16 vs transformers bf16: 40 / 10
    assert "reference in bf16" in speed[1] and speed[2:5] == ["40.00", "10.00", "4.00×"]
    # utilisation against the bf16 peak: 600 / 1000, 200 / 1000
    assert "bf16 matmul peak" in util[1] and util[2:5] == ["60%", "20%", "3.00×"]
    # tinyrm bf16 against the float32 reference's pairs/s: 40 / 5
    assert "reference in float32" in vs32[1] and vs32[2:5] == ["40.00", "5.00", "8.00×"]
    assert agree[2:5] == ["2/3 (67%), 2.0e-01", "3/3 (100%; 1 at P = 0.5), 0.0e+00", "—"]
    # bf16 rows never claim the float32 goals, though 4x and 60% would meet them
    assert all(r[5] == T.NO_GOAL_BF16 and "met" not in r[5] for r in rows)
    # the float32 rows keep their labels and goals
    assert [r[1] for r in T.summary_rows("m", s32, None, 100.0, "x")] == \
        ["scoring (pairs/s)", "scoring utilisation (model FLOP/s ÷ matmul peak)"]


def test_cpu_report_has_the_bf16_peak_and_rows():
    """run.py's report from given medians: the bf16 peak next to the float32 one, the bf16 rows after the
    float32 ones; --no-bf16 parses to bf16 off."""
    run = importlib.import_module("run")
    a = run.parse([])
    assert a.bf16 and not run.parse(["--no-bf16"]).bf16
    a.peaks, a.peaks_bf16 = [100e9, 90e9], [500e9, 560e9]
    extra = dict(pairs=2, sequences=4, tokens=400, mean_len=100, max_len=120, padded_tokens=480, flops=1e12,
                 max_abs_prob_diff=1e-3)
    s32 = _scoring(2.0, 1.0, 40e9, 20e9, **extra)
    s32["tinyrm"]["s"], s32["ref"]["s"] = 1.0, 2.0
    s16 = _scoring(8.0, 2.0, 160e9, 40e9, agreement={k: T.preference_agreement([0.6, 0.3], [0.7, 0.4])
                                                      for k in ("tinyrm", "ref")}, **extra)
    s16["tinyrm"]["s"], s16["ref"]["s"] = 0.25, 1.0
    info = {"cpu": "x", "usable_cores": 2, "logical_cores": 2, "torch": "t", "threads": 2, "other_load_cores": 0.0}
    text = run.report(info, 100e9, {"M": {"scoring": s32, "scoring_bf16": s16}}, a, 1.0)
    assert "float32 matmul peak" in text and "**100 GFLOP/s**" in text
    assert "bfloat16 matmul peak" in text and "**560 GFLOP/s**" in text and "5.6× the float32 peak" in text
    table = [line for line in text.splitlines() if line.startswith("| M |")]
    assert [r.split(" | ")[4] for r in table] == ["2.00×", "2.00×", "4.00×", "4.00×", "8.00×", "—"]
    assert all(T.NO_GOAL_BF16 in r for r in table[2:]) and not any(T.NO_GOAL_BF16 in r for r in table[:2])
    # bf16 utilisation against the bf16 peak (160 / 560, 40 / 560), not the float32 one
    assert "| 29% | 7% |" in table[3]


def test_synthetic_examples_have_the_template_layout():
    from tinyrm.tokens import Specials
    sp = Specials(cls_id=101, sep_id=102, mask_id=103, pad_id=0)
    exs = I.synthetic_pair_examples([10, 7], sp)
    assert [len(e) for e, _ in exs] == [10, 10, 7, 7] and [y for _, y in exs] == [0, 1, 0, 1]
    for e, _ in exs:
        assert e.input_ids[0] == 101 and e.input_ids[-1] == 102 and e.input_ids[e.mask_pos] == 103
        assert e.input_ids.count(103) == 1 and len(e.token_type_ids) == len(e)


def test_minimal_tokenizer_gives_the_answer_tokens(tmp_path):
    from tinyrm.tokens import Specials, answer_token_ids, load_tokenizer
    tok = load_tokenizer(I.write_minimal_tokenizer(tmp_path / "tokenizer.json"))
    sp = Specials.from_tokenizer(tok)
    assert (sp.pad_id, sp.cls_id, sp.sep_id, sp.mask_id) == (0, 101, 102, 103)
    assert len(set(answer_token_ids(tok))) == 2


def test_gpu_script_smoke_on_cpu(tmp_path):
    """bench/gpu.py's whole path (model build, scoring, training, memory, report) at a tiny size on CPU,
    with the inputs the GPU machine uses when ../shared is absent (recorded lengths, built-in tokenizer)."""
    out = tmp_path / "gpu.md"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--tiny", "--threads", "2",
                        "--synthetic", "--minimal-tokenizer", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    text = out.read_text()
    for needle in ("scoring (pairs/s)", "training step (tokens/s)", "training peak memory", "matmul peak"):
        assert needle in text


@pytest.mark.heavy
def test_cpu_bench_quick(tmp_path):
    out = tmp_path / "cpu.md"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "MiniLM-L6" in out.read_text()


def test_pointwise_scoring_sides_agree_with_the_scorer(tmp_path, minilm_path):
    """bench_scoring(mode="pointwise"): tinyrm and the padded transformers code give the same P(a beats b),
    and both equal σ(r_a − r_b) from RewardModel.score, computed here through the public API."""
    from conftest import write_tiny_bert
    import sides as S
    from tinyrm import load_encoder
    from tinyrm.scorer import RewardModel
    path = write_tiny_bert(tmp_path / "bert", minilm_path, seed=3)
    pairs = [("What is 2+2?", "4, because two and two make four.", "5"),
             ("Name a colour.", "Blue.", "I will not answer that question about colours at all."),
             ("Say hi.", "hi", "Hello there! How can I help you today?")]
    res = S.bench_scoring(path, "bert", reps=1, max_len=64, batch=2, pairs=pairs, mode="pointwise")
    assert res["mode"] == "pointwise" and res["sequences"] == 6 and res["pairs"] == 3
    rm = RewardModel(load_encoder(path), mode="pointwise", max_len=64)
    # P = σ(r_a − r_b), σ' <= 1/4, and each reward may move by reward_bound between two forwards
    dp = reward_bound(rm.enc) / 2
    assert res["max_abs_prob_diff"] < dp
    r = torch.tensor(rm.score([q for q, _, _ in pairs] * 2, [a for _, a, _ in pairs] + [b for _, _, b in pairs]))
    expect = torch.sigmoid(r[:3] - r[3:])
    assert torch.allclose(torch.tensor(res["probs"]["tinyrm"]), expect, rtol=0, atol=dp)
    assert torch.allclose(torch.tensor(res["probs"]["ref"]), expect, rtol=0, atol=dp)
    assert (expect - 0.5).abs().max() > 1e-4      # a random model still prefers something: the check can fail
    pw = S.bench_scoring(path, "bert", reps=1, max_len=64, batch=2, pairs=pairs, mode="pairwise")
    assert pw["sequences"] == 6 and pw["max_abs_prob_diff"] < dp


def test_chunk_ab_scores_the_same_pairs_chunked_and_whole(capsys, monkeypatch):
    """bench/chunk_ab.py: chunks far smaller than the batch give the same probabilities (printed max |dP|),
    one table row per chunk size, and the module's chunk size is restored afterwards; likewise for
    token budgets per batch."""
    import tinyrm.kernels.chunked as ch
    from conftest import DATA, shared_path

    shared_path("rewardbench/filtered.jsonl")
    monkeypatch.setenv("TINYRM_DATA", str(DATA))
    chunk_ab = importlib.import_module("chunk_ab")
    before = ch.ROWS
    assert chunk_ab.main(["--pairs", "2", "--reps", "1", "--rows", "0", "64"]) == 0
    out = capsys.readouterr().out
    assert ch.ROWS == before
    dp = float(out.split("max |dP| = ")[1].split()[0])
    import tinyrm                  # P = σ(pair logit): σ' <= 1/4, two rewards each within reward_bound
    bound = reward_bound(tinyrm.load_encoder(I.minilm_path())) / 2
    assert dp < bound
    assert [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "×" in line] == ["0", "64"]
    # the batch-budget knob: a 200-token budget splits the 4 sequences into several batches, same answers
    assert chunk_ab.main(["--pairs", "2", "--reps", "1", "--tokens", "16384", "200"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("max |dP| = ")[1].split()[0]) < bound
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "×" in line]
    assert [r[1].strip() for r in rows] == ["16384", "200"]
    assert "| tokens per batch |" in out and "minor page faults per call" in out


def test_collate_exact():
    from tinyrm.prompts import Example
    S = importlib.import_module("sides")
    a = Example([1, 5, 2, 3, 2], [0, 0, 0, 1, 1], 3)
    b = Example([1, 6, 2], [0, 0, 1], 1)
    out = S.collate([a, b], pad_id=9, labels=[0, 1])
    assert out["input_ids"].tolist() == [[1, 5, 2, 3, 2], [1, 6, 2, 9, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert out["token_type_ids"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]]
    assert out["mask_pos"].tolist() == [3, 1] and out["labels"].tolist() == [0, 1]
    assert all(v.dtype == torch.long for v in out.values())


def test_trials_table_keeps_what_the_selection_keeps(tmp_path):
    """bench/trials.py: per weights, the best (step, reward form) by the selection rule (a tie to the
    corrected form, the earlier step on equal scores), and the average-minus-live differences."""
    import json as _json
    import trials as TR
    run = tmp_path / "t0"
    run.mkdir()
    (run / "config.json").write_text(_json.dumps({"batch_pairs": 16}))
    rows = [{"step": 0, "val_score": 0.50, "live_val_score": 0.50},
            {"step": 1, "loss": 0.7},
            {"step": 150, "val_score": 0.60, "corrected_val_score": 0.62, "val_len_balanced": 0.58,
             "corrected_val_len_balanced": 0.64, "live_val_score": 0.61, "live_corrected_val_score": 0.59},
            {"step": 300, "val_score": 0.62, "corrected_val_score": 0.62, "corrected_val_probe_style": 0.4,
             "live_val_score": 0.58, "live_corrected_val_score": 0.60}]
    (run / "metrics.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    val = TR.validations(run)
    avg, live = TR.kept(val, ""), TR.kept(val, "live_")
    assert (avg["step"], avg["form"], avg["val_len_balanced"]) == (150, "corrected", 0.64)   # 0.62 first
    assert (live["step"], live["form"], live["val_score"]) == (150, "raw", 0.61)
    text, curves = TR.table([run])
    # average minus live at 150: 0.62 - 0.61; at 300: 0.62 - 0.60; mean +0.015
    assert "| t0 | 150 | +0.0100 |" in text and "| t0 | 300 | +0.0200 |" in text and "+0.0150" in text
    assert curves[0][1] == [(0, 0.50), (2400, 0.62), (4800, 0.62)]


def test_trials_table_adds_the_floored_row_a_run_wrote(tmp_path):
    """bench/trials.py: a run whose metrics hold `relevance_*` rows (the floor fitted after training) gets a
    "live + floor" row with the last such row's figures, not the kept validation's; a run without them gets none."""
    import json as _json
    import trials as TR
    runs = []
    for name, extra in (("floor", True), ("plain", False)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(_json.dumps({"batch_pairs": 16}))
        rows = [{"step": 300, "val_score": 0.62, "val_acc_chat": 0.55}]
        if extra:
            rows += [{"step": 300, "relevance_val_score": 0.61, "relevance_val_probe_relevance": 0.80},
                     {"step": 300, "relevance_val_score": 0.64, "relevance_val_domain_mean_se": 0.016,
                      "relevance_val_acc_chat": 0.58, "relevance_val_probe_relevance": 0.90}]
        (run / "metrics.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
        runs.append(run)
    assert TR.floored(runs[1]) is None
    f = TR.floored(runs[0])
    assert (f["step"], f["val_score"], f["val_acc_chat"], f["val_probe_relevance"]) == (300, 0.64, 0.58, 0.90)
    text, curves = TR.table(runs)
    floor_rows = [x for x in text.splitlines() if "live + floor" in x]
    assert floor_rows == ["| floor | live + floor | step 300, as kept | 0.640 ± 0.016 | — | — | — | 0.580 | — | — | "
                          "— | 0.900 | — | — |"]
    assert "| plain | live | step 300, raw | 0.620 | — | — | — | 0.550 |" in text
    assert [c[0] for c in curves] == ["floor (live)", "plain (live)"]      # the floor adds no curve


def test_score_memory_summary_by_hand_and_a_short_real_run(tmp_path, minilm_path):
    """bench/score_memory.py: tqdm's row count read from a stderr log, the tenths and growth by hand, and
    a real `tinyrm score` child on a tiny model: every row written, RSS sampled and reported."""
    import gzip
    import json as _json
    import score_memory as SM
    from conftest import write_tiny_bert

    log = tmp_path / "err.log"
    log.write_text("rows.jsonl.gz: 0row [00:00, ?row/s]\rrows.jsonl.gz: 2048row [00:03, 650.1row/s]\r")
    assert SM.rows_done(log) == 2048 and SM.rows_done(tmp_path / "none") == 0
    samples = [{"t": 0, "rss_mb": 100.0, "rows": 0}, {"t": 1, "rss_mb": 400.0, "rows": 150},
               {"t": 2, "rss_mb": 420.0, "rows": 600}, {"t": 3, "rss_mb": 410.0, "rows": 900}]
    s = SM.summarise(samples, 1000)
    assert s["peak_mb"] == 420.0 and s["tenths"][0]["rows"] == 150 and s["tenths"][5]["rows"] == 600
    assert s["tenths"][9] == samples[-1] and s["growth_after_first_tenth_mb"] == 10.0   # 410 - 400

    rows = SM.write_rows(tmp_path / "r.jsonl.gz", 50, "pair", seed=1)
    again = SM.write_rows(tmp_path / "r2.jsonl.gz", 50, "pair", seed=1)
    lines = gzip.open(rows, "rt").read().splitlines()
    assert lines == gzip.open(again, "rt").read().splitlines() and len(lines) == 50
    assert set(_json.loads(lines[0])) == {"id", "prompt", "chosen", "rejected"}

    model = write_tiny_bert(tmp_path / "tiny", minilm_path, seed=0, layers=2)
    out = tmp_path / "res" / "mem"
    SM.main(["--model", str(model), "--rows", "3000", "--kind", "pair", "--every", "0.1", "--threads", "1",
             "--out", str(out)])
    got = [_json.loads(x) for x in out.with_suffix(".jsonl").read_text().splitlines()]
    assert got and all(0 <= g["rss_mb"] < 8000 for g in got) and max(g["rss_mb"] for g in got) > 50  # torch alone
    assert [g["rows"] for g in got] == sorted(g["rows"] for g in got)
    md = out.with_suffix(".md").read_text()
    assert "3,000 rows" in md and f"{max(g['rss_mb'] for g in got):,.0f} MB" in md and str(tmp_path) not in md
    assert out.with_suffix(".png").stat().st_size > 1000
    # --plot-only with --compare: both runs' samples, each its own labelled line, nothing measured
    fig = SM.plot([("after", got), ("before", samples)], tmp_path / "two.png", "t")
    lines = fig.axes[0].lines
    assert [ln.get_label() for ln in lines] == ["after", "before"]
    assert list(lines[1].get_ydata()) == [s["rss_mb"] for s in samples]
    SM.main(["--model", "unused", "--plot-only", str(out.with_suffix(".jsonl")), "--label", "after",
             "--compare", f"before={out.with_suffix('.jsonl')}", "--out", str(tmp_path / "cmp" / "m")])
    assert (tmp_path / "cmp" / "m.png").stat().st_size > 1000 and not (tmp_path / "cmp" / "m.md").exists()


def test_scaling_epochs_give_matched_steps_and_pair_views():
    """bench/scaling.py: epochs_for(S, N, B) makes train.plan_steps plan exactly S steps, and when B divides
    N every unique pair is seen S*B/N times (the same pair-views at every point of the curve)."""
    import scaling as SC
    from collections import Counter as _Counter
    from types import SimpleNamespace
    from tinyrm.train import plan_steps

    for steps, n, batch in [(360, 720, 16), (360, 5760, 16), (120, 240, 16), (7, 12, 4), (10, 9, 4), (5, 100, 4)]:
        examples = [[(SimpleNamespace(input_ids=[0] * (5 + i % 7)), 1)] for i in range(n)]
        cfg = SimpleNamespace(epochs=SC.epochs_for(steps, n, batch), batch_pairs=batch, max_steps=steps, seed=3)
        plan = plan_steps(examples, cfg)
        assert len(plan) == steps, (steps, n, batch)
        if n % batch == 0 and steps * batch % n == 0:
            seen = _Counter(i for s in plan for i in s)
            assert set(seen.values()) == {steps * batch // n} and len(seen) == n


def test_scaling_point_reads_the_last_steps_validation(tmp_path):
    """A run that also validated earlier (the default's own run used as a point) gives the curve its
    validation after the last step, in the form that validated better there, even when an earlier one
    scored higher; a run without that validation is a one-line error naming its metrics file."""
    import json as _json
    import scaling as SC
    run = tmp_path / "scale-8-x"
    run.mkdir()
    (run / "summary.json").write_text(_json.dumps({"steps": 4, "train_pairs": 8, "seconds": 60.0}))
    (run / "config.json").write_text(_json.dumps({"batch_pairs": 4}))
    rows = [{"step": 1, "loss": 0.7, "tokens_per_s": 100.0}, {"step": 2, "val_score": 0.70, "val_acc_chat": 0.7},
            {"step": 4, "val_score": 0.60, "corrected_val_score": 0.65, "corrected_val_acc_chat": 0.66,
             "val_acc_chat": 0.61}, {"step": 4, "tokens_per_s": 300.0}]
    (run / "metrics.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    p = SC.point(run)
    assert (p["domain_mean"], p["form"], p["chat"]) == (0.65, "corrected", 0.66)
    assert (p["epochs"], p["tokens_per_s"], p["seconds"]) == (2.0, 200.0, 60.0)
    (run / "metrics.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows[:2]))
    with pytest.raises(SystemExit, match="metrics.jsonl: no validation at the last step"):
        SC.point(run)


def test_scaling_runs_each_point_once_and_tabulates_its_validation(tmp_path, minilm_path):
    """A real two-point curve on a tiny BERT: each point trains S steps on its N unique pairs (the run's
    own summary and log say so), the table and JSONL carry the run's last validation, and a second call
    reads the finished points instead of training them again."""
    import json as _json
    from conftest import write_tiny_bert
    model = write_tiny_bert(tmp_path / "tiny", minilm_path, seed=0, layers=2)
    words = "red blue green amber violet teal olive coral".split()
    rows = [{"prompt": f"Repeat the word: {w}", "chosen": w, "rejected": words[(i + 1) % 8], "domain": "chat"}
            for i, w in enumerate(words * 10)]
    (tmp_path / "d.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f'model = "{model}"\nmax_len = 64\nrank = 4\nfreeze_layers = 1\nbatch_pairs = 4\nmicro_tokens = 200\n'
                      'val_frac = 0.2\neval_untrained = false\ndrop_rewardbench_overlap = false\n'
                      f'[[data]]\npath = "{tmp_path / "d.jsonl"}"\n')
    cmd = [sys.executable, str(ROOT / "bench" / "scaling.py"), "--pairs", "8", "16", "--steps", "4",
           "--batch_pairs", "4", "--recipe", str(recipe), "--threads", "1", "--runs_dir", str(tmp_path / "runs"),
           "--out", str(tmp_path / "out" / "scale")]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    runs = sorted((tmp_path / "runs").glob("scale-*"))
    assert [r.name.split("-")[1] for r in runs] == ["16", "8"]
    points = [_json.loads(x) for x in (tmp_path / "out" / "scale.jsonl").read_text().splitlines()]
    for p in points:
        run = tmp_path / "runs" / p["run"]
        summary = _json.loads((run / "summary.json").read_text())
        assert (summary["train_pairs"], summary["steps"]) == (p["unique_pairs"], 4)
        val = [_json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "val_score" in x]
        assert [v["step"] for v in val] == [4] and p["domain_mean"] == val[0]["val_score"]
        assert p["epochs"] == 16 / p["unique_pairs"]
    md = (tmp_path / "out" / "scale.md").read_text()
    assert "| 8 | 2.00 | 4 |" in md and "| 16 | 1.00 | 4 |" in md
    assert (tmp_path / "out" / "scale.png").stat().st_size > 0
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("already trained") == 2
    assert sorted((tmp_path / "runs").glob("scale-*")) == runs


def test_warm_soup_is_the_mean_of_the_merged_weights(tmp_path, tiny_bert):
    """bench/warm.py: the soup's tensors are the float64 mean of the runs' merged (exported) weights; a soup
    of one run with itself validates exactly as that run; tensors of another shape are named as an error."""
    import warm as W
    from safetensors.torch import load_file, save_file
    from test_train import _cfg, _write, repeat_task
    from tinyrm.mix import load_data
    from tinyrm.train import train
    from tinyrm.validation import validate
    from tinyrm.weights import load_encoder

    data = _write(tmp_path / "d.jsonl", repeat_task(40, 1))
    runs = []
    for seed in (1, 2):
        train(_cfg(tmp_path, tiny_bert, data, max_steps=3, seed=seed, val_seed=1, lr=1e-2), run_dir=tmp_path / f"r{seed}")
        runs.append(tmp_path / f"r{seed}")
    out = W.soup(runs, tmp_path / "w")
    a, b, s = (load_file(str(d / "model.safetensors")) for _, d in out)
    assert a.keys() == s.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    for k in a:
        assert torch.equal(s[k], ((a[k].double() + b[k].double()) / 2).to(a[k].dtype)), k
    same = W.soup([runs[0], runs[0]], tmp_path / "w2")
    cfg = _cfg(tmp_path, tiny_bert, data, seed=1)
    _, val, _ = load_data(cfg)
    with torch.no_grad():
        v1, v2 = (validate(load_encoder(d).eval(), cfg, val) for _, d in (same[0], same[2]))
    assert v1["val_score"] == v2["val_score"] and v1["val_loss"] == v2["val_loss"]
    # --outputs: each run's verdicts are its kept model's, so one member alone validates as the run recorded
    # its kept checkpoint; a member averaged with itself is that member
    import json as _json
    recorded = [_json.loads((r / "summary.json").read_text())["best_val_score"] for r in runs]
    members = W.verdicts(runs, list(val))
    per_k = W.ensembles([z for _, z in members], val, [], "domain_mean")
    assert [m["val_score"] for m in per_k[:1]] == [sum(recorded) / 2]
    assert W.ensembles([members[0][1]] * 2, val, [], "domain_mean")[1]["val_score"] == recorded[0]
    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    save_file({"x": torch.zeros(3)}, str(tmp_path / "y.safetensors"))
    with pytest.raises(SystemExit, match="y.safetensors"):
        W.average([tmp_path / "x.safetensors", tmp_path / "y.safetensors"])


def test_output_ensembles_by_hand():
    """bench/warm.py --outputs: three members each wrong on a different chat pair (and one always wrong on
    safety) -> alone 2/3 on chat; any two average to right wherever the other is confidently right, and
    all three to right on every chat pair. Hand-computed per subset, and which pairs are unanimous."""
    import warm as W
    from tinyrm.data import PreferencePair as P

    val = [P(f"q{i}", "a", "b", d, "t") for i, d in enumerate(["chat"] * 3 + ["safety"] * 2)]
    zs = [torch.tensor(z, dtype=torch.float64) for z in ([-1.0, 2.0, 2.0, 1.0, 1.0],
                                                         [2.0, -1.0, 2.0, 1.0, 1.0],
                                                         [2.0, 2.0, -1.0, -3.0, 1.0])]
    one, two, three = W.ensembles(zs, val, [], "domain_mean")
    assert (one["subsets"], two["subsets"], three["subsets"]) == (3, 3, 1)
    # alone: chat 2/3 each; safety 1, 1, 1/2
    assert one["val_acc_chat"] == pytest.approx(2 / 3) and one["val_acc_safety"] == pytest.approx(5 / 6)
    assert one["min"] == pytest.approx((2 / 3 + 1 / 2) / 2) and one["max"] == pytest.approx((2 / 3 + 1) / 2)
    # pairs: chat means (0.5, 0.5, 2), (0.5, 2, 0.5), (2, 0.5, 0.5): all right; safety with member 3: (−1, 1)
    assert two["val_acc_chat"] == 1.0 and two["val_acc_safety"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert three["val_score"] == pytest.approx((1.0 + 0.5) / 2)     # safety pair 0: (1 + 1 − 3) / 3 < 0
    assert W.agreement(zs) == {"all_right": 1 / 5, "all_wrong": 0.0}   # only safety pair 1 is unanimous
    assert W.agreement([-z for z in zs]) == {"all_right": 0.0, "all_wrong": 1 / 5}
    # by group: chat longer / shorter / equal (in no side), safety longer / shorter; sources t, t, t, u/x/3, u/x/4
    texts = [("aa", "b"), ("a", "bb"), ("a", "b"), ("aa", "b"), ("a", "bb")]
    val2 = [P(f"q{i}", c, r, p.domain, "t" if i < 3 else f"u/x/{i}") for i, ((c, r), p) in enumerate(zip(texts, val))]
    _, by = W.agreement_table([-z for z in zs], val2)                   # only safety pair 4 is wrong for all
    assert by["all"] == {"n": 5, "all_right": 0.0, "all_wrong": 1 / 5}
    assert by["safety, chosen shorter"] == {"n": 1, "all_right": 0.0, "all_wrong": 1.0}
    assert by["safety, chosen longer"]["all_wrong"] == 0.0 and by["chat, chosen longer"]["n"] == 1
    assert by["u/x"] == {"n": 2, "all_right": 0.0, "all_wrong": 0.5} and by["t"]["all_wrong"] == 0.0


def test_heads_crossfit_picks_the_weight_on_one_half_and_scores_the_other():
    """bench/heads.py: the pointwise head right on chat and wrong on safety (−1), the pairwise head silent
    on chat and right on safety (+1). λ = 0, 0.25, 0.5 leave safety wrong and λ = 1 ties it (wrong), so
    every half picks λ = 2, the first weight that makes safety right, and holds out at 1.0."""
    import heads as H
    from tinyrm.data import PreferencePair as P

    val = [P(f"q{i}", "a", "b", d, "t") for i, d in enumerate(["chat"] * 4 + ["safety"] * 4)]
    z_point = torch.tensor([1.0] * 4 + [-1.0] * 4, dtype=torch.float64)
    z_pair = torch.tensor([0.0] * 4 + [1.0] * 4, dtype=torch.float64)
    cf = H.crossfit(z_point, z_pair, val, 5, "domain_mean")
    assert cf["val_score"] == pytest.approx(1.0) and cf["lambdas"]["2.0"] == 1.0
    flipped = H.crossfit(z_point, -z_pair, val, 5, "domain_mean")          # the pairwise head only hurts
    assert flipped["lambdas"]["0.0"] == 1.0 and flipped["val_score"] == pytest.approx(0.5)


def test_forms_crossfit_halves_by_domain_and_scores_held_out():
    """bench/forms.py: halvings split each domain in two disjoint halves; a policy chosen on one half is
    scored on the other. Chat is right raw and wrong corrected on every pair, safety the reverse, so
    "domain" holds out at 1.0 and never flips, raw and corrected at 0.5, and "half" (z − gap/2 = 0,
    a tie, wrong) at 0."""
    import forms
    from tinyrm.data import PreferencePair as P

    val = [P(f"q{i}", "a", "b", d, "t") for i, d in enumerate(["chat"] * 5 + ["safety"] * 6)]
    for a, b in forms.halvings(val, 3, seed=1):
        assert sorted(a + b) == list(range(11)) and not set(a) & set(b)
        assert sorted(sum(i < 5 for i in h) for h in (a, b)) == [2, 3] and sum(i >= 5 for i in a) == 3
    z = torch.tensor([1.0] * 5 + [-1.0] * 6, dtype=torch.float64)
    gap = torch.tensor([2.0] * 5 + [-2.0] * 6, dtype=torch.float64)
    cf = forms.crossfit(z, gap, val, 4, "domain_mean")
    assert cf["domain"]["val_score"] == pytest.approx(1.0) and cf["domain"]["flips"] == 0.0
    assert cf["raw"]["val_score"] == pytest.approx(0.5) and cf["corrected"]["val_score"] == pytest.approx(0.5)
    assert cf["half"]["val_score"] == 0.0 and cf["blend"]["val_score"] == pytest.approx(1.0)
    # "global": raw and corrected tie at 0.5 on every half, and a tie goes to the corrected reward
    assert cf["global"]["val_score"] == pytest.approx(0.5) and cf["global"]["flips"] == 0.0



def test_relevance_policy_table_averages_each_policy_over_runs():
    """bench/relevance.py --crossfit: each run's row shows every floor policy's cross-fitted figures and the
    domains the per-domain choice keeps; the last row is their mean over runs (hand-computed here)."""
    import relevance as R

    def run(name, score, flips, probe, keep):
        pols = {p: {"val_score": score + i / 100, "val_len_balanced": score, "flips": flips,
                    "val_probe_relevance": probe} for i, p in enumerate(R.POLICIES)}
        pols["domain"]["kept_on_all"] = keep
        return {"run": name, "policies": pols}
    text = R.policy_table([run("a", 0.60, 0.2, 0.9, {"chat": 1.0, "safety": 0.0}),
                           run("b", 0.70, 0.4, 0.5, {"chat": 0.0, "safety": 0.0})])
    rows = [r for r in text.splitlines() if r.startswith("| ")][1:]
    assert rows[0].startswith("| a | 0.600 (0.600) | 0.610 (0.600) |") and rows[0].endswith("| chat |")
    assert rows[1].endswith("| none |")
    assert rows[2].startswith("| **mean of 2** | 0.650 (0.650) | 0.660 (0.650) | 0.670 (0.650) | 0.680 (0.650) |")
    assert "| 0.30 / 0.30 | 0.700 / 0.700 / 0.700 / 0.700 |" in rows[2]


def test_scorelen_at_the_trained_length_reproduces_what_training_recorded(tiny_bert, tmp_path):
    """bench/scorelen.py refits the length form and the floor at each scoring length as training fits them:
    at the length the run trained at, it must give the run's own kept validation (the length form chosen at
    the kept step), its relevance_* row and its stored floor. A longer length reads more of each answer."""
    import scorelen
    from test_train import _cfg, _write, repeat_task
    from tinyrm import relevance as R
    from tinyrm.train import train
    filler = " and then it goes on about other things for a while"
    rows = [dict(r, chosen=r["chosen"] + "." + filler * (1 + i % 4),
                 rejected=r["rejected"] + "." + filler * (1 + i % 3))
            for i, r in enumerate(repeat_task(80, 5) + [dict(r, domain="safety") for r in repeat_task(80, 6)])]
    cfg = _cfg(tmp_path, tiny_bert, _write(tmp_path / "d.jsonl", rows), mode="pointwise", max_steps=6, max_len=48,
               lr=1e-2, eval_untrained=False, val_frac=0.25, val_max_pairs=40, length_correct=True,
               length_fit_pairs=20, length_choice="domain", probes=6,
               relevance_floor=0.2, relevance_fit_pairs=12, relevance_fit_made=5)
    train(cfg, run_dir=tmp_path / "run")
    out = scorelen.measure(tmp_path / "run", [48, 96], halvings=2, floor=cfg.relevance_floor)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in metrics if r.get("step") == out["step"] and "kept_val_score" in r)
    at = out["lens"]["48"]
    assert at["shares"] == step["length_shares"]
    assert at["length"]["val_score"] == pytest.approx(step["kept_val_score"], abs=1e-9)
    assert at["floor"]["val_score"] == pytest.approx(metrics[-1]["relevance_val_score"], abs=1e-9)
    stored = R.load(tmp_path / "run" / "best")
    assert at["weights"] == pytest.approx(stored["weights"], rel=1e-4)
    assert at["floors"] == pytest.approx(stored["floors"], abs=1e-6)
    assert out["lens"]["96"]["tokens_per_pair"] > at["tokens_per_pair"] + 10


def test_scorelen_means_by_hand():
    """bench/scorelen.py: the last rows average each length's stages over the runs, and the cost table the
    cross-fitted score, flips, tokens and seconds (hand-computed here)."""
    import scorelen
    from relevance import KEYS

    def run(v):
        lens = {}
        for L, up in (("192", 0.0), ("384", 0.01)):
            st = {s: {k: v + up + i / 100 for k in KEYS} for i, s in enumerate(scorelen.STAGES)}
            st["length"].update(crossfit_val_score=v - 0.01, crossfit_flips=v)
            lens[L] = {**st, "tokens_per_pair": v * int(L), "seconds": 100 * v}
        return {"run": "r", "lens": lens}
    text, means = scorelen.mean_table([run(0.6), run(0.7)], [192, 384])
    assert [m["stage"] for m in means] == list(scorelen.STAGES) * 2 and means[4]["max_len"] == 384
    assert means[0]["val_score"] == pytest.approx(0.65) and means[5]["val_probe_neighbour"] == pytest.approx(0.68)
    rows = text.splitlines()
    assert rows[2].startswith("| **mean of 2**, max_len 192, floor | 0.670 | 0.670 |")
    assert "| 192 | 0.640 | 0.65 | 125 | 65 |" in rows and "| 384 | 0.640 | 0.65 | 250 | 65 |" in rows
