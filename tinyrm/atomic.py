"""Writes that a reader (or a run killed at any moment) sees whole or not at all.

A file is written under a temporary name beside its target, flushed to disk, and renamed over the target
(`os.replace` is atomic within a file system). A folder (a checkpoint) is built under a temporary name
and swapped in with two renames; a kill between them leaves the old one as `<name>.old`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):      # not every file system lets a directory be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _named(e: OSError, path: Path, tmp: Path | None = None) -> OSError:
    """The error naming `path`: a failed write() (a full disk) names no file by itself, and the CLI prints
    `error: PATH: reason` only when it has one; a failure on the temporary file is reported as its target's."""
    if (e.filename is None or (tmp is not None and e.filename == str(tmp))) and e.errno is not None:
        return OSError(e.errno, e.strerror or str(e), str(path))
    return e


def write_bytes(path: Path, data: bytes) -> None:
    """Write and flush `data` to `path` (not atomic: for files inside a folder that is swapped in whole).
    A failure (ENOSPC, EIO) is an OSError naming `path`."""
    try:
        with open(path, "wb") as f:     # a full disk may fail the write or only the flush at close
            f.write(data)
    except OSError as e:
        raise _named(e, path) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write `path` through; on success it is synced and renamed over `path`,
    on any error it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _named(e, path, tmp) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        write_bytes(tmp, data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def _drop(folder: Path) -> None:
    """Remove a folder so that a kill never leaves part of it under its own name: renamed to
    `<name>.del` first (a stale one from an earlier kill goes too), then deleted."""
    trash = folder.with_name(folder.name + ".del")
    if trash.exists():
        shutil.rmtree(trash)
    if folder.exists():
        os.replace(folder, trash)
        shutil.rmtree(trash)


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap the finished folder `tmp` in as `final`: final -> final.old, tmp -> final, drop final.old.
    A kill between the two renames leaves final.old for the reader to fall back on."""
    for f in tmp.rglob("*"):              # an export's relevance-encoder/ holds files too
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
    old = final.with_name(final.name + ".old")
    if final.exists():
        _drop(old)
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        if old.exists() and not final.exists():
            os.replace(old, final)             # a failed swap puts the previous folder back
        raise
    _fsync_dir(final.parent)
    _drop(old)

