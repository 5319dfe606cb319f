"""Saving adapters apart from the base: a small safetensors file + JSON sidecar.

    save_adapter(enc, "runs/x/adapter.safetensors", {"base_hash": checkpoint_hash(folder), "frozen_layers": 6})
    enc2 = tinyrm.load_encoder(folder); load_adapter(enc2, "runs/x/adapter.safetensors")

The adapter file holds every adapter tensor (lora_A, lora_B, magnitude — also in frozen layers, so the
model is rebuilt exactly) plus any trainable non-adapter parameter (norms when train_base, or the upper
layers of a "DoRA: no" run), under the model's own state-dict names. The sidecar `<name>.json` records
the adapter settings, the adapted module names, the frozen layer count, the base checkpoint's hash and
the adapter file's own sha256, so a mismatched or corrupted pair is caught before any value is used.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .atomic import atomic_write
from .config import read_json
from .dora import ADAPTER_PARAMS, _encoder, adapted_modules, add_dora
from .errors import CheckpointError

FORMAT = "tinyrm-adapter"
VERSION = 1


def _sha256(path: Path, h=None) -> "hashlib._Hash":
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h


def checkpoint_hash(folder: str | os.PathLike) -> str:
    """sha256 over the folder's *.safetensors files (names and bytes, sorted): identifies a base model."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors files to hash")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        _sha256(f, h)
    return "sha256:" + h.hexdigest()


def _settings(model: nn.Module) -> dict:
    """rank / alpha / use_dora / dropout shared by all adapters (one adapter per model), or {}."""
    mods = adapted_modules(model)
    if not mods:
        return {}
    per = {(m.rank, m.alpha, m.use_dora, m.lora_dropout.p if m.lora_dropout else 0.0) for m in mods.values()}
    if len(per) != 1:
        raise ValueError(f"adapters with different settings cannot be saved as one: {sorted(per)}")
    rank, alpha, use_dora, dropout = per.pop()
    return dict(rank=rank, alpha=alpha, use_dora=use_dora, dropout=dropout,
                targets=sorted({n.rsplit(".", 1)[-1] for n in mods}), modules=sorted(mods))


def _adapter_keys(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.{p}": getattr(m, p) for n, m in adapted_modules(model).items()
            for p in ADAPTER_PARAMS if getattr(m, p) is not None}


def _trainable_base(model: nn.Module) -> dict[str, torch.Tensor]:
    adapter_ids = {id(t) for t in _adapter_keys(model).values()}
    return {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in adapter_ids}


def _frozen_layers(model: nn.Module) -> int | None:
    """Leading layers with nothing trainable (what freeze_layers(k) leaves), or None without an encoder."""
    try:
        enc = _encoder(model)
    except TypeError:
        return None
    k = 0
    for layer in enc.layers:
        if any(p.requires_grad for p in layer.parameters()):
            break
        k += 1
    return k


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    # serialised in memory and written by Python: safetensors' save_file reports no error when the
    # disk is full (seen with 0.8 on /dev/full), which would leave a short file behind a valid sidecar
    data = safetensors_bytes({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
                             metadata=metadata)
    atomic_write(path, data)


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: an adapter file must end in .safetensors")
    return path.with_suffix(".json")


def save_adapter(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Adapters (+ trainable non-adapter weights) -> `path` (.safetensors) and `path` with .json.
    meta: free-form, e.g. {"base_hash": checkpoint_hash(folder), "frozen_layers": k}; kept in the sidecar."""
    path = Path(path)
    side = sidecar_path(path)
    tensors = {**_adapter_keys(model), **_trainable_base(model)}
    if not tensors:
        raise ValueError(f"{path}: the model has no adapters and nothing trainable to save")
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(tensors, path)
    info = dict(meta or {})
    info.setdefault("frozen_layers", _frozen_layers(model))
    info.update(format=FORMAT, version=VERSION, **_settings(model),
                trainable_base=sorted(_trainable_base(model)), sha256=_sha256(path).hexdigest(),
                tensors={k: list(v.shape) for k, v in sorted(tensors.items())})
    atomic_write(side, json.dumps(info, indent=1, sort_keys=True) + "\n")
    return path


def _strs(x) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


# what load_adapter reads from a sidecar, checked before use so a hand-edited file fails naming its key
_SIDECAR_TYPES = {
    "rank": lambda x: isinstance(x, int) and not isinstance(x, bool) and x > 0,
    "alpha": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    "use_dora": lambda x: isinstance(x, bool),
    "dropout": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1,
    "targets": _strs, "modules": _strs, "trainable_base": _strs,
    "sha256": lambda x: isinstance(x, str),
    "base_hash": lambda x: x is None or isinstance(x, str),
}


def read_sidecar(path: str | os.PathLike) -> dict:
    side = sidecar_path(path)
    info = read_json(side, f"adapter sidecar not found (written next to {Path(path).name})")
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise CheckpointError(f"{side}: not a {FORMAT} v{VERSION} sidecar "
                              f"(format={info.get('format')!r}, version={info.get('version')!r})")
    for key, ok in _SIDECAR_TYPES.items():
        if key in info and not ok(info[key]):
            raise CheckpointError(f"{side}: key {key!r} has the wrong type or value ({str(info[key])[:80]!r})")
    return info


def load_adapter(model: nn.Module, path: str | os.PathLike, base_hash: str | None = None) -> dict:
    """Apply a saved adapter onto `model` (a base, or one already adapted with the same settings).
    Adds the adapters first when the model has none. Returns the sidecar dict (e.g. its frozen_layers)."""
    path = Path(path)
    info = read_sidecar(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: adapter file not found")
    if base_hash is not None and info.get("base_hash") not in (None, base_hash):
        raise CheckpointError(f"{side}: key 'base_hash' is {info['base_hash']!r} but the base model is "
                              f"{base_hash!r}: this adapter was trained on another checkpoint")
    if _sha256(path).hexdigest() != info.get("sha256"):
        raise CheckpointError(f"{path}: contents do not match key 'sha256' of {side} (corrupted or replaced)")
    if "rank" in info:
        for key in ("alpha", "use_dora", "targets", "modules"):
            if key not in info:
                raise CheckpointError(f"{side}: missing key {key!r}")
        if not adapted_modules(model):
            add_dora(model, info["rank"], info["alpha"], targets=info["targets"], use_dora=info["use_dora"],
                     dropout=info.get("dropout", 0.0))
        have = _settings(model)
        for key in ("rank", "alpha", "use_dora", "modules"):
            if have.get(key) != info[key]:
                raise CheckpointError(f"{side}: key {key!r} is {info[key]!r} but the model has {have.get(key)!r}")
    elif adapted_modules(model):
        raise CheckpointError(f"{side}: holds no adapters but the model has some")
    params = dict(model.named_parameters(remove_duplicate=False))
    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    keys = set(tensors)
    missing = sorted(set(_adapter_keys(model)) - keys)
    if missing:
        raise CheckpointError(f"{path}: missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                                                                       if len(missing) > 1 else ""))
    unexpected = sorted(keys - set(params))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key {unexpected[0]!r} (no such parameter in the model)")
    with torch.no_grad():
        for k in sorted(keys):
            t, p = tensors[k], params[k]
            if t.shape != p.shape:
                raise CheckpointError(f"{path}: key {k!r} has shape {tuple(t.shape)}, the model expects "
                                      f"{tuple(p.shape)}")
            p.copy_(t)  # bumps p._version: cached norms and merged weights refresh themselves
    return info

