"""Loading encoders from Hugging Face-layout folders, and fetching those folders.

A folder holds `config.json`, `model.safetensors` (or `model.safetensors.index.json` + shards) and
`tokenizer.json`. The model is built on the meta device and the checkpoint tensors are assigned into
it, so no random weights are ever materialised. Every key and shape is checked; errors name the file
and the key.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from .bert import Bert
from .config import EncoderConfig, config_from_hf
from .encoder import Encoder
from .errors import CheckpointError, first_line
from .modernbert import ModernBert
from .tokens import Specials, load_tokenizer

log = logging.getLogger("tinyrm")

def _tensor_files(folder: Path) -> dict[str, Path]:
    """key -> file holding it, from model.safetensors or a sharded index."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        with _open_tensors(single) as f:
            return {k: single for k in f.keys()}
    if index.is_file():
        try:
            weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError("weight_map must map tensor names to shard file names")
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({str(e)[:200]})") from None
        for shard in set(weight_map.values()):
            if not (folder / shard).is_file():
                raise CheckpointError(f"{index}: shard {shard!r} not found in {folder}")
        return {k: folder / v for k, v in weight_map.items()}
    raise CheckpointError(f"{folder}: neither model.safetensors nor model.safetensors.index.json found")


def _open_tensors(file: Path):
    """safe_open, or a CheckpointError naming the file: safetensors raises its own error types for a
    truncated or garbled header."""
    try:
        return safe_open(str(file), "pt", device="cpu")
    except Exception as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({first_line(e)})") from None


def _map_key(arch: str, key: str) -> str | None:
    """Checkpoint key -> our parameter name; None for entries that are not weights we use."""
    if arch == "bert":
        if key.endswith("position_ids") or "pooler." in key or "seq_relationship" in key:
            return None
        if not key.startswith(("bert.", "cls.")):
            key = "bert." + key  # saved from a bare BertModel
        if key == "cls.predictions.bias":
            key = "cls.predictions.decoder.bias"
    return key


def _tied(model: Encoder) -> str:
    return "decoder.weight" if model.config.arch == "modernbert" else "cls.predictions.decoder.weight"


def _build_missing_head(model: Encoder, missing: set[str], dtype, device) -> None:
    """BERT checkpoints without an MLM head (MiniLM): build one whose transform starts as identity.

    dense = I and a unit LayerNorm keep the head's output in the space of the tied word embeddings, so
    the cloze readout starts as "which answer token's embedding is the hidden state closest to".
    """
    with torch.no_grad():
        t = model.cls.predictions.transform
        t.dense.weight = torch.nn.Parameter(torch.eye(model.config.hidden_size, dtype=dtype, device=device))
        t.dense.bias = torch.nn.Parameter(torch.zeros(model.config.hidden_size, dtype=dtype, device=device))
        t.LayerNorm.weight = torch.nn.Parameter(torch.ones(model.config.hidden_size, dtype=dtype, device=device))
        t.LayerNorm.bias = torch.nn.Parameter(torch.zeros(model.config.hidden_size, dtype=dtype, device=device))
        model.cls.predictions.decoder.bias = torch.nn.Parameter(
            torch.zeros(model.config.vocab_size, dtype=dtype, device=device))
    model.built_head = True
    log.info("checkpoint has no MLM head (%s): built one with the decoder tied to the word embeddings and "
             "an identity transform (training learns it; adapter files carry it)", ", ".join(sorted(missing)))


def load_encoder(path: str | os.PathLike, dtype: torch.dtype | None = None, device=None) -> Encoder:
    """Load a ModernBERT or BERT encoder (with its MLM head and tokenizer) from a folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder (run `make weights` to fetch one)")
    cfg: EncoderConfig = config_from_hf(folder / "config.json")
    tok = load_tokenizer(folder / "tokenizer.json")
    sp = Specials.from_tokenizer(tok, str(folder / "tokenizer.json"))
    cfg.cls_id, cfg.sep_id, cfg.pad_id, cfg.mask_id = sp.cls_id, sp.sep_id, sp.pad_id, sp.mask_id
    dtype = dtype or torch.float32
    device = torch.device(device or "cpu")
    with torch.device("meta"):
        model = ModernBert(cfg) if cfg.arch == "modernbert" else Bert(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}

    files = _tensor_files(folder)
    state: dict[str, torch.Tensor] = {}
    handles = {}
    for ckey, file in files.items():
        key = _map_key(cfg.arch, ckey)
        if key is None:
            continue
        if key not in expected:
            raise CheckpointError(f"{file}: unexpected key {ckey!r} for a {cfg.arch} model")
        if file not in handles:
            handles[file] = _open_tensors(file)
        try:
            t = handles[file].get_tensor(ckey)
        except Exception as e:   # a file cut short after its header: the tensor's bytes are not there
            raise CheckpointError(f"{file}: key {ckey!r} cannot be read ({first_line(e)})") from None
        if tuple(t.shape) != tuple(expected[key]):
            raise CheckpointError(f"{file}: key {ckey!r} has shape {tuple(t.shape)}, "
                                  f"expected {tuple(expected[key])} from config.json")
        state[key] = t.to(device=device, dtype=dtype)

    tied = _tied(model)
    # an exported model whose decoder was adapted carries its own decoder matrix (tie_word_embeddings false)
    untied = cfg.extra.get("tie_word_embeddings") is False
    missing = set(expected) - set(state) - (set() if untied else {tied})
    head_keys = {k for k in missing if k.startswith("cls.predictions.")}
    if cfg.arch == "bert" and head_keys and not any(k.startswith("cls.predictions.") for k in state):
        missing -= head_keys
    else:
        head_keys = set()
    if missing:
        first = sorted(missing)[0]
        raise CheckpointError(f"{folder}: checkpoint is missing key {first!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    model.load_state_dict(state, strict=False, assign=True)
    if head_keys:
        _build_missing_head(model, head_keys, dtype, device)
    if not untied:
        model.tie_weights()  # the decoder shares the (now real) embedding matrix
    model.tokenizer = tok
    model.source = str(folder)
    return model.eval()
