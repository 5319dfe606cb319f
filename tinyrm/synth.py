"""Synthetic reasoning pairs: correct vs subtly wrong, made here from material that is not RewardBench's.

The shipped data has no math or code-correctness preferences, so two generators fill the gap:

  math  multi-step word problems with a worked solution; the rejected solution makes one arithmetic
        slip in one step and carries the wrong value through the later steps (as a real solver would),
        so it ends on a wrong answer while looking exactly as confident and as long.
  code  functions from Python's own standard library (pure-Python modules on this machine); the prompt
        asks for the function by its signature and docstring, the chosen answer is its code, the rejected
        one the same code with one mutation (a flipped comparison, an off-by-one constant, a swapped
        operator or boolean). Both go through `ast.unparse`, so formatting never tells them apart.

Both are deterministic in (kind, n, seed, part). In a recipe: `[[data]]  synth = "math"  max_rows = 600`.
A `[[val]]` synth entry draws from the held-out part instead: code from functions that the training part never
uses (a fixed fifth of them, by a hash of `module.name`), math from its own random stream. So a validation
accuracy on it measures checking, not recall of the chosen answers seen in training.
"""
from __future__ import annotations

import ast
import copy
import importlib
import inspect
import random
import textwrap
import warnings

from .data import PreferencePair, prompt_hash

# ---- math ----

_NAMES = "Maya Liam Ava Noah Zoe Omar Lena Ravi Sofia Ken Ines Tomas Aisha Hugo Mei Jonas".split()
_ITEMS = [("pencil", "pencils"), ("notebook", "notebooks"), ("apple", "apples"), ("ticket", "tickets"),
          ("book", "books"), ("cup of coffee", "cups of coffee"), ("sticker", "stickers"), ("mug", "mugs")]


def _slip(rng: random.Random, v: int) -> int:
    """A plausible arithmetic slip: off by a small amount, or a dropped/duplicated ten."""
    d = rng.choice([-10, -2, -1, 1, 2, 10]) if abs(v) > 12 else rng.choice([-2, -1, 1, 2])
    return v + d if v + d > 0 else v + abs(d)      # a positive quantity stays positive


def _shopping(rng):
    name, (a1, a2), (b1, b2) = rng.choice(_NAMES), *rng.sample(_ITEMS, 2)
    pa, pb, na, nb = rng.randint(2, 15), rng.randint(2, 25), rng.randint(2, 9), rng.randint(2, 9)
    pay = (pa * na + pb * nb) // 10 * 10 + rng.choice([20, 50])   # change stays positive after a slip
    q = (f"{name} buys {na} {a2} at ${pa} each and {nb} {b2} at ${pb} each, and pays with ${pay}. "
         f"How much change does {name} get?")
    steps = [(lambda v: pa * na, lambda v: f"The {a2} cost {na} x ${pa} = ${v[0]}."),
             (lambda v: pb * nb, lambda v: f"The {b2} cost {nb} x ${pb} = ${v[1]}."),
             (lambda v: v[0] + v[1], lambda v: f"Together that is ${v[0]} + ${v[1]} = ${v[2]}."),
             (lambda v: pay - v[2], lambda v: f"The change is ${pay} - ${v[2]} = ${v[3]}.")]
    return q, steps, lambda v: f"${v[-1]}"


