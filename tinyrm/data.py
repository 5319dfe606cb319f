"""Preference pairs: read the formats found in the wild, mix files by weight, split off validation.

One row is one (prompt, chosen, rejected) triple. Four row shapes are auto-detected, per row:
  generic      {"prompt": str, "chosen": str, "rejected": str, "domain"?: str, "source"?: str}
  RewardBench  generic + "chosen_model", "rejected_model", "subset", "id"
  HH-RLHF      {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."} -- whole transcripts
  TRL conv.    {"chosen": [{"role", "content"}, ...], "rejected": [...], "prompt"?: [...] | str}

Prompt rendering (one rule for every format, and the one the shipped RMB files already use):
  - a single user turn is just its text, no role tag;
  - anything else is `Role: text` blocks joined by a blank line, roles "User", "Assistant", "System"
    (HH's "Human" becomes "User"):  "User: hi\\n\\nAssistant: hello\\n\\nUser: how are you?"
  Generic prompts are kept verbatim (they are already rendered). Responses taken out of HH transcripts
  or TRL messages are stripped of surrounding whitespace; generic text is kept as is.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import DataError
from .prompts import render_turns


class RowError(ValueError):
    """Why one decoded row is unusable: `reason` is the short category counted in a SkipReport."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(reason + (f" ({detail})" if detail else ""))


@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    domain: str | None
    source: str
    subset: str | None = None
    id: str | None = None


@dataclass
class SkipReport:
    path: str
    total: int = 0                                   # non-blank lines seen
    reasons: Counter = field(default_factory=Counter)

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def __str__(self) -> str:
        s = f"skipped {self.skipped} of {self.total} rows in {Path(self.path).name}"
        if self.reasons:
            s += ": " + ", ".join(f"{n} {r}" for r, n in self.reasons.most_common())
        return s


