"""`tinyrm data`: download the preference data from its public sources and write the shipped files.

For each entry of tinyrm.sources.SOURCES: fetch the pinned upstream file(s) (hub datasets through
huggingface_hub; GitHub files over HTTPS with a resumable `.part` file), check any pinned sha256, convert
each record, keep a seeded sample (or every record), and write the output under a temporary name that is
renamed only after its row count (and, for RewardBench, the per-subset counts) check out. MANIFEST.json in
the data root then records file, rows, sha256, source, revision, licence and the upstream files' hashes.
Parquet needs pyarrow: `pip install 'tinyrm[data]'`.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import json
import lzma
import os
import random
import sys
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import quote

from tqdm import tqdm

from .errors import TinyrmError
from .hub import endpoint, hub_file
from .sources import SEED, SOURCES, Remote, Source

GITHUB_RAW = "https://raw.githubusercontent.com"
MANIFEST = "MANIFEST.json"
ATTEMPTS = 5


class FetchError(TinyrmError):
    """A download or conversion that cannot complete; the message names the file or URL and what to do."""


def default_out() -> Path:
    """Where `tinyrm data` writes: TINYRM_DATA if set, else ./data (never the read-only offline copy)."""
    return Path(os.environ.get("TINYRM_DATA") or "data")


def _cache() -> Path:
    return Path(os.environ.get("TINYRM_CACHE") or Path.home() / ".cache" / "tinyrm")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _stem(file: str) -> str:
    name = Path(file).name
    for ext in (".gz", ".jsonl"):
        name = name.removesuffix(ext)
    return name


def url_of(s: Source, remote: Remote) -> str:
    if s.host == "github":
        base = (os.environ.get("TINYRM_GITHUB_RAW") or GITHUB_RAW).rstrip("/")
        return f"{base}/{s.repo}/{s.revision}/{quote(remote.path)}"
    return f"{endpoint()}/datasets/{s.repo}/resolve/{s.revision}/{quote(remote.path)}"


# ---- transfers ----

def _github_once(url: str, part: Path, progress: bool) -> None:
    """GET url into `part`, continuing after the bytes already there (Range) when the server allows it."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "tinyrm"} | ({"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
        if have and r.status != 206:
            have = 0                                   # the server ignored the range: start over
        length = r.headers.get("Content-Length")
        total = have + int(length) if length else None
        with open(part, "ab" if have else "wb") as f, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress,
                     leave=False) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


def github_file(s: Source, remote: Remote, progress: bool = True) -> Path:
    """A raw file of a GitHub repository at the pinned commit, cached under TINYRM_CACHE (~/.cache/tinyrm)."""
    url = url_of(s, remote)
    dest = _cache() / "github" / s.repo / s.revision / remote.path
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for attempt in range(ATTEMPTS):
        time.sleep(attempt)                            # 0, 1, 2 ... s between tries
        try:
            _github_once(url, part, progress)
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code == 416 and part.exists():        # `part` holds more than the file: start over
                part.unlink()
                last = e
                continue
            raise FetchError(f"{url}: HTTP {e.code}; check the address and your connection") from None
        except (OSError, HTTPException) as e:         # reset, timeout, short read: resume from `part`
            last = e
    raise FetchError(f"{url}: {last} ({ATTEMPTS} attempts); run `tinyrm data` again to resume from {part}")


def hub_dataset_file(s: Source, remote: Remote, progress: bool = True) -> Path:
    try:
        return hub_file(s.repo, remote.path, repo_type="dataset", revision=s.revision, progress=progress)
    except OSError as e:
        hint = ("log in (`hf auth login` or HF_TOKEN) and accept the dataset's terms on the hub"
                if " HTTP 401" in str(e) or " HTTP 403" in str(e) else
                "check your connection (HF_ENDPOINT sets the hub) and run `tinyrm data` again")
        raise FetchError(f"{e}; {hint}") from None


def fetch_remote(s: Source, remote: Remote, progress: bool = True) -> tuple[Path, str]:
    """The upstream file on disk and its sha256, checked against the pin when the table has one."""
    path = (github_file if s.host == "github" else hub_dataset_file)(s, remote, progress)
    digest = _sha256(path)
    if remote.sha256 and digest != remote.sha256:
        raise FetchError(f"{url_of(s, remote)}: sha256 {digest} is not the pinned {remote.sha256} (for {s.file}); "
                         f"the download is corrupt or upstream changed: delete {path} and run `tinyrm data` again")
    return path, digest


# ---- reading and converting ----

def _records(path: Path, name: str, where: str) -> Iterator[dict]:
    """The records of one upstream file: parquet, JSON Lines (.gz/.xz), a JSON list, or CSV."""
    opener = gzip.open if name.endswith(".gz") else lzma.open if name.endswith(".xz") else open
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                yield from batch.to_pylist()
            return
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            if name.endswith(".csv"):
                csv.field_size_limit(sys.maxsize)
                yield from csv.DictReader(f)
            elif name.endswith(".json"):
                yield from json.load(f)
            else:
                for line in f:
                    if line.strip():
                        yield json.loads(line)
    except (ValueError, EOFError, OSError, csv.Error) as e:  # bad JSON/UTF-8/parquet, cut gzip, bad CSV
        raise FetchError(f"{where}: cannot read {path} ({type(e).__name__}: {e}); delete it and run "
                         "`tinyrm data` again") from None


