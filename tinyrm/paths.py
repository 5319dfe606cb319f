"""Where tinyrm reads and writes.

* Data: one root. `TINYRM_DATA` if set, else `./data` (the working directory's, where `tinyrm data` puts
  the downloads), else `../shared/data` beside a source checkout (an offline copy, when one is there).
  Recipes name files under it as `$DATA/train/...`.
* Runs and weights: relative paths (`runs/`, `weights/minilm-l6`) resolve against the working directory,
  never against the installed package.
* Recipes ship inside the package (`tinyrm/configs`, from the repository's `configs/`).
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent if (PACKAGE.parent / "pyproject.toml").is_file() else None   # None when installed
REWARDBENCH = "rewardbench/filtered.jsonl"   # under the data root


def data_root() -> Path:
    """The data root (see the module docstring); `./data` when none of the candidates exists yet."""
    if os.environ.get("TINYRM_DATA"):
        return Path(os.environ["TINYRM_DATA"])
    local = Path.cwd() / "data"
    offline = CHECKOUT.parent / "shared" / "data" if CHECKOUT else None
    if not local.is_dir() and offline is not None and offline.is_dir():
        return offline
    return local


def expand_data(path: str) -> Path:
    """A recipe path: `$DATA/...` under the data root; other relative paths against the working directory."""
    if path.startswith("$DATA"):
        return data_root() / path[len("$DATA"):].lstrip("/")
    return Path(path)


def configs_dir() -> Path:
    """The shipped recipes: the package's copy when installed, the checkout's `configs/` otherwise."""
    installed = PACKAGE / "configs"
    return installed if installed.is_dir() else PACKAGE.parent / "configs"
