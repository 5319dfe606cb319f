"""Each fused op against a straightforward float64 reference."""
import math

import pytest
import torch
import torch.nn.functional as F

from tinyrm.kernels import apply_rope, geglu, rope_cos_sin, varlen_attention, varlen_attention_reference
from tolerance import abs_matmul, encoder_tol, f32_tol  # float32 bounds from the computation (tests/tolerance.py)


def test_rope_matches_complex_rotation_float64():
    # rotate-half RoPE == multiplying (x_i, x_{i+d/2}) as a complex number by e^{i * pos * theta^(-2i/d)}
    T, H, D, theta = 7, 3, 8, 10000.0
    x = torch.randn(T, H, D, dtype=torch.float64)
    pos = torch.tensor([0, 1, 2, 0, 1, 2, 3])
    cos, sin = rope_cos_sin(pos, D, theta, torch.float64)
    out = apply_rope(x, cos, sin)
    ref = torch.empty_like(x)
    for t in range(T):
        for i in range(D // 2):
            ang = pos[t].item() * theta ** (-2 * i / D)
            for h in range(H):
                z = complex(x[t, h, i].item(), x[t, h, i + D // 2].item()) * complex(math.cos(ang), math.sin(ang))
                ref[t, h, i], ref[t, h, i + D // 2] = z.real, z.imag
    # angles are computed in float32: pos·θ^(-2i/d) and its cos/sin round a few times (n = 4) relative to
    # the largest angle, and the rotation scales that error by |x_i| + |x_{i+d/2}|
    torch.testing.assert_close(out, ref, **f32_tol(2 * x.abs().max() * (1 + pos.max()), n_terms=4))


def test_geglu_float64():
    x = torch.randn(5, 10, dtype=torch.float64)
    a, g = x[:, :5], x[:, 5:]
    ref = 0.5 * a * (1 + torch.erf(a / math.sqrt(2))) * g
    torch.testing.assert_close(geglu(x), ref)
    with torch.no_grad():                                  # the in-place path (no autograd)
        torch.testing.assert_close(geglu(x), ref)
    # with autograd: the gradient of gelu(a)·g by hand, and x itself is left untouched
    xg = x.clone().requires_grad_()
    geglu(xg).sum().backward()
    dgelu = 0.5 * (1 + torch.erf(a / math.sqrt(2))) + a * torch.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    torch.testing.assert_close(xg.grad, torch.cat([dgelu * g, ref / g], dim=1))
    torch.testing.assert_close(xg.detach(), x, rtol=0, atol=0)


@pytest.mark.parametrize("window", [None, 2, 5])
@pytest.mark.parametrize("seqlens", [[5, 9, 1, 9, 9, 4], [13], [3, 3]])
def test_varlen_attention_matches_dense_reference(seqlens, window):
    T, H, D = sum(seqlens), 4, 8
    q, k, v = (torch.randn(T, H, D, dtype=torch.float64) for _ in range(3))
    out = varlen_attention(q, k, v, seqlens, window)
    ref = varlen_attention_reference(q, k, v, seqlens, window)
    torch.testing.assert_close(out, ref)


def test_varlen_attention_gradients_match_reference():
    seqlens, H, D = [6, 6, 3], 2, 4
    T = sum(seqlens)
    base = [torch.randn(T, H, D, dtype=torch.float64) for _ in range(3)]
    grads = []
    for fn in (varlen_attention, varlen_attention_reference):
        ts = [b.clone().requires_grad_() for b in base]
        fn(*ts, seqlens, 2).pow(2).sum().backward()
        grads.append([t.grad for t in ts])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_reference_is_itself_right_on_one_sequence():
    # the oracle agrees with textbook softmax(QK^T/sqrt(d))V for a single global sequence
    q, k, v = (torch.randn(5, 1, 4, dtype=torch.float64) for _ in range(3))
    textbook = F.softmax(q[:, 0] @ k[:, 0].T / 2.0, -1) @ v[:, 0]
    torch.testing.assert_close(varlen_attention_reference(q, k, v, [5])[:, 0], textbook)


def test_bradley_terry_loss_hand_values():
    from tinyrm.kernels.bt_loss import bradley_terry_loss, preference_stats

    d = torch.tensor([0.0, 2.0, -1.0, 1000.0, -1000.0], dtype=torch.float64)
    per = bradley_terry_loss(d, reduction="none")
    # -log(1/(1+e^-x)) = log(1 + e^-x)
    expect = [math.log(2.0), math.log(1 + math.exp(-2)), math.log(1 + math.e), 0.0, 1000.0]
    torch.testing.assert_close(per, torch.tensor(expect, dtype=torch.float64))
    # a margin shifts the difference: loss(d, m) == loss(d - m)
    torch.testing.assert_close(bradley_terry_loss(d[:3], margin=0.5), bradley_terry_loss(d[:3] - 0.5))
    # gradient is -sigmoid(-d)/N
    x = d[:3].clone().requires_grad_()
    bradley_terry_loss(x).backward()
    torch.testing.assert_close(x.grad, -torch.sigmoid(-d[:3]) / 3)
    # label smoothing ε: -(1-ε)·log σ(x) - ε·log σ(-x), by hand; its gradient vanishes at x = log((1-ε)/ε)
    eps = 0.1
    sm = bradley_terry_loss(d[:3], reduction="none", smoothing=eps)
    want = [-(1 - eps) * math.log(1 / (1 + math.exp(-x))) - eps * math.log(1 / (1 + math.exp(x)))
            for x in (0, 2, -1)]
    torch.testing.assert_close(sm, torch.tensor(want, dtype=torch.float64))
    x = torch.tensor([math.log(9.0)], dtype=torch.float64, requires_grad=True)
    bradley_terry_loss(x, smoothing=eps).backward()
    assert abs(x.grad.item()) < 1e-15
    s = preference_stats(torch.tensor([0.0, 1.0, -2.0, 3.0]))
    assert s == {"acc": 0.5, "margin": 0.5}  # the tie counts as wrong


@pytest.mark.parametrize("n,d,o", [(1, 8, 16), (37, 384, 1536), (5, 64, 48)])
def test_linear_gelu_matches_float64(n, d, o):
    """The fused inference path (no grad) and the autograd fallback both equal gelu(xW^T + b) in float64."""
    from tinyrm.kernels import linear_gelu
    from tinyrm.kernels.linear_act import _fused

    g = torch.Generator().manual_seed(n + d)
    x, w, b = (torch.randn(*s, generator=g) for s in ((n, d), (o, d), (o,)))
    ref = F.gelu(x.double() @ w.double().T + b.double())
    with torch.no_grad():
        y = linear_gelu(x, w, b)
        y_nobias = linear_gelu(x, w, None)
    assert y.dtype == torch.float32
    # float32 sums over d terms: no worse than the plain float32 ops' own error against float64
    err_plain = (F.gelu(F.linear(x, w, b)).double() - ref).abs().max().item()
    s = abs_matmul(x, w.T) + b.double().abs()                   # Σ|terms| of xWᵀ + b; GELU' <= 1.13
    tol = f32_tol(1.13 * s, n_terms=d)
    assert (y.double() - ref).abs().max().item() <= 2 * err_plain + tol["atol"]
    torch.testing.assert_close(y.double(), ref, **tol)
    torch.testing.assert_close(y_nobias.double(), F.gelu(x.double() @ w.double().T), **tol)
    if _fused is not None:      # what linear_gelu returned is the oneDNN op's output (the dispatch
        # itself is checked by counting calls in test_bert_scoring_takes_the_fused_path_...)
        direct = _fused(x, w, b, "gelu", [], "none")
        torch.testing.assert_close(direct, y)
    # under bf16 autocast it must leave the GEMM to autocast (a float32 oneDNN call would be the slow one)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear_gelu(x, w, b).dtype == torch.bfloat16
    # with a gradient wanted it must take the differentiable path, and its gradient must be right
    w64 = w.double().requires_grad_()
    F.gelu(x.double() @ w64.T + b.double()).sum().backward()
    wg = w.clone().requires_grad_()
    linear_gelu(x, wg, b).sum().backward()
    # dW = (1·GELU'(z))ᵀ x sums n tokens, after z's own d-term sum: S = 1.13·Σ_n |x|
    torch.testing.assert_close(wg.grad.double(), w64.grad,
                               **f32_tol(1.13 * x.abs().sum(0), n_terms=max(n, d), steps=2))


def test_linear_gelu_memory_does_not_grow_with_new_row_counts():
    """oneDNN keeps a primitive (about 0.7 MB of generated code and state) for every input shape it meets;
    900 different row counts cost over 600 MB that way. Padded to ROW_BUCKET rows they share 15 shapes
    (< 15 MB); 100 MB leaves room for the allocator and still fails the unpadded call by far."""
    import tinyrm.kernels.linear_act as la
    from tinyrm.kernels import linear_gelu

    if la._fused is None:
        pytest.skip("this torch build has no oneDNN linear_pointwise")
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(1000, 64, generator=g), torch.randn(256, 64, generator=g), torch.randn(256, generator=g)
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 / 1e6      # MB
    with torch.no_grad():
        for n in range(1, 101):
            linear_gelu(x[:n], w, b)
        before = rss()
        for n in range(101, 1001):
            y = linear_gelu(x[:n], w, b)
        grown = rss() - before
    assert y.shape == (1000, 256) and grown < 100, f"resident memory grew {grown:.0f} MB over 900 row counts"
    torch.testing.assert_close(linear_gelu(x[:77], w, b), F.gelu(F.linear(x[:77], w, b)),
                               **f32_tol(1.13 * (abs_matmul(x[:77], w.T) + b.double().abs()), n_terms=64, sides=2))


def test_bert_scoring_takes_the_fused_path_with_merged_adapters(minilm_path, monkeypatch):
    """A trained (DoRA-adapted, merged) MiniLM scores through the fused linear+GELU, with the same logits
    as the unmerged adapters' own forward."""
    import tinyrm
    import tinyrm.kernels.linear_act as la
    from tinyrm.dora import add_dora, merge_all

    if la._fused is None:
        pytest.skip("this torch build has no oneDNN linear_pointwise")
    enc = tinyrm.load_encoder(minilm_path)
    add_dora(enc, 4, 8.0, ["query", "key", "value", "dense"])
    g = torch.Generator().manual_seed(0)
    for n, p in enc.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.05     # a non-trivial adapter
    ids = torch.randint(1000, 2000, (2, 40), generator=g)
    enc.eval()
    with torch.no_grad():
        ref = enc.encode(ids)                                      # unmerged: adapters' own forward
        calls = []
        monkeypatch.setattr(la, "_fused", lambda *a: calls.append(1) or torch.ops.mkldnn._linear_pointwise(*a))
        merge_all(enc)
        got = enc.encode(ids)
    assert len(calls) == enc.config.num_layers
    torch.testing.assert_close(got, ref, **encoder_tol(enc, ref, sides=2))  # two float32 forwards


@pytest.mark.parametrize("n, rows", [(10, 3), (9, 3), (4, 4), (3, 8), (7, 0)])
def test_by_rows_equals_one_call(n, rows):
    """by_rows(fn, ...) == fn(...) for a row-wise fn, whatever the remainder; every row computed once."""
    from tinyrm.kernels import by_rows

    g = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    seen = []

    def fn(a, b):
        seen.append(a.shape[0])
        return torch.cat([a * b, a - b], dim=1)                 # [m, 10]: output wider than input
    out = by_rows(fn, x, y, rows=rows)
    torch.testing.assert_close(out, torch.cat([x * y, x - y], dim=1), rtol=0, atol=0)
    assert sum(seen) == n and (rows <= 0 or max(seen) <= rows)
    assert len(seen) == (1 if rows <= 0 or n <= rows else -(-n // rows))


def test_bert_chunked_layers_match_whole_and_transformers(minilm_path, monkeypatch):
    """With chunks smaller than the batch (uneven remainder), BERT's inference forward still matches
    transformers and the unchunked forward; in grad mode (training, frozen layers too) it runs whole."""
    from transformers import BertModel
    import tinyrm
    import tinyrm.kernels.chunked as ch
    from tinyrm.encoder import packed_from_lists

    enc = tinyrm.load_encoder(minilm_path).eval()
    g = torch.Generator().manual_seed(3)
    lens = [37, 12, 50, 50, 8]
    seqs = [torch.randint(1000, 29000, (n,), generator=g).tolist() for n in lens]
    p = packed_from_lists(seqs, [[0] * n for n in lens])
    calls = []
    tail = type(enc.layers[0]).tail
    monkeypatch.setattr(type(enc.layers[0]), "tail", lambda self, x, o: calls.append(x.shape[0]) or tail(self, x, o))
    with torch.no_grad():
        monkeypatch.setattr(ch, "ROWS", 0)
        whole = enc.encode_packed(p)
        monkeypatch.setattr(ch, "ROWS", 23)
        calls.clear()
        chunked = enc.encode_packed(p)
    assert max(calls) == 23 and sum(calls) == sum(lens) * enc.config.num_layers   # really chunked
    # GEMMs of other M may round differently: two float32 forwards
    torch.testing.assert_close(chunked, whole, **encoder_tol(enc, whole, sides=2))
    ref = BertModel.from_pretrained(minilm_path).eval().double()               # float64 reference
    with torch.no_grad():
        theirs = torch.cat([ref(input_ids=torch.tensor([s])).last_hidden_state[0] for s in seqs])
    torch.testing.assert_close(chunked.double(), theirs, **encoder_tol(enc, theirs))
    # grad mode: every layer runs whole (one tail call each), frozen ones too, with the unchunked gradients
    enc.layers[0].requires_grad_(False)
    calls.clear()
    out = enc.encode_packed(p)
    assert calls == [sum(lens)] * enc.config.num_layers
    out.square().sum().backward()
    g1 = enc.layers[3].output.dense.weight.grad.clone()
    enc.zero_grad()
    monkeypatch.setattr(ch, "ROWS", 0)
    enc.encode_packed(p).square().sum().backward()
    torch.testing.assert_close(g1, enc.layers[3].output.dense.weight.grad, rtol=0, atol=0)
