"""Preference data: every row shape, bad rows, skip reports, mixes, validation split, overlap removal."""
import gzip
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tinyrm.data import DataError, PreferencePair, SkipReport, prompt_hash, read_pairs, render_turns
from tinyrm.mix import MixEntry, drop_overlap, load_mix, split_validation

from conftest import DATA as SHARED

needs_shared = pytest.mark.skipif(not SHARED.exists() and os.environ.get("CI") != "true",
                                  reason="shared data absent (fails instead under CI=true)")


def write(path: Path, rows, gz=False) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def hh(*turns):
    return "".join(f"\n\n{r}: {t}" for r, t in turns)


# ---- formats ----

def test_generic_with_domain_and_source_precedence(tmp_path):
    f = write(tmp_path / "mine.jsonl", [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad", "domain": "chat", "source": "up"},
        {"prompt": "Q2", "chosen": "good", "rejected": "bad"},
    ])
    pairs, rep = read_pairs(f)
    assert pairs == [PreferencePair("Q1", "good", "bad", "chat", "up"),
                     PreferencePair("Q2", "good", "bad", None, "mine")]
    assert (rep.total, rep.skipped) == (2, 0)
    pairs, _ = read_pairs(f, domain="safety", source="S")  # arguments beat row fields
    assert [(p.domain, p.source) for p in pairs] == [("safety", "S"), ("safety", "S")]


def test_gzip_and_stem(tmp_path):
    f = write(tmp_path / "packed.jsonl.gz", [{"prompt": "Q", "chosen": "a", "rejected": "b"}], gz=True)
    pairs, _ = read_pairs(f)
    assert pairs == [PreferencePair("Q", "a", "b", None, "packed")]


def test_hh_single_and_multi_turn(tmp_path):
    single = {"chosen": hh(("Human", "Hi there?"), ("Assistant", " Hello!  ")),
              "rejected": hh(("Human", "Hi there?"), ("Assistant", "Go away."))}
    multi = {"chosen": hh(("Human", "A?"), ("Assistant", "B."), ("Human", "C?"), ("Assistant", "Yes.")),
             "rejected": hh(("Human", "A?"), ("Assistant", "B."), ("Human", "C?"), ("Assistant", "No."))}
    pairs, _ = read_pairs(write(tmp_path / "hh.jsonl", [single, multi]))
    assert pairs[0] == PreferencePair("Hi there?", "Hello!", "Go away.", None, "hh")
    assert pairs[1].prompt == "User: A?\n\nAssistant: B.\n\nUser: C?"
    assert (pairs[1].chosen, pairs[1].rejected) == ("Yes.", "No.")


def test_hh_response_containing_its_own_assistant_marker(tmp_path):
    # Seen in the real data: a response that hallucinates a further turn. The prompt is the last
    # "\n\nAssistant:" shared by both transcripts, not the chosen one's own last marker.
    row = {"chosen": hh(("Human", "Q?"), ("Assistant", "Sure.\n\nAssistant: more")),
           "rejected": hh(("Human", "Q?"), ("Assistant", "No."))}
    (p,), _ = read_pairs(write(tmp_path / "x.jsonl", [row]))
    assert (p.prompt, p.chosen, p.rejected) == ("Q?", "Sure.\n\nAssistant: more", "No.")


def test_hh_without_shared_prefix_is_an_error(tmp_path):
    row = {"chosen": hh(("Human", "Q?"), ("Assistant", "A")), "rejected": "something else\n\nAssistant: B"}
    f = write(tmp_path / "x.jsonl", [row])
    with pytest.raises(DataError, match=rf"^{f}:1: no shared prefix"):
        read_pairs(f)


def test_trl_conversational(tmp_path):
    u, a, s = "user", "assistant", "system"
    m = lambda r, c: {"role": r, "content": c}  # noqa: E731
    rows = [
        {"prompt": [m(u, "Hi?")], "chosen": [m(a, " Hello ")], "rejected": [m(a, "Bye")]},
        {"chosen": [m(u, "A?"), m(a, "B."), m(u, "C?"), m(a, "Yes")],
         "rejected": [m(u, "A?"), m(a, "B."), m(u, "C?"), m(a, "No")]},
        {"prompt": [m(s, "Be kind."), m(u, "Q")], "chosen": [m(a, "x")], "rejected": [m(a, "y")]},
        {"prompt": "plain text prompt", "chosen": [m(a, "x")], "rejected": [m(a, "y")]},
    ]
    pairs, _ = read_pairs(write(tmp_path / "trl.jsonl", rows))
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("Hi?", "Hello", "Bye"),
        ("User: A?\n\nAssistant: B.\n\nUser: C?", "Yes", "No"),
        ("System: Be kind.\n\nUser: Q", "x", "y"),
        ("plain text prompt", "x", "y"),
    ]


