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
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _need(cfg: dict, key: str, path: Path):
    if key not in cfg:
        raise CheckpointError(f"{path}: missing key {key!r}")
    return cfg[key]


def _rope_theta(cfg: dict, kind: str, legacy: str, default: float) -> float:
    """Read a rotary base from either dialect: legacy `global_rope_theta` or transformers-5 `rope_parameters`."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict):
        sub = rp.get(kind)
        if isinstance(sub, dict) and "rope_theta" in sub:
            return float(sub["rope_theta"])
        if "rope_theta" in rp and kind == "full_attention":
            return float(rp["rope_theta"])
    return float(cfg.get(legacy, default))


def config_from_hf(path: str | Path) -> EncoderConfig:
    """Parse a Hugging Face `config.json` (ModernBERT in both dialects, or BERT)."""
    path = Path(path)
    cfg = read_json(path, "config.json not found")
    mt = cfg.get("model_type")
    common = dict(
        vocab_size=_need(cfg, "vocab_size", path),
        hidden_size=_need(cfg, "hidden_size", path),
        num_layers=_need(cfg, "num_hidden_layers", path),
        num_heads=_need(cfg, "num_attention_heads", path),
        intermediate_size=_need(cfg, "intermediate_size", path),
        extra=cfg,
    )
    if mt == "modernbert":
        layer_types = cfg.get("layer_types")
        return EncoderConfig(
            arch="modernbert", **common,
            norm_eps=float(cfg.get("norm_eps", 1e-5)),
            global_every=int(cfg.get("global_attn_every_n_layers", 3)),
            local_window=int(cfg.get("local_attention", 2 * cfg.get("sliding_window", 64))),
            global_theta=_rope_theta(cfg, "full_attention", "global_rope_theta", 160000.0),
            local_theta=_rope_theta(cfg, "sliding_attention", "local_rope_theta", 10000.0),
            layer_types=list(layer_types) if layer_types else None,
            norm_bias=bool(cfg.get("norm_bias", False)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            head_bias=bool(cfg.get("classifier_bias", False)),
            decoder_bias=bool(cfg.get("decoder_bias", True)),
            max_position=int(cfg.get("max_position_embeddings", 8192)),
            pad_id=int(cfg.get("pad_token_id", 50283)),
        )
    if mt == "bert":
        act = cfg.get("hidden_act", "gelu")
        if act != "gelu":
            raise CheckpointError(f"{path}: hidden_act {act!r} is not supported (only exact 'gelu')")
        return EncoderConfig(
            arch="bert", **common,
            norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            max_position=int(_need(cfg, "max_position_embeddings", path)),
            type_vocab_size=int(cfg.get("type_vocab_size", 2)),
            pad_id=int(cfg.get("pad_token_id", 0)),
        )
    raise CheckpointError(f"{path}: unknown architecture model_type={mt!r} (supported: 'modernbert', 'bert')")
