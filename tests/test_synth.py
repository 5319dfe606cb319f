"""Synthetic reasoning pairs: the chosen side is right, the rejected side wrong in exactly one place."""
import ast
import calendar
import inspect
import re

import pytest

from tinyrm import synth
from tinyrm.mix import MixEntry, load_mix
from tinyrm.recipe import load_recipe

_EQ = re.compile(r"(\d+) (x|\+|-|/) \$?(\d+) = \$?(\d+)|2 x \((\d+) \+ (\d+)\) = (\d+)")


def _claims(text):
    """Every 'a op b = c' in a worked solution, with whether it is true ('/' rounds down)."""
    out = []
    for m in _EQ.finditer(text):
        if m.group(5):
            out.append(2 * (int(m.group(5)) + int(m.group(6))) == int(m.group(7)))
        else:
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            out.append({"x": a * b, "+": a + b, "-": a - b, "/": a // max(b, 1)}[op] == c)
    return out


def test_math_pairs_right_vs_one_slip():
    pairs = synth.generate("math", 200, seed=3)
    assert pairs == synth.generate("math", 200, seed=3)                    # deterministic
    assert pairs != synth.generate("math", 200, seed=4)
    for p in pairs:
        good, bad = _claims(p.chosen), _claims(p.rejected)
        assert good and all(good), p.chosen                             # every step of the chosen is right
        assert len(bad) == len(good) and bad.count(False) == 1, p.rejected   # one slip, carried forward
        # same template, same length in words: only numbers differ
        assert re.sub(r"\d+", "N", p.chosen) == re.sub(r"\d+", "N", p.rejected)
        assert p.chosen.splitlines()[-1] != p.rejected.splitlines()[-1]           # and a wrong answer
        assert p.domain == "reasoning" and p.source == "synth-math"


def test_code_pairs_real_function_vs_one_mutation():
    fn = next(n for n in ast.parse(inspect.getsource(calendar)).body
              if isinstance(n, ast.FunctionDef) and n.name == "leapdays")
    import random
    rng, differ, n = random.Random(0), 0, 0
    grid = [(a, b) for a in range(1890, 2030, 7) for b in range(1890, 2110, 11) if a <= b]
    while n < 25:
        p = synth.code_pair(rng, [("calendar", fn)])
        if p is None:
            continue
        n += 1
        ns_good, ns_bad = {}, {}
        exec(p.chosen.strip("`").removeprefix("python\n"), ns_good)
        exec(p.rejected.strip("`").removeprefix("python\n"), ns_bad)
        assert all(ns_good["leapdays"](a, b) == calendar.leapdays(a, b) for a, b in grid)
        differ += any(ns_bad["leapdays"](a, b) != calendar.leapdays(a, b) for a, b in grid)
        # one node changed, the signature (which the prompt quotes) untouched
        assert p.chosen.splitlines()[1] == p.rejected.splitlines()[1] == "def leapdays(y1, y2):"
        assert "leapdays(y1, y2)" in p.prompt and "leap years" in p.prompt
        assert '"""' not in p.chosen                                      # the docstring went to the prompt
    assert differ >= 22, differ                                           # mutations change behaviour


def test_code_pairs_from_the_stdlib_and_in_a_mix():
    pairs = synth.generate("code", 120, seed=0)
    assert len(pairs) == 120 and len({p.prompt for p in pairs}) > 50
    for p in pairs:
        assert p.chosen != p.rejected
        good, bad = (ast.parse(x.strip("`").removeprefix("python\n")) for x in (p.chosen, p.rejected))
        assert sum(a != b for a, b in zip(ast.dump(good).split(), ast.dump(bad).split())) >= 1
    mix, _, reports = load_mix([MixEntry(synth="code", max_rows=40), MixEntry(synth="math", max_rows=30, weight=2.0)], 0)
    assert len(mix) == 100 and {p.source for p in mix} == {"synth-code", "synth-math"}
    assert [r.total for r in reports] == [40, 30]
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        synth.generate("poetry", 3)


def test_recipe_synth_entries(tmp_path):
    r = tmp_path / "r.toml"
    r.write_text('[[data]]\nsynth = "math"\nmax_rows = 10\n')
    assert load_recipe(str(r)).data == [MixEntry(synth="math", max_rows=10)]
    r.write_text('[[data]]\nsynth = "math"\npath = "x.jsonl"\n')
    with pytest.raises(ValueError, match=r"r\.toml: \[\[data\]\]: entry 0 needs exactly one of 'path' or 'synth'"):
        load_recipe(str(r))
    r.write_text('[[data]]\nsynth = "poems"\n')
    with pytest.raises(ValueError, match="synth must be 'math' or 'code'"):
        load_recipe(str(r))
    r.write_text('[[data]]\npath = "x.jsonl"\nweigth = 2\n')
    with pytest.raises(ValueError, match="unknown key.*weigth"):
        load_recipe(str(r))


def test_generated_pairs_never_validate(tmp_path):
    """The validation split holds real pairs only; every generated pair goes to training."""
    import json
    from tinyrm.recipe import TrainConfig
    from tinyrm.mix import load_data

    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b", "domain": "chat"}) + "\n"
                            for i in range(200)))
    cfg = TrainConfig(data=[MixEntry(path=str(real)), MixEntry(synth="math", max_rows=300)], val_frac=0.2,
                      val_max_pairs=1000, drop_rewardbench_overlap=False)
    train, val, _ = load_data(cfg)
    assert val and all(p.source == "real" for p in val)
    assert sum(p.source == "synth-math" for p in train) == 300
    assert len(train) + len(val) == 500


def test_held_out_part_shares_no_function_with_training():
    train, val = synth.generate("code", 150, seed=5), synth.generate("code", 60, seed=5, part="val")
    fn = lambda p: p.prompt.split("`")[1].split("(")[0] + p.prompt.split("`")[3]   # name + module
    assert len(val) == 60 and not {fn(p) for p in train} & {fn(p) for p in val}
    funcs = synth.stdlib_functions()
    held = [f for f in funcs if synth.held_out(*f)]
    assert 0.1 < len(held) / len(funcs) < 0.3                       # about a fifth, fixed by name
    assert {fn(p) for p in val} <= {f.name + m for m, f in held}
    m_train, m_val = synth.generate("math", 50, seed=5), synth.generate("math", 50, seed=5, part="val")
    assert not {p.prompt for p in m_train} & {p.prompt for p in m_val}
    # a [[val]] mix draws from the held-out part; the training mix never does
    v, _, _ = load_mix([MixEntry(synth="code", max_rows=10)], 5, part="val")
    assert [p.prompt for p in v] and {fn(p) for p in v} <= {f.name + m for m, f in held}
    with pytest.raises(ValueError, match="part"):
        synth.generate("math", 2, part="test")