def test_trl_errors(tmp_path):
    m = lambda r, c: {"role": r, "content": c}  # noqa: E731
    f = write(tmp_path / "t.jsonl", [
        {"chosen": [m("user", "A"), m("assistant", "x")], "rejected": [m("user", "B"), m("assistant", "y")]},
        {"prompt": [m("user", "A")], "chosen": [m("user", "x")], "rejected": [m("assistant", "y")]},
        {"prompt": [m("user", "A")], "chosen": [{"role": "assistant"}], "rejected": [m("assistant", "y")]},
    ])
    _, rep = read_pairs(f, skip_bad=True)
    assert rep.reasons == Counter({"no shared prefix": 1, "no assistant message": 1, "wrong type": 1})


def test_rewardbench_row(tmp_path):
    row = {"prompt": "P", "chosen": "c", "chosen_model": "m1", "rejected": "r", "rejected_model": "m2",
           "subset": "hep-go", "id": 17}
    (p,), _ = read_pairs(write(tmp_path / "rb.jsonl", [row]))
    assert p == PreferencePair("P", "c", "r", None, "rb", subset="hep-go", id="17")


def test_render_turns_rule():
    assert render_turns([("user", " only ")]) == "only"
    assert render_turns([("Human", "a"), ("assistant", "b"), ("user", "c")]) == "User: a\n\nAssistant: b\n\nUser: c"
    assert render_turns([("assistant", "hi")]) == "Assistant: hi"  # a lone non-user turn keeps its tag


# ---- bad rows ----

BAD_ROWS = [
    ('{"prompt": "Q", "chosen": "a", "rejected": "b"}', None),
    ('{"prompt": "Q", "chosen": "a", "rejected": ', "bad JSON"),
    ('{"prompt": "Q", "chosen": "a"}', "missing field"),
    ('{"prompt": 3, "chosen": "a", "rejected": "b"}', "wrong type"),
    ('{"prompt": "Q", "chosen": "  ", "rejected": "b"}', "empty response"),
    ('{"prompt": "Q", "chosen": "same", "rejected": "same "}', "identical responses"),
    ('[1, 2]', "wrong type"),
    ('{"prompt": "Q", "chosen": "a", "rejected": "b", "domain": 5}', "wrong type"),
    ('{"chosen": "no transcript here", "rejected": "b"}', "missing field"),
]


@pytest.mark.parametrize("line,reason", [r for r in BAD_ROWS if r[1]])
def test_bad_row_raises_with_file_and_line(tmp_path, line, reason):
    f = write(tmp_path / "bad.jsonl", [BAD_ROWS[0][0], "", line])  # line 2 is blank: still counted
    with pytest.raises(DataError, match=rf"^{f}:3: {reason}") as e:
        read_pairs(f)
    assert (e.value.line, e.value.reason) == (3, reason)


def test_skip_report_counts_and_summary(tmp_path):
    f = write(tmp_path / "file.jsonl", [r for r, _ in BAD_ROWS] + [BAD_ROWS[1][0]])
    pairs, rep = read_pairs(f, skip_bad=True)
    assert len(pairs) == 1 and rep.total == 10 and rep.skipped == 9
    assert rep.reasons == Counter({"wrong type": 3, "bad JSON": 2, "missing field": 2,
                                   "empty response": 1, "identical responses": 1})
    assert str(rep) == ("skipped 9 of 10 rows in file.jsonl: 3 wrong type, 2 bad JSON, 2 missing field, "
                        "1 empty response, 1 identical responses")
    assert str(SkipReport("d/x.jsonl", total=4)) == "skipped 0 of 4 rows in x.jsonl"


# ---- shipped files ----

