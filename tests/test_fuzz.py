"""Fuzzing every reader with hypothesis: rows (generic, RewardBench, HH, TRL conversational) as decoded values
and as raw file bytes, RewardBench files, TOML recipes and command-line overrides. Only the package's own
errors may come out (TinyrmError and its subclasses, RowError for one decoded row), and valid inputs
round-trip exactly. Inputs tried per test are counted (`TINYRM_FUZZ_COUNTS=file.json` writes them)."""
from __future__ import annotations

import gzip
import json
import math
import os
import string
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tinyrm.data import PreferencePair, RowError, parse_row, read_pairs
from tinyrm.errors import DataError, RecipeError, TinyrmError
from tinyrm.recipe import TrainConfig, load_recipe
from tinyrm.rewardbench import SUBSET_SECTION, RewardBenchError, load_rewardbench

TRIED: Counter = Counter()
FUZZ = settings(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    if os.environ.get("TINYRM_FUZZ_COUNTS"):
        Path(os.environ["TINYRM_FUZZ_COUNTS"]).write_text(json.dumps(dict(TRIED), indent=1, sort_keys=True))


# ---------------------------------------------------------------- strategies

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda k: st.lists(k, max_size=4) | st.dictionaries(st.text(max_size=8), k, max_size=4),
                           max_leaves=12)
FIELD_NAMES = ["prompt", "chosen", "rejected", "domain", "source", "subset", "id", "role", "content",
               "chosen_model", "rejected_model"]
message = st.fixed_dictionaries({}, optional={"role": json_values | st.sampled_from(["user", "assistant", "system"]),
                                              "content": json_values | st.text(max_size=20)})
field_value = json_values | st.lists(message, max_size=4) | st.just("\n\nHuman: hi\n\nAssistant: yo")
near_rows = st.dictionaries(st.sampled_from(FIELD_NAMES), field_value, max_size=7)

word = st.text(string.ascii_letters + string.digits + " .,!?'-é中", min_size=1, max_size=20).filter(lambda s: s.strip())


def _is(exc: BaseException, *types) -> bool:
    return isinstance(exc, types)


# ---------------------------------------------------------------- one decoded row

@settings(FUZZ, max_examples=800)
@given(obj=json_values | near_rows)
def test_parse_row_raises_only_row_errors(obj):
    TRIED["parse_row: any JSON value or near-row"] += 1
    try:
        p = parse_row(obj)
    except RowError:
        return
    assert isinstance(p, PreferencePair) and all(isinstance(x, str) for x in (p.prompt, p.chosen, p.rejected))
    assert p.chosen.strip() and p.rejected.strip() and p.chosen.strip() != p.rejected.strip()


# ---------------------------------------------------------------- raw file bytes

@settings(FUZZ, max_examples=150)
@given(lines=st.lists(st.binary(max_size=60) | near_rows.map(lambda r: json.dumps(r).encode()), max_size=8),
       gz=st.booleans(), cut=st.integers(0, 400))
def test_read_pairs_on_any_bytes(tmp_path_factory, lines, gz, cut):
    """Any bytes in a .jsonl (or a .jsonl.gz, possibly cut short): DataError or pairs; with skip_bad every
    non-blank line is a pair or a counted skip."""
    TRIED["read_pairs: arbitrary bytes files"] += 1
    raw = b"\n".join(lines)
    p = tmp_path_factory.mktemp("f") / ("d.jsonl.gz" if gz else "d.jsonl")
    p.write_bytes(gzip.compress(raw)[:cut or None] if gz else raw)
    for skip in (False, True):
        try:
            pairs, rep = read_pairs(p, skip_bad=skip)
        except DataError as e:
            assert str(e).startswith(f"{p}:")
            continue
        assert len(pairs) + rep.skipped == rep.total


# ---------------------------------------------------------------- valid rows round-trip

