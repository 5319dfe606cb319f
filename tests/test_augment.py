"""Style, relevance and shuffle pairs (augment.py): the content survives, the label never follows the style."""
import random
from collections import Counter

import pytest

from tinyrm.augment import KINDS, augment, dress, neighbour, probes, sentences, shuffled
from tinyrm.data import PreferencePair
from tinyrm.errors import RecipeError
from tinyrm.recipe import load_recipe

PROSE = ("Paris is the capital of France. It lies on the Seine. The city has about two million people. "
         "Its museums draw visitors from everywhere.")


def _pairs(n=40):
    out = []
    for i in range(n):
        dom = ("chat", "safety", "reasoning")[i % 3]
        out.append(PreferencePair(f"Question {i}: tell me about topic {i}?", f"Good answer {i}. It has detail {i}. "
                                  f"And a third sentence {i}.", f"Bad answer {i}.", dom, f"src{i % 2}"))
    return out


def test_dress_keeps_every_sentence_and_adds_style():
    for seed in range(30):
        out = dress(PROSE, "Tell me about Paris.", random.Random(seed))
        assert out != PROSE
        for s in sentences(PROSE):
            assert s in out, (seed, s)                       # content unchanged, only wrapped
        assert len(out) > len(PROSE)


def test_shuffle_is_a_permutation_of_the_sentences():
    s = shuffled(PROSE, random.Random(3))
    assert s != PROSE and Counter(sentences(s)) == Counter(sentences(PROSE))
    assert len(s) == len(PROSE)                              # same words, same length: only order differs
    assert shuffled("One sentence. Two sentences.", random.Random(0)) is None


def test_augment_counts_labels_and_balance():
    pairs = _pairs(40)
    out, made = augment(pairs, {"style": 0.5, "relevance": 0.25, "shuffle": 0.25}, seed=5)
    assert made == {"style": 20, "relevance": 10, "shuffle": 10, "neighbour": 0}
    assert len(out) == 80 and all(p in out for p in pairs)
    new = [p for p in out if ":" in p.source]
    orig = {p.prompt: p for p in pairs}
    dressed = Counter()
    for p in new:
        src = orig[p.prompt]
        assert p.domain == src.domain
        kind = p.source.split(":")[0]
        if kind == "style":
            # exactly one side is the original, the other its dressed copy, and the label is the original's
            if p.chosen == src.chosen:
                assert src.rejected.strip() in p.rejected and p.rejected != src.rejected
                dressed["rejected"] += 1
            else:
                assert p.rejected == src.rejected and src.chosen.split(".")[0] in p.chosen
                dressed["chosen"] += 1
        elif kind == "relevance":
            other = [q for q in pairs if q.chosen == p.rejected]
            assert p.chosen == src.chosen and other and other[0].prompt != p.prompt
            assert other[0].domain == p.domain
        else:
            assert p.chosen == src.chosen and Counter(sentences(p.rejected)) == Counter(sentences(src.chosen))
    # style follows the label exactly half the time: it carries no information about it
    assert dressed == {"rejected": 10, "chosen": 10}
    again, _ = augment(pairs, {"style": 0.5, "relevance": 0.25, "shuffle": 0.25}, seed=5)
    assert again == out                                      # deterministic in the seed
    assert augment(pairs, {"style": 0.5}, seed=6)[0] != out


def test_probes_dress_only_the_wrong_answer():
    val = _pairs(30)
    pr = probes(val, 8, seed=1)
    # every prompt here has the same content words: no neighbour is far enough to be another request
    assert Counter(p.source for p in pr) == {f"probe-{k}": 8 for k in KINDS if k != "neighbour"}
    by_prompt = {p.prompt: p for p in val}
    for p in pr:
        if p.source == "probe-style":
            src = by_prompt[p.prompt]
            assert p.chosen == src.chosen and src.rejected.strip() in p.rejected and p.rejected != src.rejected


def test_neighbour_is_the_nearest_other_request_of_the_domain():
    """The neighbour probe's wrong answer is the chosen answer of the prompt sharing most content words
    (Jaccard over words of 4+ characters, by hand below), never a near-duplicate prompt or the same answer."""
    def pair(prompt, answer, dom="chat"):
        return PreferencePair(prompt, answer, "no.", dom, "src")
    p = pair("How do I bake sourdough bread at home without yeast?", "Use a starter.")
    q1 = pair("What temperature should I bake sourdough bread?", "About 230 C.")      # 3 shared of 9: 0.33
    q2 = pair("Best yeast for pizza dough", "Instant yeast.")                          # 1 of 9: 0.11
    dup = pair("How do I bake sourdough bread at home without any yeast?", "Wild yeast.")  # 6 of 6: 1.0
    same = pair("Sourdough bread bake at home without yeast, how?", "Use a starter.")  # p's own answer
    assert neighbour(p, [q2, dup, same, q1, p]) is q1
    assert neighbour(p, [q2, dup]) is q2
    assert neighbour(p, [dup, same, pair("Tell me a joke", "Knock knock.")]) is None
    val = [p, q1, q2, dup, pair("Pick a lock quickly", "I can't help.", "safety"),
           pair("Pick a lock on my own front door", "Call a locksmith.", "safety")]
    pr = [x for x in probes(val, 10, seed=0) if x.source == "probe-neighbour"]
    by = {x.prompt: x.rejected for x in pr}
    assert by[p.prompt] == q1.chosen
    assert by[q2.prompt] == p.chosen        # "yeast": 1 of 9 with p and with dup, a tie, and p comes first
    assert by["Pick a lock quickly"] == "Call a locksmith."                 # within its own domain only
    assert all(x.chosen == next(v.chosen for v in val if v.prompt == x.prompt) for x in pr)
    # in training (aug_neighbour) the same pairs, labelled, from the training set's own prompts
    out, made = augment(val, {"neighbour": 1.0}, seed=3)
    new = [x for x in out if x.source == "neighbour:src"]
    assert made["neighbour"] == len(new) == 6 and {x.prompt: x.rejected for x in new} == by


def test_recipe_fields_and_their_limits():
    cfg = load_recipe("default", ["--aug_style", "0.3", "--probes", "100", "--ema", "0.99"])
    assert (cfg.aug_style, cfg.probes, cfg.ema) == (0.3, 100, 0.99)
    for k, v in [("--aug_style", "-0.1"), ("--ema", "1.0"), ("--probes", "-1")]:
        with pytest.raises(RecipeError, match=k.lstrip("-")):
            load_recipe("default", [k, v])
