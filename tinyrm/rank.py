"""Rank candidate responses to one prompt, and a TRL-style reward function.

    order, scores = rank(rm, prompt, candidates)     # order: indices, best first
    trainer = GRPOTrainer(..., reward_funcs=reward_func(rm))

Pointwise models: one sequence per candidate; `scores` are the rewards `rm.score` gives, and `order`
sorts them descending (stable: ties keep the input order).

Pairwise models have no reward, only comparisons. The rule here is mean log-odds (Borda-style):
    score_i = mean over j != i of L(i, j),   L(i, j) = (z(i, j) - z(j, i)) / 2,
the log-odds that i beats j averaged over both presentation orders (`rm.compare_logits`). L is
antisymmetric, so every unordered pair is scored once in both orders: n(n-1) sequences for n
candidates, O(n^2) — 8 candidates cost 56 forwards, 32 cost 992. These scores are means of log-odds
against the other candidates, not rewards: they depend on the candidate set and are comparable only
within one call. A single candidate gets 0.0.
"""
from __future__ import annotations

from .prompts import render_turns
from .errors import TinyrmError


def _check(candidates, where: str = "candidates") -> list[str]:
    if not isinstance(candidates, (list, tuple)) or not all(isinstance(c, str) for c in candidates):
        raise TinyrmError(f"{where} must be a list of strings")
    return list(candidates)


def rank_many(rm, prompts, candidate_lists, domains=None) -> list[tuple[list[int], list[float]]]:
    """rank() for many prompts at once, in one model call (the token batches span all of them)."""
    lists = [_check(c) for c in candidate_lists]
    if len(lists) != len(prompts):
        raise TinyrmError(f"rank: {len(prompts)} prompts but {len(lists)} candidate lists")
    domains = list(domains) if domains is not None else [None] * len(prompts)
    if rm.mode == "pointwise":
        flat_domains = [d for d, c in zip(domains, lists) for _ in c]
        # no domain at all: pass None, so a length-corrected model uses its pooled slope as score() does
        flat = rm.score([q for q, c in zip(prompts, lists) for _ in c], [x for c in lists for x in c],
                        flat_domains if any(d is not None for d in flat_domains) else None)
        scores, at = [], 0
        for c in lists:
            scores.append(flat[at:at + len(c)])
            at += len(c)
    else:
        scores = _pairwise_scores(rm, prompts, lists, domains)
    return [(sorted(range(len(s)), key=lambda i: -s[i]), s) for s in scores]


def _pairwise_scores(rm, prompts, lists, domains) -> list[list[float]]:
    """Mean log-odds per candidate (module docstring), every unordered pair once via compare_logits."""
    pairs = [(k, i, j) for k, c in enumerate(lists) for i in range(len(c)) for j in range(i + 1, len(c))]
    if pairs:
        doms = [domains[k] for k, _, _ in pairs]
        z = rm.compare_logits([prompts[k] for k, _, _ in pairs], [lists[k][i] for k, i, _ in pairs],
                              [lists[k][j] for k, _, j in pairs],
                              doms if any(d is not None for d in doms) else None).tolist()
    sums = [[0.0] * len(c) for c in lists]
    for (k, i, j), zij in zip(pairs, z if pairs else []):
        sums[k][i] += zij            # L(i, j)
        sums[k][j] -= zij            # L(j, i) = -L(i, j)
    return [[s / (len(c) - 1) if len(c) > 1 else 0.0 for s in row] for row, c in zip(sums, lists)]


def rank(rm, prompt: str, candidates, domain: str | None = None) -> tuple[list[int], list[float]]:
    """(order, scores): candidate indices best first, and each candidate's score (module docstring)."""
    return rank_many(rm, [prompt], [candidates], [domain])[0]


def _text(x, what: str, i: int) -> str:
    """A TRL prompt/completion: a string, or a conversation [{role, content}, ...] (rendered by data.py's
    one rule; a completion's messages are the response, so their contents are joined)."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in x):
        if what == "prompt":
            return render_turns([(str(m.get("role", "user")), m["content"]) for m in x])
        return "\n\n".join(m["content"].strip() for m in x)
    raise TinyrmError(f"reward_func: {what} {i} is neither a string nor a list of {{role, content}} messages")


def reward_func(rm):
    """A TRL-style reward function `(prompts, completions, **kw) -> list[float]`: the pointwise reward of
    each completion. A `domain` column, if TRL passes one in kw, picks the length-correction slope."""
    if rm.mode != "pointwise":
        raise TinyrmError("reward_func needs a pointwise model: a pairwise model gives no per-response reward "
                         "(use rank() to order candidates)")

    def tinyrm_reward(prompts, completions, **kw) -> list[float]:
        if len(prompts) != len(completions):
            raise TinyrmError(f"reward_func: {len(prompts)} prompts but {len(completions)} completions")
        qs = [_text(p, "prompt", i) for i, p in enumerate(prompts)]
        rs = [_text(c, "completion", i) for i, c in enumerate(completions)]
        domains = kw.get("domain")
        return rm.score(qs, rs, list(domains) if domains is not None else None)

    return tinyrm_reward