def _render(turns):
    """The documented prompt rule, written out again: one user turn is its text, else `Role: text` blocks."""
    names = {"user": "User", "human": "User", "assistant": "Assistant", "system": "System"}
    turns = [(names[r.lower()], t.strip()) for r, t in turns]
    if len(turns) == 1 and turns[0][0] == "User":
        return turns[0][1]
    return "\n\n".join(f"{r}: {t}" for r, t in turns)


@st.composite
def valid_rows(draw):
    """(row as written, the PreferencePair it must read back as): generic, HH or TRL conversational."""
    kind = draw(st.sampled_from(["generic", "hh", "trl", "trl-str-prompt"]))
    chosen, rejected = draw(word), draw(word)
    if chosen.strip() == rejected.strip():
        rejected = chosen.strip() + " no"
    domain = draw(st.none() | st.sampled_from(["chat", "safety", "math"]))
    if kind == "generic":
        prompt = draw(st.text(max_size=40))
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        want = (prompt, chosen, rejected)
    else:
        n = draw(st.integers(0, 2))
        turns = [("user", draw(word))] + [t for _ in range(n) for t in (("assistant", draw(word)), ("user", draw(word)))]
        if kind == "hh":
            head = "".join(f"\n\n{'Human' if r == 'user' else 'Assistant'}: {t}" for r, t in turns)
            row = {"chosen": f"{head}\n\nAssistant: {chosen}", "rejected": f"{head}\n\nAssistant: {rejected}"}
        else:
            msgs = [{"role": r, "content": t} for r, t in turns]
            if kind == "trl-str-prompt" and n == 0:
                row, msgs = {"prompt": turns[0][1]}, []
            else:
                row = {"prompt": msgs[:1]} if draw(st.booleans()) else {}
                msgs = msgs if not row else msgs[1:]
            row.update(chosen=msgs + [{"role": "assistant", "content": chosen}],
                       rejected=msgs + [{"role": "assistant", "content": rejected}])
        want = (_render(turns), chosen.strip(), rejected.strip())
    if domain:
        row["domain"] = domain
    return row, PreferencePair(*want, domain=domain, source="d")


@settings(FUZZ, max_examples=250)
@given(rows=st.lists(valid_rows(), min_size=1, max_size=6), gz=st.booleans())
def test_valid_rows_round_trip(tmp_path_factory, rows, gz):
    TRIED["read_pairs: valid generic/HH/TRL rows round-trip"] += len(rows)
    p = tmp_path_factory.mktemp("f") / ("d.jsonl.gz" if gz else "d.jsonl")
    text = "".join(json.dumps(r, ensure_ascii=bool(i % 2)) + "\n" for i, (r, _) in enumerate(rows)).encode()
    p.write_bytes(gzip.compress(text) if gz else text)
    pairs, rep = read_pairs(p)
    assert rep.skipped == 0 and pairs == [want for _, want in rows]


# ---------------------------------------------------------------- RewardBench rows

RB_FIELDS = ["prompt", "chosen", "rejected", "subset", "chosen_model", "rejected_model", "id"]
rb_rows = st.dictionaries(st.sampled_from(RB_FIELDS), json_values | st.sampled_from(sorted(SUBSET_SECTION)) | word,
                          max_size=8)


@settings(FUZZ, max_examples=150)
@given(rows=st.lists(rb_rows | json_values, max_size=5))
def test_load_rewardbench_raises_only_its_error(tmp_path_factory, rows):
    TRIED["load_rewardbench: fuzzed rows"] += 1
    p = tmp_path_factory.mktemp("f") / "rb.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        got = load_rewardbench(p)
    except RewardBenchError as e:
        assert str(e).startswith(f"{p}:")
        return
    assert len(got) == len(rows) and all(set(r) == set(RB_FIELDS) for r in got)


@st.composite
def valid_rb(draw):
    n = draw(st.integers(1, 6))
    subsets = draw(st.lists(st.sampled_from(sorted(SUBSET_SECTION)), min_size=n, max_size=n))
    return [{"prompt": draw(word), "chosen": draw(word), "rejected": draw(word), "subset": s,
             "chosen_model": draw(st.text(max_size=8)), "rejected_model": draw(st.text(max_size=8)),
             "id": draw(st.integers(0, 10**6)) * 10 + i if draw(st.booleans()) else f"x{i}"}
            for i, s in enumerate(subsets)]


