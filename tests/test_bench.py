"""The benchmark helpers (bench/flops.py, machine.py, inputs.py, tables.py): FLOP formula against hand
computations and against the real modules' weights, the alternating timer, medians, memory probes, and a
CPU smoke run of bench/gpu.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import flops as F  # noqa: E402
import inputs as I  # noqa: E402
import machine as M  # noqa: E402
import tables as T  # noqa: E402


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
    base = M.rss_mb()
    if not M.reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs here")
    x = torch.ones(64 * 2 ** 20 // 4)  # 64 MB, touched
    x += 1
    del x
    assert M.peak_rss_mb() - base > 40


def test_synthetic_examples_have_the_template_layout():
    from tinyrm.prompts import Specials
    sp = Specials(cls_id=101, sep_id=102, mask_id=103, pad_id=0)
    exs = I.synthetic_pair_examples([10, 7], sp)
    assert [len(e) for e, _ in exs] == [10, 10, 7, 7] and [y for _, y in exs] == [0, 1, 0, 1]
    for e, _ in exs:
        assert e.input_ids[0] == 101 and e.input_ids[-1] == 102 and e.input_ids[e.mask_pos] == 103
        assert e.input_ids.count(103) == 1 and len(e.token_type_ids) == len(e)


def test_minimal_tokenizer_gives_the_answer_tokens(tmp_path):
    from tinyrm.prompts import Specials, answer_token_ids, load_tokenizer
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