# rows per the README table; skipped rows counted by reason (checked by hand against the raw files:
# e.g. ultrafeedback-train has 4 rows with chosen == rejected, one empty chosen, one empty rejected)
TRAIN = {
    "hh-rlhf-harmless-base-test.jsonl.gz": (2312, {"empty response": 4}),
    "hh-rlhf-harmless-sample.jsonl": (500, {}),
    "hh-rlhf-helpful-sample.jsonl": (500, {"empty response": 1}),
    "ultrafeedback-train.jsonl": (1000, {"identical responses": 4, "empty response": 2}),
    "ultrafeedback-eval.jsonl": (200, {"identical responses": 1}),
    "pku-saferlhf-sample.jsonl": (500, {}),
    "chatbot-arena-sample.jsonl": (420, {"identical responses": 5}),
    "dahoas-synthetic-sample.jsonl": (500, {}),
    "stack-exchange-sample.jsonl": (465, {}),
    "rmb-chat.jsonl.gz": (4455, {"identical responses": 7}),
    "rmb-safety.jsonl.gz": (3336, {"empty response": 2, "identical responses": 1}),
    "rmb-reasoning.jsonl.gz": (1479, {}),
}
README_DOMAIN = {"hh-rlhf-harmless-base-test.jsonl.gz": None, "hh-rlhf-harmless-sample.jsonl": None,
                 "hh-rlhf-helpful-sample.jsonl": None, "pku-saferlhf-sample.jsonl": "safety",
                 "stack-exchange-sample.jsonl": "reasoning", "rmb-safety.jsonl.gz": "safety",
                 "rmb-reasoning.jsonl.gz": "reasoning"}


@needs_shared
@pytest.mark.parametrize("name", sorted(TRAIN))
def test_shipped_training_files(name):
    rows, skips = TRAIN[name]
    pairs, rep = read_pairs(SHARED / "train" / name, skip_bad=True)
    assert rep.total == rows and dict(rep.reasons) == skips and len(pairs) == rows - sum(skips.values())
    assert {p.domain for p in pairs} == {README_DOMAIN.get(name, "chat")}
    assert all(p.prompt.strip() and p.chosen.strip() and p.rejected.strip() for p in pairs)
    if name.startswith("hh-"):
        assert all(not p.prompt.startswith("\n") and "Human:" not in p.prompt.split("\n\n")[0] for p in pairs)


