"""DoRALinear against PEFT (the reference implementation) and float64 maths; add_dora / freeze_layers on
a stand-in module tree with the encoder's attribute names, and on the real tinyrm ModernBERT."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tinyrm.dora import DoRALinear, adapted_modules, add_dora, freeze_layers, merge_all, param_summary
from tinyrm.kernels.dora import base_row_norm_sq, dora_row_norm

from tolerance import f32_bound, f32_tol, magnitude  # noqa: E402  float32 bounds (tests/tolerance.py)
# the first unfrozen layer's input needs no grad, so its full backward hook fires on outputs only: expected
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


class _Holder(nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def _pair(in_f, out_f, r, alpha, bias, use_dora, seed=0, dropout=0.0):
    """A PEFT-wrapped Linear and our DoRALinear holding the same base and adapter values, with B != 0
    and the magnitude moved away from its initial ‖W0‖ so every term of the formula matters."""
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    base = nn.Linear(in_f, out_f, bias=bias)
    ours_base = nn.Linear(in_f, out_f, bias=bias)
    ours_base.load_state_dict(base.state_dict())
    peft = get_peft_model(_Holder(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin"],
                                                    use_dora=use_dora, lora_dropout=dropout))
    pl = peft.base_model.model.lin
    ours = DoRALinear(ours_base, r, alpha, use_dora=use_dora, dropout=dropout)
    with torch.no_grad():
        pl.lora_B["default"].weight.normal_(0, 0.5)
        ours.lora_A.copy_(pl.lora_A["default"].weight)
        ours.lora_B.copy_(pl.lora_B["default"].weight)
        if use_dora:
            mag = pl.lora_magnitude_vector["default"].weight
            mag.mul_(0.5 + torch.rand_like(mag))
            ours.magnitude.copy_(mag)
    return peft, pl, ours


def _peft_grads(pl, use_dora):
    g = [pl.lora_A["default"].weight.grad, pl.lora_B["default"].weight.grad]
    return g + ([pl.lora_magnitude_vector["default"].weight.grad] if use_dora else [])


def _our_grads(m):
    return [m.lora_A.grad, m.lora_B.grad] + ([m.magnitude.grad] if m.use_dora else [])


def _peft64(peft, x, g, use_dora):
    """A float64 copy of the PEFT model run on x with upstream gradient g: the exact-maths reference.
    Returns y, dx and the adapter gradients (order of _peft_grads)."""
    import copy
    p64 = copy.deepcopy(peft).double()
    p64.zero_grad(set_to_none=True)
    x64 = x.detach().double().requires_grad_()
    y = p64(x64)
    y.backward(g.double())
    return [y.detach(), x64.grad] + _peft_grads(p64.base_model.model.lin, use_dora)


def _term_sums(ours, x, g, x_scale=1.0):
    """Σ|terms| (tolerance.py's S) of y, dx, dA, dB and dm for our layer on x [..., in] with upstream g:
    y = c⊙(x Vᵀ) + bias, V = W0 + sBA, c = m/‖V‖_row (1 for LoRA); dx = (g⊙c)V; dA = s((g⊙c)B)ᵀx;
    dB = s(g⊙c)ᵀ(xAᵀ); dm = Σ_n g⊙(y - bias)/m (how the kernel gets it: y's error enters). x_scale bounds
    a dropout's 1/(1-p) rescaling of x."""
    with torch.no_grad():
        x2 = x.detach().reshape(-1, x.shape[-1]).double().abs() * x_scale
        g2 = g.detach().reshape(-1, g.shape[-1]).double().abs()
        w0, a, b = (t.detach().double() for t in (ours.weight, ours.lora_A, ours.lora_B))
        s = ours.scale
        v_abs = w0.abs() + s * b.abs() @ a.abs()
        c = (ours.magnitude.detach().double() / (w0 + s * b @ a).norm(dim=1) if ours.use_dora
             else torch.ones(w0.shape[0], dtype=torch.float64)).abs()
        bias = ours.bias.detach().double().abs() if ours.bias is not None else torch.zeros_like(c)
        xv = x2 @ v_abs.T                                               # [N, out]
        sums = [xv * c + bias, (g2 * c) @ v_abs, s * ((g2 * c) @ b.abs()).T @ x2, s * (g2 * c).T @ (x2 @ a.abs().T)]
        if ours.use_dora:                   # Σ g(y - bias)/m = Σ g z/‖V‖; rows with m = 0 use z directly
            m = ours.magnitude.detach().double().abs()
            sums.append((g2 * (xv / (w0 + s * b @ a).norm(dim=1) + torch.where(m > 0, bias / m, 0.0))).sum(0))
        return [float(t.max()) for t in sums]


def _assert_layer_close(got, ref, sums, n_terms, sides=1):
    """Each of y, dx, dA, dB(, dm) within the float32 bound: S from _term_sums, the forward GEMM and the
    backward reduction chained (steps=2)."""
    for name, a, b, s in zip(["y", "dx", "dA", "dB", "dm"], got, ref, sums):
        if a is not None:
            torch.testing.assert_close(a.double(), b.double(), **f32_tol(s, n_terms=n_terms, steps=2, sides=sides),
                                       msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("use_dora", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_layer_matches_peft(use_dora, bias):
    peft, pl, ours = _pair(48, 40, 6, 12, bias, use_dora)
    x = torch.randn(3, 7, 48)
    g = torch.randn(3, 7, 40)
    x2 = x.clone().requires_grad_()
    y2 = ours(x2)
    y2.backward(g)
    _assert_layer_close([y2, x2.grad] + _our_grads(ours), _peft64(peft, x, g, use_dora), _term_sums(ours, x, g),
                        n_terms=48)
    assert ours.weight.grad is None and (ours.bias is None or ours.bias.grad is None)


@pytest.mark.parametrize("use_dora", [True, False])
def test_layer_matches_peft_with_dropout(use_dora):
    # same seed -> same single dropout mask on both sides (it is the only random op in either forward)
    peft, pl, ours = _pair(32, 24, 4, 8, True, use_dora, dropout=0.3)
    peft.train(), ours.train()
    x, g = torch.randn(10, 32), torch.randn(10, 24)
    torch.manual_seed(7)
    y1 = peft(x)
    torch.manual_seed(7)
    y2 = ours(x)
    y1.backward(g), y2.backward(g)       # both float32 (a float64 run would draw another mask): sides=2
    _assert_layer_close([y2, None] + _our_grads(ours), [y1, None] + _peft_grads(pl, use_dora),
                        _term_sums(ours, x, g, x_scale=1 / 0.7), n_terms=32, sides=2)


@pytest.fixture(params=["exact", "sync_free"])
def row_paths(request, monkeypatch):
    """Run a test with the CPU (exact, nonzero()) and the accelerator (top-k, no host sync) row search."""
    import functools
    import tinyrm.kernels.dora as kd
    if request.param == "sync_free":
        monkeypatch.setattr(kd, "_rows_where", functools.partial(kd._rows_where, sync_free=True))
    return request.param


def test_grads_without_input_grad_and_zero_magnitude_row(row_paths):
    """x not requiring grad skips the big dX GEMM; a zero magnitude row (where y carries no trace of
    the pre-scale activations) still gets PEFT's magnitude gradient."""
    peft, pl, ours = _pair(20, 16, 4, 4, True, True)
    with torch.no_grad():
        pl.lora_magnitude_vector["default"].weight[3] = 0.0
        ours.magnitude[3] = 0.0
    x, g = torch.randn(9, 20), torch.randn(9, 16)
    ours(x).backward(g)
    _assert_layer_close([None, None] + _our_grads(ours), _peft64(peft, x, g, True), _term_sums(ours, x, g),
                        n_terms=20)


def test_forward_rows_matches_full_forward():
    _, _, ours = _pair(24, 30, 4, 8, True, True)
    rows = torch.tensor([5, 17])
    x = torch.randn(6, 24)
    full = ours(x)
    part = ours.forward_rows(x, rows)
    sums = _term_sums(ours, x, torch.ones(6, 30))         # two float32 paths of ours: sides=2
    tol = f32_tol(sums[0], n_terms=30, steps=2, sides=2)
    torch.testing.assert_close(part, full[:, rows], **tol)
    part.sum().backward()
    gm = ours.magnitude.grad.clone()
    ours.zero_grad()
    ours(x)[:, rows].sum().backward()
    torch.testing.assert_close(gm, ours.magnitude.grad, **f32_tol(sums[4], n_terms=30, steps=2, sides=2))
    ours.eval().merge()
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_rows(x, rows), full[:, rows], **tol)


@pytest.mark.heavy
@pytest.mark.parametrize("rank", [8, 128])
@pytest.mark.parametrize("shape", [(768, 2304), (1152, 768)])
def test_real_shapes_match_peft(shape, rank):
    peft, pl, ours = _pair(*shape, rank, 2 * rank, False, True)
    x, g = torch.randn(2048, shape[0]), torch.randn(2048, shape[1])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = peft(x1), ours(x2)
    y1.backward(g), y2.backward(g)
    _assert_layer_close([y2, x2.grad] + _our_grads(ours), [y1, x1.grad] + _peft_grads(pl, True),
                        _term_sums(ours, x, g), n_terms=2048, sides=2)


def test_autocast_bf16_close_to_float32():
    """Under CPU autocast (bf16) the layer runs in bf16 and its parameters still get float32 gradients,
    within bf16 accuracy of PEFT's float32 result (and no worse than PEFT's own autocast run)."""
    peft, pl, ours = _pair(64, 48, 4, 8, True, True)
    x, g = torch.randn(32, 64), torch.randn(32, 48)
    ref = peft(x)
    ref.backward(g)
    ref_grads = [t.clone() for t in _peft_grads(pl, True)]
    peft.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ours, y_peft = ours(x), peft(x)
    assert y_ours.dtype == torch.bfloat16
    y_ours.float().backward(g)
    y_peft.float().backward(g)

    def rel(a, b):
        return ((a.float() - b).abs().max() / b.abs().max()).item()
    assert rel(y_ours, ref) < max(2e-2, 2 * rel(y_peft, ref))
    for mine, theirs, r in zip(_our_grads(ours), _peft_grads(pl, True), ref_grads):
        assert mine.dtype == torch.float32
        assert rel(mine, r) < max(3e-2, 2 * rel(theirs, r))


def test_init_is_identity_and_matches_peft_init():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    ours = DoRALinear(base, 4, 8)
    x = torch.randn(5, 16)
    with torch.no_grad():
        s_y = magnitude(x.abs() @ base.weight.abs().T + base.bias.abs())   # Σ|terms| of x W0ᵀ + b
    torch.testing.assert_close(ours(x), base(x), **f32_tol(s_y, n_terms=16, sides=2))
    torch.testing.assert_close(ours.magnitude, base.weight.norm(dim=1),
                               **f32_tol(base.weight.norm(dim=1), n_terms=16, sides=2))
    assert not ours.lora_B.any()
    bound = 1 / 16 ** 0.5  # kaiming_uniform(a=sqrt 5) on [r, in] draws from U(-1/sqrt(in), 1/sqrt(in))
    assert ours.lora_A.abs().max() <= bound and ours.lora_A.std() > bound / 3


@pytest.mark.parametrize("use_dora", [True, False])
def test_merge_unmerge(use_dora):
    _, _, ours = _pair(32, 24, 4, 8, True, use_dora)
    ours.eval()
    w_before = ours.weight.detach().clone()
    x = torch.randn(5, 32)
    with torch.no_grad():
        y = ours(x)
        ours.merge()
        assert ours.merged       # merged W' = c(W0 + sBA), then one GEMM: two chained sums, both float32
        torch.testing.assert_close(ours(x), y, **f32_tol(_term_sums(ours, x, y)[0], n_terms=32, steps=2, sides=2))
        ours.unmerge()
    assert not ours.merged
    assert torch.equal(ours.weight, w_before)  # bit-exact: the base was never written
    with pytest.raises(RuntimeError, match="eval"):
        ours.train().merge()
    ours.eval().merge()
    ours.train()  # back to training unmerges
    assert not ours.merged


def test_merged_weight_follows_adapter_changes():
    _, _, ours = _pair(16, 8, 2, 4, False, True)
    ours.eval().merge()
    with torch.no_grad():
        ours.lora_B.add_(1.0)
        ours.magnitude.mul_(2.0)
    x = torch.randn(3, 16)
    with torch.no_grad():
        got = ours(x)
        ours.unmerge()
        torch.testing.assert_close(got, ours(x), **f32_tol(_term_sums(ours, x, got)[0], n_terms=16, steps=2, sides=2))


@pytest.mark.parametrize("update", [1e-6, 1e-3, 1.0, 30.0])
def test_norm_formula_vs_float64(update):
    torch.manual_seed(1)
    w0, a, b = torch.randn(96, 80), torch.randn(8, 80), torch.randn(96, 8) * update
    s = 2.0
    exact = (w0.double() + s * b.double() @ a.double()).norm(dim=1)
    got = dora_row_norm(w0, a, b, s, base_row_norm_sq(w0)).double()
    assert ((got - exact).abs() / exact / _expansion_ratio(w0, a, b, s)).max() < f32_bound(1, n_terms=80, steps=2)


def _expansion_ratio(w0, a, b, s):
    """Σ|terms| / ‖W0 + sBA‖² per row for the expanded norm² = ‖W0‖² + 2s⟨W0, BA⟩ + s²‖BA‖²: each term is
    bounded by ‖ |W0| + s|B||A| ‖², so the relative error of norm² (and of the norm, half of it) is within
    f32_bound × this ratio (the formula, in float32, cannot do better where the update cancels W0)."""
    w0, a, b = w0.double(), a.double(), b.double()
    return ((w0.abs() + s * b.abs() @ a.abs()).norm(dim=1) / (w0 + s * b @ a).norm(dim=1)) ** 2


def test_norm_formula_under_cancellation(row_paths):
    """Rows where s·BA nearly cancels W0: the expansion alone would lose all digits there."""
    torch.manual_seed(2)
    a, b = torch.randn(4, 64), torch.randn(32, 4)
    s = 0.5
    w0 = -s * (b @ a)
    w0[:8] += 1e-3 * torch.randn(8, 64)          # rows 0..7: ‖W0 + sBA‖ ~ 1e-3 ‖W0‖
    w0[8:] = torch.randn(24, 64)
    exact = (w0.double() + s * b.double() @ a.double()).norm(dim=1)
    got = dora_row_norm(w0, a, b, s, base_row_norm_sq(w0)).double()
    ratio = _expansion_ratio(w0, a, b, s)
    assert ratio[:8].min() > 1e5                 # the expansion alone would be off by > 1e5 × the bound
    ratio[:8] = 1.0                              # ... so these rows must be as accurate as an uncancelled one
    assert ((got - exact).abs() / exact / ratio).max() < f32_bound(1, n_terms=64, steps=2)


def test_base_norm_cache_invalidates_on_weight_change():
    _, _, ours = _pair(16, 8, 2, 4, False, True)
    first = ours.base_norm_sq()
    assert ours.base_norm_sq() is first          # cached
    with torch.no_grad():
        ours.weight.mul_(2.0)                    # e.g. load_state_dict copying new values in
    torch.testing.assert_close(ours.base_norm_sq(), first * 4)


# ---- a stand-in with the encoder's attribute names (ModernBERT layout, tied decoder) ----
class _Cfg:
    def __init__(self, n):
        self.num_layers = n


class _Layer(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.attn_norm = nn.LayerNorm(h)
        self.attn = nn.Module()
        self.attn.Wqkv, self.attn.Wo = nn.Linear(h, 3 * h, bias=False), nn.Linear(h, h, bias=False)
        self.mlp = nn.Module()
        self.mlp.Wi, self.mlp.Wo = nn.Linear(h, 4 * h, bias=False), nn.Linear(2 * h, h, bias=False)

    def forward(self, x):
        q, k, v = self.attn.Wqkv(self.attn_norm(x)).chunk(3, -1)
        x = x + self.attn.Wo(torch.tanh(q * k) * v)
        i, g = self.mlp.Wi(x).chunk(2, -1)
        return x + self.mlp.Wo(torch.nn.functional.gelu(i) * g)


class StandIn(nn.Module):
    def __init__(self, n=4, h=16, vocab=50):
        super().__init__()
        self.config = _Cfg(n)
        self.model = nn.Module()
        self.model.embeddings = nn.Module()
        self.model.embeddings.tok_embeddings = nn.Embedding(vocab, h)
        self.model.embeddings.norm = nn.LayerNorm(h)
        self.model.layers = nn.ModuleList(_Layer(h) for _ in range(n))
        self.model.final_norm = nn.LayerNorm(h)
        self.head = nn.Module()
        self.head.dense, self.head.norm = nn.Linear(h, h), nn.LayerNorm(h)
        self.decoder = nn.Linear(h, vocab)
        self.decoder.weight = self.model.embeddings.tok_embeddings.weight

    layers = property(lambda self: self.model.layers)
    embeddings = property(lambda self: self.model.embeddings)
    final_norm = property(lambda self: self.model.final_norm)

    def head_modules(self):
        return [self.head, self.decoder]

    def forward(self, ids):
        e = self.model.embeddings
        x = e.norm(e.tok_embeddings(ids))
        for layer in self.model.layers:
            x = layer(x)
        x = self.model.final_norm(x)
        return self.decoder(self.head.norm(torch.nn.functional.gelu(self.head.dense(x))))


def test_add_dora_names_keys_and_tied_decoder():
    torch.manual_seed(0)
    m = StandIn()
    base_keys = set(m.state_dict())
    ids = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        before = m(ids)
    names = add_dora(m, 4, 8, targets=["Wqkv", "Wo", "Wi", "dense", "decoder"])
    assert names == sorted(["decoder", "head.dense"] + [f"model.layers.{i}.{p}" for i in range(4)
                                                        for p in ("attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo")])
    keys = set(m.state_dict())
    assert base_keys <= keys                                  # base keys unchanged
    assert keys - base_keys == {f"{n}.{p}" for n in names for p in ("lora_A", "lora_B", "magnitude")}
    assert m.decoder.weight is m.model.embeddings.tok_embeddings.weight  # still tied, never copied
    with torch.no_grad():
        # B = 0: the model is unchanged (up to float32 rounding on both sides: 4 layers + head, sums of <= 2h)
        torch.testing.assert_close(m(ids), before, **f32_tol(before, n_terms=32, steps=5, sides=2))
    with pytest.raises(RuntimeError, match="already"):
        add_dora(m, 4, 8)
    with pytest.raises(ValueError, match="no nn.Linear"):
        add_dora(StandIn(), 4, 8, targets=["nope"])


def _hooks(m, k):
    """Record which layers a backward pass runs through; frozen layers' outputs must not need grad."""
    fired, handles = [], []
    for i, layer in enumerate(m.layers):
        handles.append(layer.register_full_backward_hook(lambda mod, gi, go, i=i: fired.append(i)))
        handles.append(layer.register_forward_hook(_check_grad_state(i, k, fired)))
    return fired, handles


def _check_grad_state(i, k, fired):
    def hook(mod, inp, out):  # returns None: a forward hook's return value would replace the output
        if out.requires_grad != (i >= k):
            fired.append(f"layer {i} output requires_grad={out.requires_grad}")
    return hook


@pytest.mark.parametrize("k", [0, 2, 4])
def test_freeze_layers_with_adapters(k):
    torch.manual_seed(0)
    m = StandIn()
    add_dora(m, 2, 4, targets=["Wqkv", "Wo", "Wi", "dense", "decoder"])
    freeze_layers(m, k)
    for name, mod in adapted_modules(m).items():
        in_frozen = name.startswith("model.layers.") and int(name.split(".")[2]) < k
        in_frozen |= k == 4 and not name.startswith("model.layers.")
        for p in (mod.lora_A, mod.lora_B, mod.magnitude):
            assert p.requires_grad == (not in_frozen), name
        assert not mod.weight.requires_grad
    for name, p in m.named_parameters():
        if not any(t in name for t in ("lora_", "magnitude")):
            assert not p.requires_grad, name              # train_base defaults to False with adapters
    fired, handles = _hooks(m, k)
    with torch.no_grad():
        for mod in adapted_modules(m).values():
            mod.lora_B.normal_()
    out = m(torch.randint(0, 50, (2, 5)))
    if k == 4:
        assert not out.requires_grad
    else:
        out.square().mean().backward()
        assert sorted(set(fired)) == list(range(k, 4))       # only unfrozen layers ran backward
    for name, p in m.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
        else:
            assert p.grad is not None, name
    for h in handles:
        h.remove()


def test_freeze_layers_full_finetune_and_train_base():
    torch.manual_seed(0)
    m = StandIn()
    freeze_layers(m, 1)                                     # no adapters: upper layers train fully
    train = {n for n, p in m.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("model.embeddings", "model.layers.0.")) for n in train)
    assert {"model.layers.1.attn.Wqkv.weight", "model.final_norm.weight", "head.dense.weight",
            "decoder.bias"} <= train
    fired, handles = _hooks(m, 1)
    m(torch.randint(0, 50, (2, 5))).sum().backward()
    assert sorted(set(fired)) == [1, 2, 3]
    assert m.model.layers[0].attn.Wqkv.weight.grad is None and m.model.embeddings.norm.weight.grad is None
    # the tied decoder weight is the (frozen) embedding: it gets no gradient either
    assert m.decoder.weight.grad is None
    for h in handles:
        h.remove()

    m2 = StandIn()
    add_dora(m2, 2, 4, targets=["Wqkv"])
    freeze_layers(m2, 2, train_base=True)                    # adapters + norms/other linears above k
    train = {n for n, p in m2.named_parameters() if p.requires_grad}
    assert "model.layers.2.attn_norm.weight" in train and "model.layers.2.mlp.Wi.weight" in train
    assert "model.layers.2.attn.Wqkv.weight" not in train   # adapted base stays frozen
    assert "model.layers.1.attn.Wqkv.lora_A" not in train and "model.layers.3.attn.Wqkv.lora_A" in train
    with pytest.raises(ValueError):
        freeze_layers(m2, 5)


def test_param_summary():
    m = StandIn()
    add_dora(m, 2, 4, targets=["Wqkv"])
    freeze_layers(m, 0)
    total = sum(p.numel() for p in m.parameters())
    train = 4 * (2 * 16 + 48 * 2 + 48)
    assert param_summary(m) == f"trainable params: {train:,} / {total:,} ({100 * train / total:.4f}%)"


def test_merge_all_on_model():
    torch.manual_seed(0)
    m = StandIn()
    add_dora(m, 2, 4)
    for mod in adapted_modules(m).values():
        with torch.no_grad():
            mod.lora_B.normal_()
    m.eval()
    ids = torch.randint(0, 50, (2, 5))
    emb = m.model.embeddings.tok_embeddings.weight.detach().clone()
    with torch.no_grad():
        y = m(ids)
        merge_all(m)
        torch.testing.assert_close(m(ids), y, **f32_tol(y, n_terms=32, steps=5, sides=2))  # 4 layers + head
        for mod in adapted_modules(m).values():
            mod.unmerge()
    assert torch.equal(m.model.embeddings.tok_embeddings.weight, emb)


# ---- the real tinyrm ModernBERT against transformers + peft ----
def _same_adapters_in_peft(ours, peft_model):
    """Copy our adapter values into the PEFT model (names map 1:1)."""
    pm = dict(peft_model.base_model.model.named_modules())
    with torch.no_grad():
        for name, mod in adapted_modules(ours).items():
            pl = pm[name]
            pl.lora_A["default"].weight.copy_(mod.lora_A)
            pl.lora_B["default"].weight.copy_(mod.lora_B)
            pl.lora_magnitude_vector["default"].weight.copy_(mod.magnitude)


def randomize_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in adapted_modules(model).values():
            mod.lora_B.copy_(torch.randn(mod.lora_B.shape, generator=g) * 0.3)
            if mod.magnitude is not None:
                mod.magnitude.mul_(0.7 + 0.6 * torch.rand(mod.magnitude.shape, generator=g))


def test_real_modernbert_dora_matches_transformers_peft(tiny_modernbert):
    import tinyrm
    from peft import LoraConfig, get_peft_model
    from transformers import ModernBertForMaskedLM
    from conftest import padded_batch
    folder, _ = tiny_modernbert
    targets = ["Wqkv", "Wo", "Wi", "dense", "decoder"]
    enc = tinyrm.load_encoder(folder)
    names = add_dora(enc, 4, 8, targets=targets)
    assert len(names) == 5 * 4 + 2
    randomize_adapters(enc)
    hf = ModernBertForMaskedLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    peft_model = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True))
    assert sorted(n.removeprefix("base_model.model.") for n, m in peft_model.named_modules()
                  if hasattr(m, "lora_magnitude_vector") and n.startswith("base_model.model.")) == names
    _same_adapters_in_peft(enc, peft_model)
    ids, mask = padded_batch([9, 6, 12])
    peft_model.eval(), enc.eval()
    with torch.no_grad():
        ref = peft_model.double()(input_ids=ids, attention_mask=mask).logits      # float64: exact maths
        got = enc(ids, mask)
    m = mask.bool()
    # float32 error of a network: the longest sum (intermediate 96) once per layer, and the head
    tol = f32_tol(ref[m], n_terms=96, steps=enc.config.num_layers + 1)
    torch.testing.assert_close(got[m].double(), ref[m], **tol)
    with torch.no_grad():
        merge_all(enc)
        torch.testing.assert_close(enc(ids, mask)[m].double(), ref[m], **tol)


def test_real_modernbert_freezing_skips_bottom_layers(tiny_modernbert):
    import tinyrm
    from conftest import padded_batch
    folder, _ = tiny_modernbert
    enc = tinyrm.load_encoder(folder).train()
    add_dora(enc, 2, 4)
    randomize_adapters(enc)
    k = 3
    freeze_layers(enc, k)
    fired = []
    for i, layer in enumerate(enc.layers):
        layer.register_full_backward_hook(lambda mod, gi, go, i=i: fired.append(i))
    ids, mask = padded_batch([7, 5])
    enc(ids, mask, positions=torch.tensor([1, 2])).logsumexp(-1).sum().backward()
    n = enc.config.num_layers
    assert sorted(set(fired)) == list(range(k, n))
    for name, p in enc.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
        if p.requires_grad:
            assert any(t in name for t in ("lora_A", "lora_B", "magnitude"))
    assert enc.decoder.weight is enc.model.embeddings.tok_embeddings.weight


def test_real_minilm_bert_targets_match_transformers_peft(minilm_path):
    """BERT layout (MiniLM-L6): every query/key/value/dense adapted; the encoder's hidden states match
    transformers' BertModel under PEFT with the same adapter values."""
    import tinyrm
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel
    from conftest import padded_batch
    from tinyrm.dora import BERT_TARGETS
    enc = tinyrm.load_encoder(minilm_path)
    names = add_dora(enc, 4, 8, targets=BERT_TARGETS)
    assert len(names) == 6 * 6 + 2 and "cls.predictions.decoder" in names
    randomize_adapters(enc)
    body = [n.removeprefix("bert.") for n in names if n.startswith("bert.")]
    hf = BertModel.from_pretrained(minilm_path, add_pooling_layer=False).eval()
    peft_model = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, target_modules=body, use_dora=True)).eval()
    pm = dict(peft_model.base_model.model.named_modules())
    with torch.no_grad():
        for name, mod in adapted_modules(enc).items():
            if name.startswith("bert."):
                pl = pm[name.removeprefix("bert.")]
                pl.lora_A["default"].weight.copy_(mod.lora_A)
                pl.lora_B["default"].weight.copy_(mod.lora_B)
                pl.lora_magnitude_vector["default"].weight.copy_(mod.magnitude)
    ids, mask = padded_batch([9, 5, 12])
    enc.eval()
    with torch.no_grad():
        ref = peft_model.double()(input_ids=ids, attention_mask=mask).last_hidden_state   # float64
        got = enc.encode(ids, mask)
    m = mask.bool()
    # the longest sum (intermediate 1536) once per layer and in the embeddings' norm
    torch.testing.assert_close(got[m].double(), ref[m],
                               **f32_tol(ref[m], n_terms=1536, steps=enc.config.num_layers + 1))