def _converted(s: Source, local: Sequence[tuple[Remote, Path]]) -> Iterator[dict | None]:
    for remote, path in local:
        for rec in _records(path, remote.path, url_of(s, remote)):
            try:
                yield s.convert(rec, remote.path)
            except (KeyError, TypeError, AttributeError) as e:
                raise FetchError(f"{url_of(s, remote)}: record without the expected fields ({e!r}); "
                                 f"the upstream layout changed, {s.file} cannot be built") from None


def select_rows(s: Source, local: Sequence[tuple[Remote, Path]]) -> Iterator[dict]:
    """Every usable row, or `s.rows` of them drawn with the fixed seed and kept in upstream order."""
    if not s.sample:
        yield from (r for r in _converted(s, local) if r is not None)
        return
    usable = [i for i, r in enumerate(_converted(s, local)) if r is not None]   # pass 1: positions only
    if len(usable) < s.rows:
        raise FetchError(f"{s.file}: {s.repo}@{s.revision} has {len(usable)} usable rows, {s.rows} needed")
    keep = set(random.Random(SEED).sample(usable, s.rows))
    yield from (r for i, r in enumerate(_converted(s, local)) if i in keep)


# ---- writing ----

def _check_rows(s: Source, n: int) -> None:
    if n != s.rows:
        raise FetchError(f"{s.file}: {n} rows from {s.repo}@{s.revision}, expected {s.rows}; "
                         "the download is corrupt or upstream changed (delete the cached copy and run again)")


def _write(s: Source, rows: Iterator[dict], dest: Path) -> None:
    """JSON Lines (gzip without a timestamp, so reruns give identical bytes) to a temporary name, checked,
    then renamed over `dest`."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    if s.check:
        rows = list(rows)
        try:
            s.check(rows)
        except ValueError as e:
            raise FetchError(f"{s.file}: {e}") from None
    n = 0
    try:
        with open(tmp, "wb") as raw:
            f = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if dest.suffix == ".gz" else raw
            for row in rows:
                f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
                n += 1
            if f is not raw:
                f.close()
        _check_rows(s, n)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def build(s: Source, out: Path, progress: bool = True) -> dict:
    """Fetch, convert, check and write one file; returns its manifest entry."""
    local, upstream = [], []
    for remote in s.remotes:
        path, digest = fetch_remote(s, remote, progress)
        local.append((remote, path))
        upstream.append({"path": remote.path, "sha256": digest})
    dest = out / s.file
    dest.parent.mkdir(parents=True, exist_ok=True)
    if s.copy:                                         # the upstream file itself, once its rows are counted
        _check_rows(s, sum(1 for r in _converted(s, local) if r is not None))
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_bytes(local[0][1].read_bytes())
        os.replace(tmp, dest)
    else:
        _write(s, select_rows(s, local), dest)
    where = f"https://github.com/{s.repo}" if s.host == "github" else f"hf://datasets/{s.repo}"
    return {"file": s.file, "rows": s.rows, "sha256": _sha256(dest), "source": where, "revision": s.revision,
            "licence": s.licence, "upstream": upstream}


def write_manifest(out: Path, entries: list[dict]) -> Path:
    """Merge `entries` into out/MANIFEST.json by file name (a partial fetch keeps the others); atomic."""
    path = out / MANIFEST
    old = json.loads(path.read_text())["files"] if path.is_file() else []
    merged = {e["file"]: e for e in old} | {e["file"]: e for e in entries}
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps({"files": [merged[k] for k in sorted(merged)]}, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


# ---- the command ----

def select(only: str | None, sources: Sequence[Source] | None = None) -> list[Source]:
    """`--only a,b`: each a group (rewardbench, train), a file path under the root, its name, or its stem."""
    sources = SOURCES if sources is None else sources
    if not only:
        return list(sources)
    picked: set[str] = set()
    for want in (w.strip() for w in only.split(",") if w.strip()):
        hits = [s.file for s in sources if want in (s.group, s.file, Path(s.file).name, _stem(s.file))]
        if not hits:
            names = sorted({s.group for s in sources} | {_stem(s.file) for s in sources})
            raise FetchError(f"--only {want}: no such data file or group; choose from {', '.join(names)}")
        picked.update(hits)
    return [s for s in sources if s.file in picked]


def fetch(out: str | os.PathLike | None = None, only: str | None = None, sources: Sequence[Source] | None = None,
          progress: bool = True) -> list[dict]:
    """Build the selected files under `out` (default: default_out()) and update its MANIFEST.json."""
    out = Path(out) if out is not None else default_out()
    chosen = select(only, sources)
    needs = next((s for s in chosen if s.parquet), None)
    if needs is not None and importlib.util.find_spec("pyarrow") is None:
        raise FetchError(f"{needs.file}: its source {needs.repo} is parquet, which needs pyarrow: "
                         "pip install 'tinyrm[data]'")
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in tqdm(chosen, desc="data", unit="file", disable=not progress):
        entries.append(build(s, out, progress))
    write_manifest(out, entries)
    return entries


def cli(args) -> int:
    out = Path(args.out) if args.out else default_out()
    for e in fetch(out, args.only):
        print(f"{e['file']}: {e['rows']} rows  sha256 {e['sha256'][:12]}  ({e['source']}@{e['revision'][:12]})")
    print(f"data ready in {out} (manifest: {out / MANIFEST})")
    return 0