def _travel(rng):
    name = rng.choice(_NAMES)
    v1, t1, v2, t2 = rng.randint(20, 90), rng.randint(2, 6), rng.randint(20, 90), rng.randint(2, 6)
    q = (f"{name} drives at {v1} km/h for {t1} hours, then at {v2} km/h for {t2} hours. "
         f"What is the average speed over the whole trip, rounded down to a whole km/h?")
    steps = [(lambda v: v1 * t1, lambda v: f"First part: {v1} x {t1} = {v[0]} km."),
             (lambda v: v2 * t2, lambda v: f"Second part: {v2} x {t2} = {v[1]} km."),
             (lambda v: v[0] + v[1], lambda v: f"Total distance: {v[0]} + {v[1]} = {v[2]} km."),
             (lambda v: t1 + t2, lambda v: f"Total time: {t1} + {t2} = {v[3]} hours."),
             (lambda v: v[2] // v[3], lambda v: f"Average speed: {v[2]} / {v[3]} = {v[4]} km/h (rounded down).")]
    return q, steps, lambda v: f"{v[-1]} km/h"


def _savings(rng):
    name = rng.choice(_NAMES)
    start, weekly, weeks = rng.randint(10, 200), rng.randint(5, 40), rng.randint(3, 12)
    spend = rng.randint(5, min(60, start + weekly * weeks - 15))    # never more than a slipped total
    q = (f"{name} has ${start} saved, adds ${weekly} every week for {weeks} weeks, and then spends ${spend} "
         f"on a gift. How much money is left?")
    steps = [(lambda v: weekly * weeks, lambda v: f"Weekly savings: {weeks} x ${weekly} = ${v[0]}."),
             (lambda v: start + v[0], lambda v: f"Before the gift: ${start} + ${v[0]} = ${v[1]}."),
             (lambda v: v[1] - spend, lambda v: f"After the gift: ${v[1]} - ${spend} = ${v[2]}.")]
    return q, steps, lambda v: f"${v[-1]}"


def _rectangle(rng):
    w, h, cut = rng.randint(3, 30), rng.randint(3, 30), rng.randint(1, 3)
    q = (f"A garden is {w} m by {h} m. A square bed of side {cut} m is removed from one corner. "
         f"What area remains, and what does fencing the original rectangle cost at $3 per metre?")
    steps = [(lambda v: w * h, lambda v: f"Garden area: {w} x {h} = {v[0]} m^2."),
             (lambda v: cut * cut, lambda v: f"Bed area: {cut} x {cut} = {v[1]} m^2."),
             (lambda v: v[0] - v[1], lambda v: f"Remaining area: {v[0]} - {v[1]} = {v[2]} m^2."),
             (lambda v: 2 * (w + h), lambda v: f"Perimeter: 2 x ({w} + {h}) = {v[3]} m."),
             (lambda v: 3 * v[3], lambda v: f"Fencing: {v[3]} x $3 = ${v[4]}.")]
    return q, steps, lambda v: f"{v[2]} m^2 remain and the fence costs ${v[4]}"


_PROBLEMS = [_shopping, _travel, _savings, _rectangle]


def math_pair(rng: random.Random) -> PreferencePair:
    q, steps, final = rng.choice(_PROBLEMS)(rng)

    def solve(bad_at: int) -> str:
        vals, lines = [], []
        for i, (f, say) in enumerate(steps):
            vals.append(f(vals))
            if i == bad_at:
                vals[-1] = _slip(rng, vals[-1])
            lines.append(say(vals))
        return " ".join(lines) + f"\nThe answer is {final(vals)}."

    good = solve(-1)
    for _ in range(20):  # a slip that a later rounding absorbs leaves the answer right: slip again
        bad = solve(rng.randrange(len(steps)))
        if bad.splitlines()[-1] != good.splitlines()[-1]:
            return PreferencePair(q, good, bad, "reasoning", "synth-math")
    return math_pair(rng)


# ---- code ----

_MODULES = ["bisect", "heapq", "statistics", "textwrap", "colorsys", "fractions", "difflib", "fnmatch",
            "posixpath", "ntpath", "shlex", "calendar", "base64", "quopri", "string", "glob", "ipaddress",
            "html", "urllib.parse", "json.encoder", "email.utils", "email._parseaddr", "random", "gettext",
            "tokenize", "locale", "datetime", "_pydecimal", "shutil", "copy", "functools", "inspect",
            "pprint", "dataclasses", "csv", "mimetypes", "platform", "sysconfig", "tarfile", "zipfile",
            "uuid", "operator", "stat", "codecs", "encodings.idna", "http.cookiejar", "imaplib", "smtplib",
            "ftplib", "pydoc", "dis", "ast", "typing", "argparse", "configparser", "warnings", "traceback",
            "linecache", "reprlib", "keyword", "token", "opcode", "genericpath", "nturl2path", "netrc"]

_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
        ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mod, ast.Mod: ast.FloorDiv,
        ast.LShift: ast.RShift, ast.RShift: ast.LShift}


def _sites(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _CMP:
            out.append((node, "cmp"))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            out.append((node, "bin"))
        elif isinstance(node, ast.BoolOp):
            out.append((node, "bool"))
        elif isinstance(node, ast.Constant) and type(node.value) is int and abs(node.value) < 100:
            out.append((node, "const"))
    return out


def _mutate(node: ast.AST, kind: str, rng: random.Random) -> None:
    if kind == "cmp":
        node.ops[0] = _CMP[type(node.ops[0])]()
    elif kind == "bin":
        node.op = _BIN[type(node.op)]()
    elif kind == "bool":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    else:
        node.value += rng.choice([-1, 1])


def stdlib_functions() -> list[tuple[str, ast.FunctionDef]]:
    """(module name, parsed function) for documented top-level functions of 4-40 lines."""
    out = []
    for name in _MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # some of these modules are deprecated
                mod = importlib.import_module(name)
            src = inspect.getsource(mod)
        except (ImportError, OSError, TypeError):
            continue                        # a module missing or compiled on this Python: skip it
        for node in ast.parse(src).body:
            if (isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
                    and ast.get_docstring(node) and 4 <= node.end_lineno - node.lineno <= 40):
                out.append((name, node))
    return out


def held_out(module: str, fn: ast.FunctionDef) -> bool:
    """The fixed fifth of the stdlib functions kept for validation (a stable hash, not Python's salted one)."""
    return prompt_hash(f"{module}.{fn.name}") < 0.2


def code_pair(rng: random.Random, funcs) -> PreferencePair | None:
    module, fn = rng.choice(funcs)
    doc = textwrap.shorten(ast.get_docstring(fn).split("\n\n")[0], 400)
    body = fn.body[1:] if len(fn.body) > 1 else fn.body   # the docstring moves into the prompt
    clean = copy.copy(fn)
    clean.body, clean.decorator_list = body, []
    good = ast.unparse(clean)
    bad_tree = ast.parse(good)
    # mutate the body only: a changed signature would contradict the prompt and give the answer away
    sites = [s for stmt in bad_tree.body[0].body for s in _sites(stmt)]
    if not sites:
        return None
    _mutate(*rng.choice(sites), rng)
    bad = ast.unparse(bad_tree)
    if bad == good:
        return None
    sig = good.split("\n", 1)[0].removeprefix("def ").rstrip(":")
    prompt = f"Write a Python function `{sig}` (as in the `{module}` module): {doc}"
    return PreferencePair(prompt, f"```python\n{good}\n```", f"```python\n{bad}\n```", "reasoning", "synth-code")


KINDS = ("math", "code")


PARTS = ("train", "val")


def generate(kind: str, n: int, seed: int = 0, part: str = "train") -> list[PreferencePair]:
    """n pairs of the given kind ("math" | "code"), the same for the same (kind, n, seed, part).
    part "val" shares no code function with part "train" and draws math from another stream."""
    if part not in PARTS:
        raise ValueError(f"synth part must be 'train' or 'val', got {part!r}")
    # the train stream keeps its old name, so recipes that used it make the same pairs as before
    rng = random.Random(f"synth-{kind}-{seed}" + ("" if part == "train" else f"-{part}"))
    if kind == "math":
        return [math_pair(rng) for _ in range(n)]
    if kind == "code":
        funcs = [(m, f) for m, f in stdlib_functions() if held_out(m, f) == (part == "val")]
        if not funcs:
            raise RuntimeError("synth code: no documented pure-Python stdlib functions found on this Python")
        out, tries = [], 0
        while len(out) < n and tries < 20 * n:
            tries += 1
            p = code_pair(rng, funcs)
            if p is not None:
                out.append(p)
        return out
    raise ValueError(f"unknown synthetic kind {kind!r} (known: {', '.join(map(repr, KINDS))})")
