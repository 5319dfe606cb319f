"""Encoder configuration: one dataclass for both architectures, read from a Hugging Face config.json.

Every size, theta and special-token id comes from the checkpoint's files; the presets below exist only
for building randomly initialised models of the published shapes (benchmarks, tests).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import CheckpointError


@dataclass
class EncoderConfig:
    arch: str = "modernbert"  # "modernbert" | "bert"
    vocab_size: int = 50368
    hidden_size: int = 768
    num_layers: int = 22
    num_heads: int = 12
    intermediate_size: int = 1152
    norm_eps: float = 1e-5
    # ModernBERT: attention pattern and rotary bases
    global_every: int = 3          # layer i is global when i % global_every == 0
    local_window: int = 128        # full window width; a token sees +-local_window // 2
    global_theta: float = 160000.0
    local_theta: float = 10000.0
    layer_types: list[str] | None = None  # explicit per-layer "full_attention"/"sliding_attention"
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    head_bias: bool = False        # ModernBERT head.dense bias (classifier_bias)
    decoder_bias: bool = True
    # BERT: absolute positions and segments
    max_position: int = 8192
    type_vocab_size: int = 2
    # special tokens (filled from tokenizer.json when loading)
    pad_id: int = 0
    cls_id: int = 1
    sep_id: int = 2
    mask_id: int = 3
    extra: dict = field(default_factory=dict)  # anything else from config.json, kept for reference

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def is_global(self, i: int) -> bool:
        if self.arch == "bert":
            return True
        if self.layer_types is not None:
            return self.layer_types[i] == "full_attention"
        return i % self.global_every == 0

    def to_dict(self) -> dict:
        return asdict(self)

    # ---- presets (random-init shapes for tests and benchmarks) ----
    @classmethod
    def preset(cls, name: str, **kw) -> "EncoderConfig":
        presets = {
            "modernbert-base": dict(arch="modernbert", hidden_size=768, num_layers=22, num_heads=12,
                                    intermediate_size=1152, vocab_size=50368, pad_id=50283, cls_id=50281,
                                    sep_id=50282, mask_id=50284),
            "modernbert-large": dict(arch="modernbert", hidden_size=1024, num_layers=28, num_heads=16,
                                     intermediate_size=2624, vocab_size=50368, pad_id=50283, cls_id=50281,
                                     sep_id=50282, mask_id=50284),
            "minilm-l6": dict(arch="bert", hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
                              vocab_size=30522, norm_eps=1e-12, max_position=512, pad_id=0, cls_id=101,
                              sep_id=102, mask_id=103),
        }
        if name not in presets:
            raise KeyError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return replace(cls(), **{**presets[name], **kw})


def read_json(path: Path, missing: str) -> dict:
    """A JSON file, or a CheckpointError naming it: `missing` when it is absent, the parse error otherwise."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {missing}")
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


_REQUIRED = object()


def _get(cfg: dict, key: str, path: Path, typ: type, default=_REQUIRED):
    """cfg[key] checked against `typ` (int, float: a number, bool, str), or `default` when absent or null;
    a CheckpointError naming the file and key otherwise."""
    if cfg.get(key) is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{path}: missing key {key!r}")
        return default
    v = cfg[key]
    ok = (int, float) if typ is float else (typ,)
    if not isinstance(v, ok) or (typ is not bool and isinstance(v, bool)):
        raise CheckpointError(f"{path}: key {key!r} must be {typ.__name__}, got {type(v).__name__} {str(v)[:60]!r}")
    return typ(v)


def _size(cfg: dict, key: str, path: Path) -> int:
    v = _get(cfg, key, path, int)
    if v <= 0:
        raise CheckpointError(f"{path}: key {key!r} must be > 0, got {v}")
    return v


def _rope_theta(cfg: dict, kind: str, legacy: str, default: float, path: Path) -> float:
    """Read a rotary base from either dialect: legacy `global_rope_theta` or transformers-5 `rope_parameters`."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict):
        sub = rp.get(kind)
        if isinstance(sub, dict) and "rope_theta" in sub:
            return _get(sub, "rope_theta", path, float)
        if "rope_theta" in rp and kind == "full_attention":
            return _get(rp, "rope_theta", path, float)
    return _get(cfg, legacy, path, float, default)


def _layer_types(cfg: dict, n: int, path: Path) -> list[str] | None:
    lt = cfg.get("layer_types")
    if not lt:
        return None
    if not isinstance(lt, list) or len(lt) != n or not all(x in ("full_attention", "sliding_attention") for x in lt):
        raise CheckpointError(f"{path}: key 'layer_types' must list 'full_attention'/'sliding_attention' "
                              f"once per layer ({n})")
    return list(lt)


def config_from_hf(path: str | Path) -> EncoderConfig:
    """Parse a Hugging Face `config.json` (ModernBERT in both dialects, or BERT); every value used is
    type-checked, so a damaged file fails here naming the key, not later inside the model."""
    path = Path(path)
    cfg = read_json(path, "config.json not found")
    mt = cfg.get("model_type")
    common = dict(vocab_size=_size(cfg, "vocab_size", path), hidden_size=_size(cfg, "hidden_size", path),
                  num_layers=_size(cfg, "num_hidden_layers", path), num_heads=_size(cfg, "num_attention_heads", path),
                  intermediate_size=_size(cfg, "intermediate_size", path), extra=cfg)
    if common["hidden_size"] % common["num_heads"]:
        raise CheckpointError(f"{path}: key 'hidden_size' ({common['hidden_size']}) is not a multiple of "
                              f"'num_attention_heads' ({common['num_heads']})")
    g = lambda key, typ, default=_REQUIRED: _get(cfg, key, path, typ, default)  # noqa: E731
    if mt == "modernbert":
        return EncoderConfig(
            arch="modernbert", **common,
            norm_eps=g("norm_eps", float, 1e-5),
            global_every=g("global_attn_every_n_layers", int, 3),
            local_window=g("local_attention", int, 2 * g("sliding_window", int, 64)),
            global_theta=_rope_theta(cfg, "full_attention", "global_rope_theta", 160000.0, path),
            local_theta=_rope_theta(cfg, "sliding_attention", "local_rope_theta", 10000.0, path),
            layer_types=_layer_types(cfg, common["num_layers"], path),
            norm_bias=g("norm_bias", bool, False), attention_bias=g("attention_bias", bool, False),
            mlp_bias=g("mlp_bias", bool, False), head_bias=g("classifier_bias", bool, False),
            decoder_bias=g("decoder_bias", bool, True),
            max_position=g("max_position_embeddings", int, 8192),
            pad_id=g("pad_token_id", int, 50283),
        )
    if mt == "bert":
        act = cfg.get("hidden_act", "gelu")
        if act != "gelu":
            raise CheckpointError(f"{path}: hidden_act {act!r} is not supported (only exact 'gelu')")
        return EncoderConfig(
            arch="bert", **common,
            norm_eps=g("layer_norm_eps", float, 1e-12),
            max_position=_size(cfg, "max_position_embeddings", path),
            type_vocab_size=g("type_vocab_size", int, 2),
            pad_id=g("pad_token_id", int, 0),
        )
    raise CheckpointError(f"{path}: unknown architecture model_type={str(mt)[:60]!r} (supported: 'modernbert', 'bert')")
