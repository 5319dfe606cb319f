"""Float32 comparison tolerances derived from the computation, not tuned to one machine's rounding.

Different CPUs (and ATen/oneDNN/MKL kernel paths on one CPU) sum in different orders and block sizes,
so two correct float32 results differ by rounding error only. That error is bounded here from the
computation: the unit roundoff, the number of accumulated terms and the size of those terms.

The bound. A float32 sum of n terms t_k (a dot product, a matmul entry, a reduction) has
        |fl(Σ t_k) − Σ t_k|  ≤  γ_n · Σ|t_k|,      γ_n = n·u / (1 − n·u),   u = 2⁻²⁴
in the worst case (Higham, Accuracy and Stability of Numerical Algorithms, §3.1). The worst case needs
every rounding to push the same way and grows with n; real roundings are close to independent and
mean-zero, and then (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019, Thm 3.1)
        |fl(Σ t_k) − Σ t_k|  ≤  λ·√n·u · Σ|t_k|     with probability ≥ 1 − 2n·exp(−λ²(1−u)²/2).
We use this probabilistic bound with λ = SAFETY = 6 (failure probability ≤ 2n·e⁻¹⁸ ≈ 3e-8·n per
entry, and in practice far less: the bound charges every partial sum with the full Σ|t_k|). A chain of
`steps` such sums (the layers of a network, the GEMMs of a backward) commits steps·n roundings, each at
most u of the activations' scale; the same argument over all of them gives √(steps·n):

        atol = λ · sides · √(steps · n) · u · S

  n      the longest accumulation in the computation (hidden size, sequence length, tokens summed),
  S      Σ|t_k| of that accumulation, its largest entry (abs_matmul computes it for a matmul), or,
         for a whole network whose inner sums are not at hand, max|reference| — the layer norms and
         residual stream keep the activations at that scale;
  steps  how many such accumulations the result is built from in sequence (layers of a network plus
         embeddings/head, the chained GEMMs of a backward);
  sides  1 when the reference is computed in float64 (only our float32 side errs), 2 when two
         float32 computations are compared (both err).
rtol is 0: S already scales the bound to the magnitudes involved.

What it still catches: a wrong scale by 1 + ε or a dropped term moves an entry by ~ε·S or more, while
the bound is λ·√(steps·n)·u ≈ 1e-5·√steps of S for n ≈ 1000: a 22-layer network's bound is 5e-5·S, so
any ε ≳ 1e-4 fails (a missing norm or a wrong scale is off by orders of magnitude more).
"""
from __future__ import annotations

import math

import torch

U32 = 2.0 ** -24                    # float32 unit roundoff (round to nearest)
SAFETY = 6.0                        # λ of the probabilistic bound above


def gamma(n: int, u: float = U32) -> float:
    """The deterministic worst-case factor γ_n = n·u / (1 − n·u) (for reference and comparison)."""
    assert n * u < 1, "n·u must stay below 1"
    return n * u / (1 - n * u)


def magnitude(*xs) -> float:
    """The largest |value| among numbers and tensors (a tensor counts by its max |entry|)."""
    m = 0.0
    for x in xs:
        m = max(m, float(x.detach().abs().max()) if torch.is_tensor(x) else abs(float(x)))
    return m


def abs_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a| @ |b| in float64: entry (i, j) is Σ_k |a_ik·b_kj|, the term sum bounding (a @ b)[i, j]'s error."""
    return a.detach().double().abs() @ b.detach().double().abs()


def f32_bound(*magnitudes, n_terms: int, steps: int = 1, sides: int = 1, safety: float = SAFETY) -> float:
    """λ·sides·√(steps·n)·u·S with S = magnitude(*magnitudes): see the module docstring."""
    return safety * sides * math.sqrt(steps * max(n_terms, 1)) * U32 * magnitude(*magnitudes)


def f32_tol(*magnitudes, n_terms: int, steps: int = 1, sides: int = 1, safety: float = SAFETY) -> dict:
    """assert_close keyword arguments (rtol=0, atol=f32_bound(...)) for a float32 result."""
    return dict(rtol=0.0, atol=f32_bound(*magnitudes, n_terms=n_terms, steps=steps, sides=sides, safety=safety))


def encoder_tol(enc, ref, sides: int = 1, layers: int | None = None) -> dict:
    """assert_close kwargs for a whole encoder's float32 output against `ref`: S = max|ref| (the norms keep
    activations at that scale), n = the widest sum (intermediate or hidden size; attention sums over fewer
    tokens in these tests), one step per layer run plus one for the embeddings/head. `layers`: how many
    layers the two computations differ in (all by default)."""
    cfg = enc.config
    steps = (cfg.num_layers if layers is None else layers) + 1
    return f32_tol(ref, n_terms=max(cfg.intermediate_size, cfg.hidden_size), steps=steps, sides=sides)


def logit_scale(enc) -> float:
    """A bound on Σ|terms| of any MLM logit h·E_v + b_v: the head ends in a LayerNorm, so ‖h‖₂ ≤
    √H·max|γ| + ‖β‖₂, and Σ_k |h_k·E_vk| ≤ ‖h‖₂·‖E_v‖₂ (Cauchy–Schwarz; for random-like vectors it is
    within ~1.6x of the sum itself). ‖E_v‖ is the largest decoder row (an adapted decoder's rows have
    norm |m| under DoRA, ‖W0 + sBA‖ under LoRA)."""
    head, dec = enc.head_modules()[0], enc.decoder_module()
    ln = [m for m in head.modules() if isinstance(m, torch.nn.LayerNorm)][-1]
    with torch.no_grad():
        h = math.sqrt(ln.normalized_shape[0]) * magnitude(ln.weight)
        h += float(ln.bias.double().norm()) if ln.bias is not None else 0.0
        if isinstance(dec, torch.nn.Linear):
            rows = dec.weight.double().norm(dim=1)
        elif getattr(dec, "use_dora", False):
            rows = dec.magnitude.double().abs()
        else:
            rows = dec.weight_norm().double()
        return h * float(rows.max()) + (magnitude(dec.bias) if dec.bias is not None else 0.0)


def reward_bound(enc, sides: int = 2) -> float:
    """How far a float32 reward logit(a) − logit(b) of `enc` may move between two forwards that differ only
    in rounding (other batch shapes, kernels, merged weights): twice one logit's encoder-level bound with
    S = logit_scale(enc)."""
    cfg = enc.config
    return 2 * f32_bound(logit_scale(enc), n_terms=max(cfg.intermediate_size, cfg.hidden_size),
                         steps=cfg.num_layers + 1, sides=sides)


def ols_slope_bound(x, delta: float) -> float:
    """How far the least-squares slope of y on x moves when every y moves by at most delta:
    slope = mean((y − ȳ)(x − x̄)) / var(x), so |Δslope| ≤ 2·delta·mean|x − x̄| / var(x) (0 if x is constant,
    where the fit returns 0 either way)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    var = ((x - x.mean()) ** 2).mean()
    return 0.0 if var <= 1e-12 else float(2 * delta * (x - x.mean()).abs().mean() / var)