RB_SUBSETS = {"alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
              "mt-bench-med": 40, "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
              "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
              "refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 154,
              "xstest-should-respond": 250, "donotanswer": 136, "math-prm": 447, "hep-cpp": 164,
              "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164}


@needs_shared
def test_shipped_rewardbench():
    pairs, rep = read_pairs(SHARED / "rewardbench" / "filtered.jsonl")  # strict: no row may be bad
    assert len(pairs) == rep.total == 2985
    assert Counter(p.subset for p in pairs) == RB_SUBSETS
    assert len({(p.subset, p.id) for p in pairs}) == 2985


# ---- mixes ----

def _rows(n, tag):
    return [{"prompt": f"{tag}{i}", "chosen": "c", "rejected": "r"} for i in range(n)]


def test_mix_weights(tmp_path):
    a = write(tmp_path / "a.jsonl", _rows(10, "a"))
    b = write(tmp_path / "b.jsonl", _rows(4, "b"))
    mix, _, reps = load_mix([MixEntry(str(a), 2.0), MixEntry(str(b), 0.5, domain="safety")], seed=3)
    counts = Counter(p.prompt for p in mix)
    assert len(mix) == 22 and len(reps) == 2
    assert all(counts[f"a{i}"] == 2 for i in range(10))           # 2.0: every row twice
    assert sorted(counts[f"b{i}"] for i in range(4)) == [0, 0, 1, 1]  # 0.5: half the rows, once
    assert {p.domain for p in mix if p.prompt[0] == "b"} == {"safety"}
    mix2, _, _ = load_mix([MixEntry(str(a), 2.0), MixEntry(str(b), 0.5, domain="safety")], seed=3)
    assert [p.prompt for p in mix2] == [p.prompt for p in mix]       # deterministic by seed
    mix3, _, _ = load_mix([MixEntry(str(a), 2.0), MixEntry(str(b), 0.5, domain="safety")], seed=4)
    assert [p.prompt for p in mix3] != [p.prompt for p in mix]
    assert [p.prompt for p in mix] != [p.prompt for p in sorted(mix, key=lambda p: p.prompt)]


def test_mix_fraction_max_rows_and_zero(tmp_path):
    a = write(tmp_path / "a.jsonl", _rows(10, "a"))
    mix, _, _ = load_mix([MixEntry(str(a), 1.5)], seed=0)
    counts = Counter(Counter(p.prompt for p in mix).values())
    assert counts == {2: 5, 1: 5}                                     # 1.5 = all once + a seeded half again
    mix, _, _ = load_mix([MixEntry(str(a), 2.0, max_rows=3)], seed=0)
    assert len(mix) == 6 and len({p.prompt for p in mix}) == 3
    assert load_mix([MixEntry(str(a), 0.0)], seed=0)[0] == []
    with pytest.raises(ValueError):
        load_mix([MixEntry(str(a), -1.0)], seed=0)


def test_mix_is_the_same_wherever_the_data_folder_lives(tmp_path):
    """Two copies of one data folder at different paths give the same mix, row for row: the seeded
    subsample of a fractional weight and of max_rows depends on the file's name, not where it lies."""
    mixes = []
    for root in (tmp_path / "here", tmp_path / "somewhere" / "else"):
        root.mkdir(parents=True)
        a, b = write(root / "a.jsonl", _rows(40, "a")), write(root / "b.jsonl", _rows(30, "b"))
        mixes.append(load_mix([MixEntry(str(a), 0.5), MixEntry(str(b), 1.0, max_rows=12)], seed=3, val_frac=0.1))
    (t1, v1, _), (t2, v2, _) = mixes
    assert [p.prompt for p in t1] == [p.prompt for p in t2] and [p.prompt for p in v1] == [p.prompt for p in v2]
    assert 0 < len({p.prompt for p in t1 if p.prompt[0] == "a"}) < 40      # the subsample is a real draw


def test_mix_holds_out_each_file_before_weighting(tmp_path):
    a = write(tmp_path / "a.jsonl", _rows(200, "a"))
    b = write(tmp_path / "b.jsonl", _rows(100, "b") + _rows(20, "a"))  # 20 prompts shared with a.jsonl
    expect = {q for q in [f"a{i}" for i in range(200)] + [f"b{i}" for i in range(100)] if prompt_hash(q, 3) < 0.1}
    vals = []
    for wa, wb in ((1.0, 1.0), (0.3, 2.0), (2.5, 0.5)):
        train, val, _ = load_mix([MixEntry(str(a), wa), MixEntry(str(b), wb)], seed=3, val_frac=0.1)
        assert not {p.prompt for p in train} & {p.prompt for p in val}   # shared prompts: held out of both
        vals.append(sorted(p.prompt for p in val))
        assert set(vals[-1]) == expect                                  # the hash slice of every file
    assert vals[0] == vals[1] == vals[2]                                # whatever the weights
    train, val, _ = load_mix([MixEntry(str(a), 1.0), MixEntry(str(b), 0.0)], seed=3, val_frac=0.1)
    assert {p.prompt for p in val} == {q for q in expect if q.startswith("a")}  # weight 0: no rows at all
    assert len(train) == 200 - len([q for q in expect if q.startswith("a")])


# ---- validation split ----

def _pairs(prompts):
    return [PreferencePair(q, "c", "r", None, "s") for q in prompts]


def test_prompt_hash_is_stable_across_processes():
    assert prompt_hash("hello") == 0.39874978866162214  # blake2b-64 of "0\x00hello"
    assert prompt_hash("  hello\n") == prompt_hash("hello")
    out = subprocess.run([sys.executable, "-c", "from tinyrm.data import prompt_hash; print(repr(prompt_hash('hello', 1)))"],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert float(out.stdout) == prompt_hash("hello", 1)
    expect = int.from_bytes(hashlib.blake2b(b"1\x00hello", digest_size=8).digest(), "big") / 2**64
    assert prompt_hash("hello", 1) == expect


def test_split_groups_by_prompt_and_is_deterministic():
    prompts = [f"q{i % 700}" for i in range(2000)]  # 700 prompts, 2-3 rows each
    pairs = _pairs(prompts)
    train, val = split_validation(pairs, frac=0.1, seed=5)
    assert len(train) + len(val) == 2000
    assert not {p.prompt for p in train} & {p.prompt for p in val}
    assert 140 <= len(val) <= 260                                  # ~10%
    expect_val = {q for q in set(prompts) if prompt_hash(q, 5) < 0.1}
    assert {p.prompt for p in val} == expect_val                   # membership depends only on the prompt
    assert [p.prompt for p in val] == [q for q in prompts if q in expect_val]  # input order kept
    again = split_validation(pairs, frac=0.1, seed=5)
    assert [p.prompt for p in again[1]] == [p.prompt for p in val]
    other = split_validation(pairs, frac=0.1, seed=6)[1]
    assert {p.prompt for p in other} != expect_val


def test_split_min_rows_and_errors():
    pairs = _pairs(["a", "a", "b", "c", "d", "e"])
    train, val = split_validation(pairs, frac=0.0, seed=0, min_rows=3)
    order = sorted("abcde", key=lambda q: prompt_hash(q, 0))
    taken, n = [], 0
    for q in order:                                                # whole groups in hash order until >= 3
        if n >= 3:
            break
        taken.append(q)
        n += 2 if q == "a" else 1
    assert sorted({p.prompt for p in val}) == sorted(taken) and len(val) == n
    assert split_validation(pairs, frac=0.0, min_rows=0)[1] == []
    with pytest.raises(ValueError):
        split_validation(_pairs(["x", "x"]), frac=0.5)
    with pytest.raises(ValueError):
        split_validation(pairs, frac=1.0)


def test_drop_overlap():
    pairs = _pairs(["What is 2+2?", " What is 2+2?\n", "what is 2+2?", "Other"])
    kept, n = drop_overlap(pairs, {"What is 2+2?"})
    assert n == 2 and [p.prompt for p in kept] == ["what is 2+2?", "Other"]


def test_train_pairs_is_a_seeded_prefix_of_the_mix_with_validation_unchanged(tmp_path):
    """train_pairs keeps the first n of the seeded, shuffled mix: a subset in the mix's proportions (both
    files present), the same pairs for the same seed, and the same validation pairs as the full mix."""
    from tinyrm.mix import load_data
    from tinyrm.recipe import TrainConfig

    a = write(tmp_path / "a.jsonl", _rows(300, "a"))
    b = write(tmp_path / "b.jsonl", [dict(r, domain="safety") for r in _rows(100, "b")])
    cfg = TrainConfig(data=[MixEntry(str(a)), MixEntry(str(b))], val_frac=0.1, drop_rewardbench_overlap=False,
                      seed=5)
    full, val_full, _ = load_data(cfg)
    cfg.train_pairs = 80
    sub, val, notes = load_data(cfg)
    assert [p.prompt for p in sub] == [p.prompt for p in full[:80]]
    assert [p.prompt for p in val] == [p.prompt for p in val_full]
    assert any("80 of the mix's" in n for n in notes)
    n_b = sum(p.prompt.startswith("b") for p in sub)
    assert 5 <= n_b <= 35                                        # about a quarter, as in the mix (20 expected)
    cfg.seed = 6
    other, _, _ = load_data(cfg)
    assert {p.prompt for p in other} != {p.prompt for p in sub}
    cfg.seed, cfg.train_pairs = 5, 10_000                        # more than the mix has: all of it
    assert [p.prompt for p in load_data(cfg)[0]] == [p.prompt for p in full]


def test_val_seed_holds_out_the_same_pairs_whatever_the_run_seed(tmp_path):
    """With val_seed set, runs of other seeds validate on the same pairs (sample and probes included) and
    none of them trains on one; their training order still follows their own seed. Without it (-1), the
    split follows the run's seed, so another seed trains on most of this one's held-out prompts."""
    from tinyrm.augment import probes
    from tinyrm.mix import load_data
    from tinyrm.recipe import TrainConfig

    a = write(tmp_path / "a.jsonl", _rows(300, "a"))
    b = write(tmp_path / "b.jsonl", [dict(r, domain="safety") for r in _rows(100, "b")])

    def run(seed, val_seed):
        cfg = TrainConfig(data=[MixEntry(str(a)), MixEntry(str(b))], val_frac=0.1, val_max_pairs=20,
                          drop_rewardbench_overlap=False, seed=seed, val_seed=val_seed)
        train, val, _ = load_data(cfg)
        return train, val, probes(val, 6, cfg.split_seed)

    t17, v17, p17 = run(17, 17)
    t18, v18, p18 = run(18, 17)
    assert len(v17) == 20 and [(p.prompt, p.chosen) for p in v17] == [(p.prompt, p.chosen) for p in v18]
    assert [(p.prompt, p.chosen, p.rejected) for p in p17] == [(p.prompt, p.chosen, p.rejected) for p in p18]
    held = {p.prompt for p in v17}
    assert not held & {p.prompt for p in t18}
    assert sorted(p.prompt for p in t17) == sorted(p.prompt for p in t18)           # the same pairs ...
    assert [p.prompt for p in t17] != [p.prompt for p in t18]                       # ... in their own order
    u18, w18, _ = run(18, -1)                                                       # the old behaviour
    assert {p.prompt for p in w18} != held and held & {p.prompt for p in u18}
    assert [p.prompt for p in run(17, -1)[1]] == [p.prompt for p in v17]            # -1 is the run's seed
