"""Atomic training checkpoints: adapters (+ unfrozen weights), optimizer, scheduler, RNG, data position.

A checkpoint is a folder written under a temporary name and swapped in with renames, so a run that is
killed at any moment keeps its last good checkpoint (`last/`, or `last.old/` if it died mid-swap).
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def save_checkpoint(folder: Path, model, meta: dict, trainer_state: dict | None = None,
                    files: dict[str, str] | None = None) -> Path:
    """Write adapter.safetensors + adapter.json (+ trainer.pt, + `files`: name -> text, e.g. a length
    correction) into `folder`, atomically: the folder is swapped in whole, never half-written."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    from .adapters import save_adapter
    save_adapter(model, tmp / "adapter.safetensors", meta)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer.pt")
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    _swap_in(tmp, folder)
    return folder


def find_resumable(run_dir: Path) -> Path | None:
    for name in ("last", "last.old"):
        c = run_dir / name
        if (c / "trainer.pt").is_file() and (c / "adapter.json").is_file():
            return c
    return None
