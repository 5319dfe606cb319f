"""Atomic training checkpoints: adapters (+ unfrozen weights), optimizer, scheduler, RNG, data position.

A checkpoint is a folder written under a temporary name and swapped in with renames (atomic.py), so a
run that is killed at any moment keeps its last good checkpoint (`last/`, or `last.old/` if it died
mid-swap). trainer.pt holds tensors and plain Python values only and is read with `weights_only=True`:
nothing in a checkpoint is ever unpickled as code.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .adapters import save_adapter
from .atomic import replace_dir
from .errors import CheckpointError


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
    correction) into `folder`, atomically: the folder is swapped in whole, never half-written."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_adapter(model, tmp / "adapter.safetensors", meta)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer.pt")
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    replace_dir(tmp, folder)
    return folder


def find_resumable(run_dir: Path) -> Path | None:
    """The run's last complete checkpoint (`last/`, or `last.old/` left by a kill mid-swap), or None."""
    for c in (run_dir / "last", run_dir / "last.old"):
        if (c / "trainer.pt").is_file() and (c / "adapter.json").is_file():
            return c
    return None


def load_trainer_state(ckpt: Path) -> dict:
    """trainer.pt of a checkpoint (tensors and plain values only), or a CheckpointError naming it."""
    f = ckpt / "trainer.pt"
    try:
        return torch.load(f, weights_only=True)
    except Exception as e:   # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"{f}: not a readable trainer state ({str(e).splitlines()[0][:200]})") from None
