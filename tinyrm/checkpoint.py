"""Atomic training checkpoints: adapters (+ unfrozen weights), optimizer, scheduler, RNG, data position.

A checkpoint is a folder written under a temporary name and swapped in with renames (atomic.py), so a
run that is killed at any moment keeps its last good checkpoint (`last/`, or `last.old/` if it died
mid-swap). trainer.pt holds tensors and plain Python values only and is read with `weights_only=True`:
nothing in a checkpoint is ever unpickled as code.
"""
from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .adapters import save_adapter
from .atomic import atomic_write, replace_dir, write_bytes
from .errors import CheckpointError, first_line


def rng_state() -> dict:
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    kind, key, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(folder: Path, model, meta: dict, trainer_state: dict | None = None,
                    files: dict[str, str] | None = None) -> Path:
    """Write adapter.safetensors + adapter.json (+ trainer.pt, + `files`: name -> text, e.g. a length
    correction) into `folder`, atomically: the folder is swapped in whole, never half-written. A failed
    write (a full disk: OSError naming the file) removes the temporary folder and leaves `folder` as it was."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_adapter(model, tmp / "adapter.safetensors", meta)
        if trainer_state is not None:
            # serialised in memory, written by Python: torch.save's own writer turns ENOSPC into an
            # unexplained RuntimeError ("unexpected pos ...")
            buf = io.BytesIO()
            torch.save(trainer_state, buf)
            write_bytes(tmp / "trainer.pt", buf.getvalue())
        for name, text in (files or {}).items():
            write_bytes(tmp / name, text.encode("utf-8"))
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def find_resumable(run_dir: Path) -> Path | None:
    """The run's last complete checkpoint (`last/`, or `last.old/` left by a kill mid-swap), or None when
    the run saved none yet. A checkpoint folder with a file missing is a CheckpointError, not a fresh start."""
    for c in (run_dir / "last", run_dir / "last.old"):
        if c.is_dir():
            missing = [n for n in ("adapter.safetensors", "adapter.json", "trainer.pt") if not (c / n).is_file()]
            if missing:
                raise CheckpointError(f"{c / missing[0]}: not found (the checkpoint {c} is incomplete; it was "
                                      "not written by tinyrm, or files were removed)")
            return c
    return None


def trim_metrics(run_dir: Path, step: int) -> int:
    """Drop the rows of metrics.jsonl that a killed attempt wrote after the checkpoint a run resumes from
    (step > `step`; every row when it restarts from step 0, whose validation row is written again), and
    any torn last line. Returns the number of rows dropped."""
    f = run_dir / "metrics.jsonl"
    if not f.is_file():
        return 0
    kept, dropped = [], 0
    for line in f.read_bytes().splitlines():
        try:
            row = json.loads(line)
            keep = step > 0 and isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step
        except ValueError:                         # a line torn by the kill
            keep = False
        if keep:
            kept.append(line.decode("utf-8") + "\n")
        else:
            dropped += bool(line.strip())
    if dropped:
        atomic_write(f, "".join(kept))
    return dropped


_STATE_KEYS = {"step": int, "optimizer": dict, "scheduler": dict, "rng": dict, "best": dict}


def load_trainer_state(ckpt: Path) -> dict:
    """trainer.pt of a checkpoint (tensors and plain values only), or a CheckpointError naming it and,
    for a readable file of the wrong shape, the key."""
    f = ckpt / "trainer.pt"
    try:
        st = torch.load(f, weights_only=True)
    except Exception as e:   # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"{f}: not a readable trainer state ({first_line(e)})") from None
    if not isinstance(st, dict):
        raise CheckpointError(f"{f}: not a trainer state (a {type(st).__name__}, not a dict)")
    for key, typ in _STATE_KEYS.items():
        if not isinstance(st.get(key), typ) or isinstance(st.get(key), bool):
            raise CheckpointError(f"{f}: key {key!r} is missing or not a {typ.__name__}")
    if st["step"] < 0 or not {"state", "param_groups"} <= set(st["optimizer"]) \
            or not isinstance(st["rng"].get("torch"), torch.Tensor) or not {"python", "numpy"} <= set(st["rng"]):
        raise CheckpointError(f"{f}: key 'step', 'optimizer' or 'rng' does not hold a trainer state")
    return st
