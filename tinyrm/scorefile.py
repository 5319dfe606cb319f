"""`tinyrm score` and `tinyrm rerank`: add a model's numbers to every row of a JSONL file.

Input and output are `.jsonl`, or gzip-compressed when the name ends in `.gz`. Row shapes (per row):
  {prompt, response}                       -> + reward                        (pointwise models only)
  {prompt, chosen, rejected}               -> + p_a: P(first better); pointwise models also reward_a, reward_b
  {prompt, response_a, response_b}         -> the same (a = chosen / response_a)
  {prompt, responses: [...]}  (rerank)     -> + best (index), scores (rank.py: rewards, or mean log-odds)
A row with `response` is a single; otherwise chosen/rejected, otherwise response_a/response_b. An
optional `domain` (str) goes to the model (prompt prefix, length-correction slope). Every input field
is kept and rows stay in input order; blank lines are dropped.

Memory stays flat in the file's length: rows are read, scored and written `chunk_rows` at a time (one
model call per chunk, so its token batches still span many rows). The output is written to
`<out>.partial` and renamed at the end, so an error never leaves a half-written file under the real name
(and `--out` may equal `--in`). A bad row, a line that is not UTF-8, or a truncated gzip stream stops the
run with DataError `FILE:LINE: reason`.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import torch

from .data import decode_json, json_lines
from .errors import DataError
from .rank import rank_many

CHUNK_ROWS = 2048
PAIR_KEYS = (("chosen", "rejected"), ("response_a", "response_b"))


def _gz(path: Path) -> bool:
    return path.suffix == ".gz"


def iter_rows(path):
    """(line number, JSON object) for every non-blank line, through data.py's one line reader: DataError
    for bad JSON, invalid UTF-8 or an over-long line (naming the line), a broken gzip stream, or a row
    that is not an object."""
    for lineno, line in json_lines(path):
        obj = decode_json(path, lineno, line)
        if not isinstance(obj, dict):
            raise DataError(path, lineno, "wrong type", "row is not a JSON object")
        yield lineno, obj


def _chunks(rows, n: int):
    chunk = []
    for r in rows:
        chunk.append(r)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _need_str(obj: dict, keys, where) -> list[str]:
    for k in keys:
        if k not in obj:
            raise DataError(*where, "missing field", k)
        if not isinstance(obj[k], str):
            raise DataError(*where, "wrong type", f"{k} is {type(obj[k]).__name__}, not str")
    return [obj[k] for k in keys]


def _domain(obj: dict, where) -> str | None:
    d = obj.get("domain")
    if d is not None and not isinstance(d, str):
        raise DataError(*where, "wrong type", f"domain is {type(d).__name__}, not str")
    return d


def _parse_score_row(obj: dict, where, pointwise: bool):
    """-> (prompt, a, b or None, domain): b is None for a single response."""
    if "response" in obj:
        if not pointwise:
            raise DataError(*where, "needs a pointwise model",
                            "a single `response` has no reward under a pairwise model; give response_a/response_b")
        return (*_need_str(obj, ("prompt", "response"), where), None, _domain(obj, where))
    keys = next((k for k in PAIR_KEYS if k[0] in obj or k[1] in obj), None)
    if keys is None:
        raise DataError(*where, "missing field", "response, chosen/rejected or response_a/response_b")
    return (*_need_str(obj, ("prompt", *keys), where), _domain(obj, where))


def _or_none(domains: list):
    return domains if any(d is not None for d in domains) else None


def score_rows(rm, rows: list[dict], path) -> list[dict]:
    """One chunk of (line, row) -> the rows with reward / p_a (and reward_a, reward_b) added."""
    parsed = [_parse_score_row(obj, (path, ln), rm.mode == "pointwise") for ln, obj in rows]
    singles = [i for i, p in enumerate(parsed) if p[2] is None]
    pairs = [i for i, p in enumerate(parsed) if p[2] is not None]
    out = [dict(obj) for _, obj in rows]
    if rm.mode == "pointwise":    # every text in one call: singles, then all a's, then all b's
        order = singles + pairs + pairs
        texts = [parsed[i][1] for i in singles] + [parsed[i][1] for i in pairs] + [parsed[i][2] for i in pairs]
        r = rm.score([parsed[i][0] for i in order], texts, _or_none([parsed[i][3] for i in order]))
        for k, i in enumerate(singles):
            out[i]["reward"] = r[k]
        ra, rb = r[len(singles):len(singles) + len(pairs)], r[len(singles) + len(pairs):]
        # P(a) exactly as RewardModel.compare forms it: float32 reward difference, then the sigmoid
        p = torch.sigmoid(torch.tensor(ra) - torch.tensor(rb)).tolist() if pairs else []
        for k, i in enumerate(pairs):
            out[i].update(p_a=p[k], reward_a=ra[k], reward_b=rb[k])
    elif pairs:
        z = rm.compare_logits([parsed[i][0] for i in pairs], [parsed[i][1] for i in pairs],
                              [parsed[i][2] for i in pairs], _or_none([parsed[i][3] for i in pairs]))
        for i, p in zip(pairs, torch.sigmoid(z).tolist()):
            out[i]["p_a"] = p
    return out


def rerank_rows(rm, rows: list[dict], path) -> list[dict]:
    """One chunk of (line, row) with `responses` -> the rows with best and scores added."""
    prompts, lists, domains = [], [], []
    for ln, obj in rows:
        where = (path, ln)
        prompts.append(_need_str(obj, ("prompt",), where)[0])
        rs = obj.get("responses")
        if rs is None:
            raise DataError(*where, "missing field", "responses")
        if not isinstance(rs, list) or not rs or not all(isinstance(x, str) for x in rs):
            raise DataError(*where, "wrong type", "responses must be a non-empty list of strings")
        lists.append(rs)
        domains.append(_domain(obj, where))
    ranked = rank_many(rm, prompts, lists, domains)
    return [{**obj, "best": order[0], "scores": scores} for (_, obj), (order, scores) in zip(rows, ranked)]


def process_file(rm, src, dst, fn, chunk_rows: int = CHUNK_ROWS, progress: bool = True) -> int:
    """Stream src -> dst through fn(rm, chunk, src) chunk by chunk (see the module docstring); the row count."""
    from tqdm import tqdm

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(dst.name + ".partial")
    n = 0
    try:
        with (gzip.open(tmp, "wt", encoding="utf-8") if _gz(dst) else open(tmp, "w", encoding="utf-8")) as out, \
                tqdm(desc=src.name, unit="row", disable=not progress) as bar:
            for chunk in _chunks(iter_rows(src), chunk_rows):
                for row in fn(rm, chunk, src):
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += len(chunk)
                bar.update(len(chunk))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def score_file(rm, src, dst, chunk_rows: int = CHUNK_ROWS, progress: bool = True) -> int:
    return process_file(rm, src, dst, score_rows, chunk_rows, progress)


def rerank_file(rm, src, dst, chunk_rows: int = CHUNK_ROWS, progress: bool = True) -> int:
    return process_file(rm, src, dst, rerank_rows, chunk_rows, progress)