@pytest.mark.parametrize("tokens", [3, 200])  # both sides of the scale-weight / scale-output switch
def test_few_and_many_tokens_match_peft(tokens):
    peft, pl, ours = _pair(64, 40, 4, 8, True, True)
    x, g = torch.randn(tokens, 64), torch.randn(tokens, 40)
    x2 = x.clone().requires_grad_()
    y2 = ours(x2)
    y2.backward(g)
    _assert_layer_close([y2, x2.grad] + _our_grads(ours), _peft64(peft, x, g, True), _term_sums(ours, x, g),
                        n_terms=max(64, tokens))


@pytest.mark.heavy
def test_bench_script_runs_and_agrees():
    """bench/dora.py on tiny token counts: both sides agree and the memory measures are positive."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_dora", Path(__file__).parents[1] / "bench" / "dora.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.run(tokens=64, reps=1, ranks=[2], input_grads=[True, False])
    assert len(rows) == 2 * len(bench.SHAPES)
    for r in rows:
        # max |ours − PEFT| / max|PEFT| over outputs and gradients, both float32: the bound with S = max|PEFT|
        rel = f32_bound(1.0, n_terms=max(max(s[1:]) for s in bench.SHAPES), steps=2, sides=2)
        assert r[-1] < rel and min(r[8:10]) > 0 and min(r[11:13]) > 0