@settings(FUZZ, max_examples=200)
@given(rows=valid_rb())
def test_valid_rewardbench_rows_round_trip(tmp_path_factory, rows):
    TRIED["load_rewardbench: valid rows round-trip"] += len(rows)
    p = tmp_path_factory.mktemp("f") / "rb.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_rewardbench(p) == rows


# ---------------------------------------------------------------- recipes and overrides

def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, (int, str)):
        return json.dumps(v) if isinstance(v, str) else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


NAMES = [f.name for f in fields(TrainConfig)]
toml_scalars = st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=12)
toml_values = st.recursive(toml_scalars, lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=5), k, max_size=3),
                           max_leaves=6)
entry = st.dictionaries(st.sampled_from(["path", "weight", "domain", "max_rows", "synth", "other"]),
                        toml_values | st.just("x.jsonl") | st.just("math"), max_size=4)


@settings(FUZZ, max_examples=200)
@given(fields_=st.dictionaries(st.sampled_from(NAMES + ["bogus"]), toml_values, max_size=5),
       tables=st.lists(st.tuples(st.sampled_from(["data", "val"]), entry), max_size=3),
       garbage=st.none() | st.binary(max_size=40))
def test_load_recipe_raises_only_recipe_errors(tmp_path_factory, fields_, tables, garbage):
    TRIED["load_recipe: generated TOML files"] += 1
    p = tmp_path_factory.mktemp("r") / "r.toml"
    text = "".join(f"{k} = {toml_value(v)}\n" for k, v in fields_.items() if k not in ("data", "val"))
    text += "".join(f"\n[[{t}]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in e.items()) for t, e in tables)
    p.write_bytes(text.encode("utf-8", "surrogatepass") + (garbage or b""))
    try:
        cfg = load_recipe(str(p))
    except RecipeError as e:
        assert str(e).startswith(f"{p}:")
        return
    assert isinstance(cfg, TrainConfig)


valid_fields = st.fixed_dictionaries({}, optional={
    "lr": st.floats(1e-6, 1.0), "rank": st.integers(1, 64), "mode": st.sampled_from(["pairwise", "pointwise"]),
    "use_dora": st.booleans(), "targets": st.lists(st.sampled_from(["query", "key", "value", "dense"]), min_size=1),
    "betas": st.tuples(st.floats(0, 0.999), st.floats(0, 0.999)).map(list), "dropout": st.floats(0, 0.9),
    "max_steps": st.integers(0, 10**6), "prefix": st.text(string.printable, max_size=12), "max_bad_steps": st.integers(1, 9)})


@settings(FUZZ, max_examples=200)
@given(values=valid_fields)
def test_valid_recipes_round_trip(tmp_path_factory, values):
    TRIED["load_recipe: valid recipes round-trip"] += 1
    p = tmp_path_factory.mktemp("r") / "r.toml"
    p.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()) + '[[data]]\npath = "x.jsonl"\n')
    cfg = load_recipe(str(p))
    for k, v in values.items():
        assert getattr(cfg, k) == (tuple(v) if k == "betas" else v), k


@settings(FUZZ, max_examples=400)
@given(ov=st.lists(st.sampled_from([f"--{n}" for n in NAMES] + [f"--{n.replace('_', '-')}" for n in NAMES] + ["-x", "--"])
                   | st.text(max_size=12), max_size=6))
def test_overrides_raise_only_recipe_errors(ov):
    TRIED["load_recipe: command-line overrides"] += 1
    try:
        cfg = load_recipe("default", ov)
    except RecipeError:
        return
    assert isinstance(cfg, TrainConfig)


def test_errors_are_the_packages_own():
    """What the fuzz tests accept as errors are the package's ValueError subclasses."""
    assert issubclass(RowError, ValueError) and RowError.__module__ == "tinyrm.data"
    for e in (DataError, RecipeError, RewardBenchError):
        assert issubclass(e, TinyrmError)