# ---- rendering ----

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ASSISTANT = "\n\nAssistant:"


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Two HH transcripts -> (rendered prompt, chosen response, rejected response).

    The prompt ends at the last "\\n\\nAssistant:" inside the common prefix of both transcripts, not at
    each one's own last marker: a few real responses contain a hallucinated "\\n\\nAssistant:" of their
    own, and cutting there would make the two prompts differ.
    """
    if chosen.startswith("Human:") and rejected.startswith("Human:"):  # some copies drop the leading blank line
        chosen, rejected = "\n\n" + chosen, "\n\n" + rejected
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    cut = chosen.rfind(_HH_ASSISTANT, 0, n)
    if cut < 0 or not chosen.startswith("\n\nHuman:"):
        raise ValueError("the transcripts share no \"\\n\\nHuman: ...\\n\\nAssistant:\" prefix")
    cut += len(_HH_ASSISTANT)
    parts = _HH_TURN.split(chosen[:cut])  # ["", role, text, role, text, ..., "Assistant", ""]
    turns = list(zip(parts[1::2], parts[2::2]))[:-1]  # the last is the empty slot being answered
    return render_turns(turns), chosen[cut:].strip(), rejected[cut:].strip()


def _messages(x, what: str) -> list[tuple[str, str]]:
    if not isinstance(x, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                          and isinstance(m.get("content"), str) for m in x):
        raise RowError("wrong type", f"{what} must be a list of {{role: str, content: str}}")
    return [(m["role"], m["content"]) for m in x]


def split_trl(row: dict) -> tuple[str, str, str]:
    """TRL conversational row -> (prompt, chosen, rejected): the last assistant message is the response,
    everything before it (the explicit `prompt` messages, then any earlier ones in chosen) the prompt."""
    head = row.get("prompt", [])
    head = [("user", head)] if isinstance(head, str) else _messages(head, "prompt")
    sides = []
    for key in ("chosen", "rejected"):
        msgs = _messages(row[key], key)
        last = max((i for i, (r, _) in enumerate(msgs) if r == "assistant"), default=None)
        if last is None:
            raise RowError("no assistant message", key)
        sides.append((msgs[:last], msgs[last][1].strip()))
    (ctx_c, resp_c), (ctx_r, resp_r) = sides
    if ctx_c != ctx_r:
        raise RowError("no shared prefix", "chosen and rejected differ before their last assistant message")
    if not head + ctx_c:
        raise RowError("missing field", "prompt")
    return render_turns(head + ctx_c), resp_c, resp_r


# ---- one row ----

def _need_str(obj: dict, *keys: str) -> None:
    for k in keys:
        if k not in obj:
            raise RowError("missing field", k)
        if not isinstance(obj[k], str):
            raise RowError("wrong type", f"{k} is {type(obj[k]).__name__}, not str")


def parse_row(obj, source: str | None = None, domain: str | None = None) -> PreferencePair:
    """One decoded JSON row -> PreferencePair (source/domain arguments override the row's fields).
    Raises RowError naming the reason."""
    if not isinstance(obj, dict):
        raise RowError("wrong type", "row is not a JSON object")
    for k in ("chosen", "rejected"):
        if k not in obj:
            raise RowError("missing field", k)
    for k in ("domain", "source"):
        if obj.get(k) is not None and not isinstance(obj[k], str):
            raise RowError("wrong type", f"{k} is {type(obj[k]).__name__}, not str")
    subset = rid = None
    if isinstance(obj["chosen"], list) or isinstance(obj["rejected"], list):
        prompt, chosen, rejected = split_trl(obj)
    elif "prompt" not in obj and isinstance(obj["chosen"], str) and _HH_ASSISTANT in obj["chosen"]:
        _need_str(obj, "chosen", "rejected")
        try:
            prompt, chosen, rejected = split_hh(obj["chosen"], obj["rejected"])
        except ValueError as e:
            raise RowError("no shared prefix", str(e)) from None
    else:
        _need_str(obj, "prompt", "chosen", "rejected")
        prompt, chosen, rejected = obj["prompt"], obj["chosen"], obj["rejected"]
        if "subset" in obj:  # RewardBench: `id` is unique only together with `subset`
            subset = str(obj["subset"])
            rid = None if obj.get("id") is None else str(obj["id"])
    if not chosen.strip() or not rejected.strip():
        raise RowError("empty response", "chosen" if not chosen.strip() else "rejected")
    if chosen.strip() == rejected.strip():
        raise RowError("identical responses")
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected,
                          domain=domain if domain is not None else obj.get("domain"),
                          source=source if source is not None else obj.get("source"),
                          subset=subset, id=rid)


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(ext)
    return name


MAX_LINE = 32 << 20     # bytes; a longer line is no preference row (a JSON array file, a binary file)


def _capped_lines(f) -> Iterator[bytes]:
    """The file's lines, each cut to MAX_LINE + 1 bytes (decode_json reports the cut ones): memory stays
    bounded even for a file that is one huge line."""
    while line := f.readline(MAX_LINE + 1):
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass                          # skip the rest of the long line
        yield line


def json_lines(path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for every non-blank line of a .jsonl or .jsonl.gz file, read as bytes so
    that one bad line is reported by number (decode_json); a gzip stream cut short or corrupt is a
    DataError at the line where it broke. Memory stays bounded: one line (at most MAX_LINE) at a time."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(_capped_lines(f), 1):
                if line.strip():
                    yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(path, lineno + 1, "truncated or corrupt gzip stream", str(e)) from None


def decode_json(path, lineno: int, line: bytes):
    """One line's JSON value, or DataError("file:line: not UTF-8" / "bad JSON" / "line too long")."""
    if len(line.rstrip(b"\r\n")) > MAX_LINE:
        raise DataError(path, lineno, "line too long", f"over {MAX_LINE >> 20} MiB")
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(path, lineno, "not UTF-8", f"byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise DataError(path, lineno, "bad JSON", str(e)) from None
    except RecursionError:
        raise DataError(path, lineno, "bad JSON", "nested too deeply") from None


def read_pairs(path, skip_bad: bool = False, domain: str | None = None,
               source: str | None = None) -> tuple[list[PreferencePair], SkipReport]:
    """Read a .jsonl or .jsonl.gz file of preference rows (any mix of the four shapes).

    domain: argument > row field > None.  source: argument > row field > file stem.
    A bad row raises DataError("file:line: reason"), or with skip_bad is counted in the SkipReport.
    Blank lines are ignored and not counted.
    """
    path = Path(path)
    report, pairs, stem = SkipReport(str(path)), [], _stem(path)
    for lineno, line in json_lines(path):
        report.total += 1
        try:
            obj = decode_json(path, lineno, line)
            try:
                p = parse_row(obj, source, domain)
            except RowError as e:
                raise DataError(path, lineno, e.reason, e.detail) from None
        except DataError as e:
            if not skip_bad:
                raise
            report.reasons[e.reason] += 1
            continue
        if p.source is None:
            p.source = stem
        pairs.append(p)
    return pairs, report


def prompt_hash(prompt: str, seed: int = 0) -> float:
    """A stable number in [0, 1) for a prompt (blake2b of the stripped text and the seed)."""
    h = hashlib.blake2b(f"{seed}\x00{prompt.strip()}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64
