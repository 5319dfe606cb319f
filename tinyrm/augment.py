"""Pairs whose label never follows the style: made from preference pairs, so a reward must read the substance.

A small reward model learns cheap cues first: the longer answer, the one with headers and bullets, the
one that restates the question. Three kinds of pair take those cues away (each from a real pair, labels
kept):

  style      one side dressed up (markdown header, bullets, bold, the question restated, padding
             sentences), the other left plain. In training, half the pairs dress the rejected answer and
             half the chosen one, so dressing is uncorrelated with the label; the validation probe
             dresses only the rejected one: a model that follows style falls below chance there.
  relevance  a prompt's chosen answer against the chosen answer of another prompt of the same domain
             (fluent, on-domain, and off-topic): the answer must fit this prompt.
  shuffle    the chosen answer against its own sentences in a shuffled order (same length, same words):
             coherence, not vocabulary.
  neighbour  a prompt's chosen answer against the chosen answer of the prompt of its domain that shares the
             most content words with it: an answer to a neighbouring request, on topic and fluent. It
             aims at RewardBench's adversarial instruction-following pairs; the probe is made from
             validation pairs, never from RewardBench.

Truncated copies are not made: "chosen vs its first half" would teach that longer is better.
`augment(pairs, fracs, seed)` adds round(frac · N) pairs of each kind to a training set; `probes(pairs, n,
seed)` makes held-out probes from validation pairs. Both are deterministic in their seed.
"""
from __future__ import annotations

import functools
import random
import re

from .data import PreferencePair

KINDS = ("style", "relevance", "shuffle", "neighbour")
NEAR_DUPLICATE = 0.5      # a prompt sharing this share of its words or more may ask the same thing: not a neighbour

_PADDING_OPEN = ["Great question!", "Certainly! Here is a detailed answer.", "I'd be happy to help with that.",
                 "This is an important topic, so let me explain it carefully.", "Sure, here is a thorough response."]
_PADDING_CLOSE = ["I hope this helps! Let me know if you have any other questions.",
                  "In summary, the points above cover everything you need to know.",
                  "Feel free to ask if anything is unclear.",
                  "Overall, this comprehensive overview should answer your question fully."]
_HEADERS = ["## Answer", "## Overview", "### Detailed Explanation", "## Key Points", "**Summary**"]
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences(text: str) -> list[str]:
    """Split prose into sentences (a rough rule: end punctuation, space, capital); code stays one piece."""
    if "```" in text or "\n    " in text:
        return [text]
    return [s for s in _SENT.split(text.strip()) if s]


def _restate(prompt: str) -> str:
    q = " ".join(prompt.strip().split())
    q = q if len(q) <= 160 else q[:157].rsplit(" ", 1)[0] + "..."
    return f"You asked: \"{q}\" Let me answer that."


def dress(text: str, prompt: str, rng: random.Random) -> str:
    """`text` with the trappings a style-following model likes, its content unchanged: a header, the
    question restated, bullets or a bold lead, and padding sentences; at least two of them, chosen by rng."""
    parts = rng.sample(["header", "restate", "bullets", "bold", "open", "close"], rng.randint(2, 4))
    body = text.strip()
    sents = sentences(body)
    if "bullets" in parts and len(sents) >= 2:
        body = "\n".join(f"- {s}" for s in sents)
    elif "bold" in parts and sents and len(sents[0]) < 200:
        body = f"**{sents[0]}**" + body[len(sents[0]):]
    lines = [rng.choice(_HEADERS)] if "header" in parts else []
    lines += [_restate(prompt)] if "restate" in parts else []
    lines += [rng.choice(_PADDING_OPEN)] if "open" in parts else []
    lines += [body]
    lines += [rng.choice(_PADDING_CLOSE)] if "close" in parts or len(parts) == 1 else []
    return "\n\n".join(lines)


def shuffled(text: str, rng: random.Random) -> str | None:
    """The sentences of `text` in another order, or None when it has fewer than three (nothing to break)."""
    s = sentences(text)
    if len(s) < 3:
        return None
    order = list(range(len(s)))
    while order == sorted(order):
        rng.shuffle(order)
    return " ".join(s[i] for i in order)


_WORD = re.compile(r"[a-z0-9]+")
_ROLES = frozenset({"human", "assistant", "user"})   # the turn markers of multi-turn prompts say nothing


