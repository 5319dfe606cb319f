"""rank() and reward_func(): hand-computed values through stub models whose logits are set by hand, and
the real scorer (a tiny random BERT) as the reference."""
from __future__ import annotations

import pytest
import torch

import tinyrm
from tinyrm.rank import rank, rank_many, reward_func
from tinyrm.scorer import RewardModel

from conftest import write_tiny_bert
from tolerance import reward_bound  # float32 bounds (tests/tolerance.py)


class StubPairwise:
    """compare_logits from a table z[(first, second)]: the log-odds that the response shown first wins."""
    mode = "pairwise"

    def __init__(self, z):
        self.z, self.sequences = z, 0

    def compare_logits(self, prompts, a, b, domains=None):
        self.sequences += 2 * len(a)                                   # both orders, as the real model does
        return torch.tensor([(self.z[x, y] - self.z[y, x]) / 2 for x, y in zip(a, b)])


class StubPointwise:
    mode = "pointwise"

    def __init__(self, rewards):
        self.rewards, self.calls = rewards, []

    def score(self, prompts, responses, domains=None):
        self.calls.append((list(prompts), list(responses), domains))
        return [self.rewards[r] for r in responses]


def test_pairwise_rank_is_the_mean_log_odds_by_hand():
    z = {("x", "y"): 2.0, ("y", "x"): -1.0,        # L(x, y) = 1.5
         ("x", "w"): 0.5, ("w", "x"): 0.5,         # L(x, w) = 0
         ("y", "w"): -3.0, ("w", "y"): 1.0}        # L(y, w) = -2
    rm = StubPairwise(z)
    order, scores = rank(rm, "q", ["x", "y", "w"])
    assert scores == pytest.approx([(1.5 + 0) / 2, (-1.5 - 2) / 2, (0 + 2) / 2])
    assert order == [2, 0, 1]
    assert rm.sequences == 3 * 2                    # n(n-1) sequences


def test_pairwise_single_and_empty():
    assert rank(StubPairwise({}), "q", ["only"]) == ([0], [0.0])
    assert rank(StubPairwise({}), "q", []) == ([], [])


def test_pointwise_rank_is_the_rewards_with_a_stable_order():
    rm = StubPointwise({"a": 1.0, "b": 3.0, "c": 3.0, "d": 0.0})
    order, scores = rank(rm, "q", ["a", "b", "c", "d"])
    assert scores == [1.0, 3.0, 3.0, 0.0] and order == [1, 2, 0, 3]     # the tie keeps input order
    assert rm.calls == [(["q"] * 4, ["a", "b", "c", "d"], None)]        # one call, no domains


def test_rank_many_is_one_call_and_slices_per_prompt():
    rm = StubPointwise({"a": 1.0, "b": 2.0, "c": -1.0})
    out = rank_many(rm, ["p", "q"], [["a", "b"], ["c"]], ["chat", None])
    assert out == [([1, 0], [1.0, 2.0]), ([0], [-1.0])]
    assert rm.calls == [(["p", "p", "q"], ["a", "b", "c"], ["chat", "chat", None])]


def test_bad_candidates_are_a_clear_error():
    with pytest.raises(ValueError, match="list of strings"):
        rank(StubPointwise({}), "q", ["a", 3])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path):
    return tinyrm.load_encoder(write_tiny_bert(tmp_path_factory.mktemp("bert-rank"), minilm_path, seed=3, layers=2))


PROMPT = "Name a prime number."
CANDS = ["Seven is prime.", "Nine.", "2 is the smallest prime number, and also the only even one.", "I don't know."]


def test_pointwise_rank_equals_score_on_a_real_model(tiny):
    rm = RewardModel(tiny, mode="pointwise", max_len=64)
    order, scores = rank(rm, PROMPT, CANDS)
    ref = rm.score([PROMPT] * len(CANDS), CANDS)
    assert scores == ref
    assert order == sorted(range(len(CANDS)), key=lambda i: -ref[i])


def test_pairwise_rank_equals_float64_log_odds_on_a_real_model(tiny, monkeypatch):
    rm = RewardModel(tiny, mode="pairwise", max_len=96)
    n = len(CANDS)
    sizes = []
    real = rm._logits
    monkeypatch.setattr(rm, "_logits", lambda exs: (sizes.append(len(exs)), real(exs))[1])
    order, scores = rank(rm, PROMPT, CANDS)
    assert sum(sizes) == n * (n - 1)
    # reference: each ordered pair's own pairwise_logits, averaged by hand in float64
    ref = []
    for i in range(n):
        tot = 0.0
        for j in range(n):
            if j != i:
                z_ij, z_ji = rm.pairwise_logits([PROMPT], [CANDS[i]], [CANDS[j]])
                tot += (z_ij.double().item() - z_ji.double().item()) / 2
        ref.append(tot / (n - 1))
    assert scores == pytest.approx(ref, abs=reward_bound(rm.enc))   # each pair logit within reward_bound
    assert order == sorted(range(n), key=lambda i: -scores[i])


def test_reward_func_matches_score_for_strings_and_conversations(tiny):
    rm = RewardModel(tiny, mode="pointwise", max_len=64)
    f = reward_func(rm)
    assert f(prompts=[PROMPT, "hi"], completions=CANDS[:2]) == rm.score([PROMPT, "hi"], CANDS[:2])
    conv = f(prompts=[[{"role": "user", "content": PROMPT}]],
             completions=[[{"role": "assistant", "content": CANDS[2]}]], ground_truth=["ignored"])
    assert conv == rm.score([PROMPT], [CANDS[2]])


def test_reward_func_passes_a_domain_column():
    rm = StubPointwise({"a": 1.0})
    assert reward_func(rm)(["p"], ["a"], domain=["math"]) == [1.0]
    assert rm.calls[-1][2] == ["math"]


def test_reward_func_refuses_pairwise_models():
    with pytest.raises(ValueError, match="pointwise model"):
        reward_func(StubPairwise({}))
    with pytest.raises(ValueError, match="neither a string"):
        reward_func(StubPointwise({}))(["p"], [3])


def test_reward_model_methods_delegate_here(tiny):
    rm = RewardModel(tiny, mode="pointwise", max_len=64)
    assert rm.rank(PROMPT, CANDS) == rank(rm, PROMPT, CANDS)
    assert rm.as_reward_func()([PROMPT], [CANDS[0]]) == rm.score([PROMPT], [CANDS[0]])


def test_score_prompts_each_row_with_its_domains_criterion(tiny):
    """A prefix = "criterion" model scores a row with its domain's prompt (the one training built), so the
    same response gets another reward under another domain; a "domain" model's one neutral prompt does not
    depend on the domain."""
    from tinyrm.prompts import CRITERION_PREFIX, build_pointwise
    rm = RewardModel(tiny, mode="pointwise", prefix="criterion", max_len=64)
    doms = ["chat", "safety", "reasoning", None]
    got = rm.score([PROMPT] * 4, [CANDS[0]] * 4, doms)
    cz = rm.cloze
    ref = rm._logits([build_pointwise(cz.tok, cz.sp, PROMPT, CANDS[0], CRITERION_PREFIX[d or "chat"], 64)
                      for d in doms]).tolist()
    assert got == ref                               # the same examples, scored in one call: bit for bit
    assert len({round(x, 4) for x in got[:3]}) == 3 and got[3] == got[0]   # None reads as chat
    neutral = RewardModel(tiny, mode="pointwise", prefix="domain", max_len=64)
    assert len(set(neutral.score([PROMPT] * 4, [CANDS[0]] * 4, doms))) == 1