@functools.lru_cache(maxsize=65536)
def _content_words(text: str) -> frozenset:
    """The words of four or more characters (a rough stop-word filter), lower-cased."""
    return frozenset(w for w in _WORD.findall(text.lower()) if len(w) >= 4) - _ROLES


def _similarity(a: str, b: str) -> float:
    """Jaccard overlap of the two texts' content words."""
    x, y = _content_words(a), _content_words(b)
    return len(x & y) / len(x | y) if x and y else 0.0


def neighbour(p: PreferencePair, others: list[PreferencePair]) -> PreferencePair | None:
    """The prompt among `others` nearest to p's (most content words shared, below NEAR_DUPLICATE; the first
    on a tie) whose chosen answer is not p's; None when no other prompt shares a word below that."""
    best, best_sim = None, 0.0
    for q in others:
        if q.prompt.strip() == p.prompt.strip() or q.chosen.strip() == p.chosen.strip():
            continue
        s = _similarity(p.prompt, q.prompt)
        if best_sim < s < NEAR_DUPLICATE:
            best, best_sim = q, s
    return best


def _pair(p: PreferencePair, chosen: str, rejected: str, kind: str) -> PreferencePair:
    return PreferencePair(p.prompt, chosen, rejected, p.domain, f"{kind}:{p.source}")


def make(kind: str, p: PreferencePair, others: list[PreferencePair], rng: random.Random,
         dress_side: str) -> PreferencePair | None:
    """One pair of `kind` from `p` (`others`: pairs of p's domain to borrow an answer from; dress_side:
    "rejected" or "chosen" for style)."""
    if kind == "style":
        if dress_side == "rejected":
            return _pair(p, p.chosen, dress(p.rejected, p.prompt, rng), kind)
        return _pair(p, dress(p.chosen, p.prompt, rng), p.rejected, kind)
    if kind == "relevance":
        for _ in range(8):                       # another prompt's answer, never this prompt's own
            q = rng.choice(others)
            if q.prompt.strip() != p.prompt.strip() and q.chosen.strip() != p.chosen.strip():
                return _pair(p, p.chosen, q.chosen, kind)
        return None
    if kind == "shuffle":
        s = shuffled(p.chosen, rng)
        return None if s is None else _pair(p, p.chosen, s, kind)
    if kind == "neighbour":
        q = neighbour(p, others)
        return None if q is None else _pair(p, p.chosen, q.chosen, kind)
    raise ValueError(f"augmentation kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _by_domain(pairs: list[PreferencePair]) -> dict:
    out: dict = {}
    for p in pairs:
        out.setdefault(p.domain, []).append(p)
    return out


def augment(pairs: list[PreferencePair], fracs: dict[str, float], seed: int) -> tuple[list[PreferencePair], dict]:
    """(pairs + new pairs in a seeded shuffle, {kind: count}): for each kind, round(frac · N) source pairs
    drawn without replacement. Style dresses the rejected side for even draws and the chosen for odd ones."""
    dom = _by_domain(pairs)
    new, counts = [], {}
    for kind in KINDS:
        frac = fracs.get(kind, 0.0)
        rng = random.Random(f"augment-{kind}-{seed}")
        picks = rng.sample(range(len(pairs)), min(len(pairs), round(frac * len(pairs)))) if frac > 0 else []
        made = [make(kind, pairs[i], dom[pairs[i].domain], rng, ("rejected", "chosen")[j % 2])
                for j, i in enumerate(picks)]
        made = [m for m in made if m is not None]
        counts[kind] = len(made)
        new += made
    out = pairs + new
    random.Random(f"augment-shuffle-{seed}").shuffle(out)
    return out, counts


def probes(pairs: list[PreferencePair], n: int, seed: int) -> list[PreferencePair]:
    """Held-out probes from validation pairs: up to `n` of each kind, the style probe with the REJECTED
    answer dressed (the right answer is the plain one). Their source is "probe-<kind>"."""
    dom, out = _by_domain(pairs), []
    for kind in KINDS:
        rng = random.Random(f"probe-{kind}-{seed}")
        made = []
        for i in rng.sample(range(len(pairs)), len(pairs)):
            if len(made) == n:
                break
            m = make(kind, pairs[i], dom[pairs[i].domain], rng, "rejected")
            if m is not None:
                made.append(PreferencePair(m.prompt, m.chosen, m.rejected, m.domain, f"probe-{kind}"))
        out += made
    return out
