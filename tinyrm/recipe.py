"""Training recipes: one flat dataclass, read from a small TOML file, overridable from the command line.

A recipe file sets any field of `TrainConfig` at its top level, plus `[[data]]` tables for the mix
(`path`, `weight`, `domain`, `max_rows`, or `synth`) and `[[val]]` tables for extra validation files.
`$DATA` in a path is the data root (tinyrm/paths.py); other relative paths, like `model` and `runs_dir`,
are taken from the working directory.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .errors import MissingData, RecipeError
from .mix import MixEntry
from .paths import configs_dir, data_root, expand_data
from .synth import KINDS as SYNTH_KINDS


@dataclass
class TrainConfig:
    name: str = "default"
    model: str = "weights/minilm-l6"    # checkpoint folder
    # prompt
    mode: str = "pairwise"              # "pairwise" (both responses, Choice 0/1) | "pointwise" (yes/no per response)
    prefix: str = "domain"              # "domain" = each pair's domain prefix (pointwise: one neutral one),
                                        # "criterion" = its domain's criterion (pointwise too), or literal text
    max_len: int = 512
    truncate: str = "end"               # a response cut to fit max_len keeps its start ("end": the end is
                                        # dropped) or its start and its close ("middle"; prompts.cut_response)
    # adapters and freezing
    use_dora: bool = True
    adapters: bool = True               # False: train the unfrozen layers fully (the paper's "DoRA: no")
    rank: int = 16
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])
    dropout: float = 0.0                # adapter dropout on the adapter's input (PEFT's lora_dropout)
    hidden_dropout: float = 0.0         # BERT: dropout on the embeddings and each layer's residual branches
                                        # while training, as BERT was pretrained with (its config says 0.1)
    freeze_layers: int = 2
    # optimisation (paper defaults)
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 1e-5
    warmup_frac: float = 0.06
    final_lr_frac: float = 0.02
    grad_clip: float = 1.0
    batch_pairs: int = 16               # pairs per optimiser step (pairwise: 2 sequences per pair)
    micro_tokens: int = 8192            # tokens per forward pass; gradients accumulate across micro-batches
    epochs: float = 1.0
    max_steps: int = 0                  # >0 caps the number of optimiser steps
    margin: float = 0.0                 # Bradley–Terry margin
    label_smoothing: float = 0.0        # each pair's label is right with probability 1 - this (conservative
                                        # Bradley–Terry): the loss stops pushing a pair past log((1-ε)/ε)
    amp: str = "auto"                   # "bf16": autocast matmuls to bfloat16 (weights, grads, optimiser stay
                                        # float32); "off"; "auto" = bf16 on CUDA, off on CPU
    seed: int = 17
    val_seed: int = -1                  # >=0: the held-out split, its sample and probes use this seed instead,
                                        # so runs of other seeds validate on the same pairs (and never train on
                                        # another run's validation pairs); -1: the run's own seed
    max_bad_steps: int = 3              # stop after this many optimiser steps in a row with a NaN/inf gradient
    # data
    data: list[MixEntry] = field(default_factory=list)
    val: list[MixEntry] = field(default_factory=list)
    val_frac: float = 0.05
    val_max_pairs: int = 400
    select: str = "domain_mean"         # best checkpoint by "domain_mean" (mean of per-domain validation
                                        # accuracies, as RewardBench averages its sections) or pooled "acc"
    drop_rewardbench_overlap: bool = True
    skip_bad: bool = False
    train_pairs: int = 0                # >0: train on a seeded subset of this many of the mix's pairs (the
                                        # data-scaling curve: fewer unique pairs, more epochs, same steps)
    length_balance: bool = False        # per domain, keep as many training pairs whose chosen response is the
                                        # longer as pairs where it is the shorter (length is then no shortcut)
    length_correct: bool = False        # pointwise: at each validation, fit the reward's slope on log length
    length_fit_pairs: int = 600         # on this many training pairs, and keep the raw or the corrected reward,
                                        # whichever validates better (calibrate.py), chosen per domain
    length_choice: str = "domain"       # ("domain"), for all domains at once ("global"), or as a share of the
                                        # correction per domain ("blend"; validation.SHARES)
    length_expert: bool = False         # pointwise: train with a per-domain length term in the pair logit,
                                        # which the scorer leaves out (calibrate.LengthExpert)
    relevance_floor: float = 0.0        # pointwise, >0: after training, fit a floor on the base encoder's
                                        # prompt-response cosine at this quantile of the chosen answers', and
                                        # a per-domain weight for falling below it (relevance.py), on
    relevance_fit_pairs: int = 300      # this many training pairs per domain
    relevance_fit_made: int = 100       # and relevance pairs made from that many of them (another prompt's answer)
    aug_style: float = 0.0              # add this fraction of style pairs (augment.py: one side dressed up in
    aug_relevance: float = 0.0          # markdown and padding), off-topic answers of the same domain, and
    aug_shuffle: float = 0.0            # sentence-shuffled answers; labels never follow the style
    aug_neighbour: float = 0.0          # and the answer of the most similar other prompt as the rejected one
    pairwise_weight: float = 0.0        # pointwise, >0: also train the pairwise cloze on every pair (both
                                        # orders), this times its loss (objective.py); scoring stays pointwise
    mlm_weight: float = 0.0             # >0: add this times an auxiliary masked-LM loss on the training text
    mlm_frac: float = 0.15              # (mlm.py): the fraction of text tokens hidden in each training sequence
    probes: int = 0                     # held-out probes of each augment kind, made from validation pairs
    ema: float = 0.0                    # >0: validate and keep a moving average of the weights (ema.py), decay
    swa_from: float = 0.0               # >0: from this fraction of the steps on, validate and keep the plain
                                        # mean of the weights instead (ema.py, the tail average); not with ema
    ema_compare: bool = False           # also validate the live weights at every validation (a record only)
    # bookkeeping
    eval_every: int = 50
    eval_untrained: bool = True         # validate the untrained cloze at step 0 too (the same in every run)
    save_every: int = 50
    runs_dir: str = "runs"
    threads: int = 0                    # 0: leave torch's default
    device: str = "auto"

    @property
    def split_seed(self) -> int:
        """The seed of the validation split, its per-domain sample and its generated probes."""
        return self.val_seed if self.val_seed >= 0 else self.seed

    def to_dict(self) -> dict:
        return asdict(self)


def _entries(rows: list[dict], where: str) -> list[MixEntry]:
    out = []
    for i, r in enumerate(rows):
        unknown = set(r) - {f.name for f in fields(MixEntry)}
        if unknown:
            raise RecipeError(f"{where}: entry {i} has unknown key(s) {', '.join(sorted(unknown))}")
        if ("path" in r) == ("synth" in r):
            raise RecipeError(f"{where}: entry {i} needs exactly one of 'path' or 'synth'")
        if "synth" in r and r["synth"] not in SYNTH_KINDS:
            raise RecipeError(f"{where}: entry {i}: synth must be {' or '.join(map(repr, SYNTH_KINDS))}, "
                              f"got {r['synth']!r}")
        _entry_types(r, f"{where}: entry {i}")
        p = str(expand_data(r["path"]).absolute()) if "path" in r else None
        out.append(MixEntry(path=p, weight=float(r.get("weight", 1.0)), domain=r.get("domain"),
                            max_rows=r.get("max_rows"), synth=r.get("synth")))
    return out


def _entry_types(r: dict, where: str) -> None:
    """A [[data]] / [[val]] table's values: path and domain strings, weight a finite number >= 0,
    max_rows an int >= 0."""
    for k in ("path", "domain", "synth"):
        if k in r and not isinstance(r[k], str):
            raise RecipeError(f"{where}: {k} must be a string, got {type(r[k]).__name__} {r[k]!r}")
    w = r.get("weight", 1.0)
    if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
        raise RecipeError(f"{where}: weight must be a finite number >= 0, got {w!r}")
    m = r.get("max_rows")
    if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 0):
        raise RecipeError(f"{where}: max_rows must be an int >= 0, got {m!r}")


# the allowed values of each field that has limits beyond its type; anything else only needs its type
_POSITIVE = {"max_len", "rank", "batch_pairs", "micro_tokens", "eval_every", "save_every", "val_max_pairs",
             "length_fit_pairs", "max_bad_steps", "lr", "eps", "epochs", "grad_clip", "relevance_fit_pairs"}
_NON_NEGATIVE = {"freeze_layers", "max_steps", "threads", "seed", "weight_decay", "final_lr_frac", "margin",
                 "aug_style", "aug_relevance", "aug_shuffle", "aug_neighbour", "probes", "mlm_weight", "train_pairs",
                 "pairwise_weight", "relevance_fit_made"}
_FRACTION = {"dropout", "hidden_dropout", "val_frac", "warmup_frac", "ema", "mlm_frac", "swa_from",
             "relevance_floor"}                                                                   # in [0, 1)
_CHOICES = {"mode": ("pairwise", "pointwise"), "amp": ("auto", "bf16", "off"), "select": ("domain_mean", "acc"),
            "truncate": ("end", "middle"),
            "length_choice": ("domain", "global", "blend")}


def _check_value(name: str, value, where: str) -> None:
    """Raise RecipeError(`where`: ...) for a value of the right type that the trainer cannot use."""
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"{where}: must be a finite number, got {value!r}")
    if name in _POSITIVE and not value > 0:
        raise RecipeError(f"{where}: must be > 0, got {value!r}")
    if name in _NON_NEGATIVE and not value >= 0:
        raise RecipeError(f"{where}: must be >= 0, got {value!r}")
    if name in _FRACTION and not 0 <= value < 1:
        raise RecipeError(f"{where}: must be in [0, 1), got {value!r}")
    if name == "label_smoothing" and not 0 <= value < 0.5:
        raise RecipeError(f"{where}: must be in [0, 0.5), got {value!r}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise RecipeError(f"{where}: must be one of {', '.join(map(repr, _CHOICES[name]))}, got {value!r}")
    if name == "betas" and (len(value) != 2 or not all(0 <= b < 1 and math.isfinite(b) for b in value)):
        raise RecipeError(f"{where}: must be two numbers in [0, 1), got {list(value)!r}")
    if name == "targets" and not value:
        raise RecipeError(f"{where}: must name at least one module kind")


def _coerce(f, value, where: str):
    """Cast a command-line string (or check a TOML value) to the field's type, taken from its default."""
    typ = type(getattr(TrainConfig(), f.name))
    if isinstance(value, str) and typ is not str:
        if typ is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise RecipeError(f"{where}: expected true/false, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        if typ in (int, float):
            try:
                value = typ(value)
            except ValueError:
                raise RecipeError(f"{where}: expected {typ.__name__}, got {value!r}") from None
        else:
            items = [v.strip() for v in value.split(",") if v.strip()]
            try:
                value = [float(v) for v in items] if typ is tuple else items
            except ValueError:
                raise RecipeError(f"{where}: expected numbers separated by commas, got {value!r}") from None
    ok = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list,), tuple: (list, tuple)}[typ]
    if not isinstance(value, ok) or (typ is not bool and isinstance(value, bool)):
        raise RecipeError(f"{where}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    item = {list: str, tuple: float}.get(typ)              # targets: strings; betas: numbers
    if item and not all(isinstance(v, (int, float) if item is float else str) and not isinstance(v, bool)
                        for v in value):
        raise RecipeError(f"{where}: expected a list of {item.__name__}, got {value!r}")
    value = tuple(float(v) for v in value) if typ is tuple else float(value) if typ is float else value
    _check_value(f.name, value, where)
    return value


def load_recipe(name_or_path: str, overrides: list[str] | None = None,
                data_files: list[str] | None = None) -> TrainConfig:
    """Read a shipped recipe by name (tinyrm/configs/<name>.toml) or a .toml path, apply `--key value`
    overrides, and with `data_files` train on those files instead of the recipe's mix."""
    path = Path(name_or_path)
    if not path.suffix:
        path = configs_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in configs_dir().glob("*.toml"))
        raise RecipeError(f"{path}: recipe {name_or_path!r} not found (shipped: {', '.join(known)})")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not a valid TOML file ({e})") from None
    byname = {f.name: f for f in fields(TrainConfig)}
    cfg = TrainConfig(name=path.stem)
    for key, value in raw.items():
        if key in ("data", "val"):
            if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
                raise RecipeError(f"{path}: {key} must be [[{key}]] tables")
            setattr(cfg, key, _entries(value, f"{path}: [[{key}]]"))
        elif key in byname:
            setattr(cfg, key, _coerce(byname[key], value, f"{path}: {key}"))
        else:
            raise RecipeError(f"{path}: unknown key {key!r}")
    ov = list(overrides or [])
    if ov and ov[0] == "--":
        ov = ov[1:]
    if len(ov) % 2:
        raise RecipeError(f"overrides must be --key value pairs, got {' '.join(ov)}")
    for k, v in zip(ov[::2], ov[1::2]):
        key = k.lstrip("-").replace("-", "_")
        if not k.startswith("--") or key not in byname or key in ("data", "val"):
            raise RecipeError(f"unknown override {k!r} (fields: {', '.join(sorted(byname))})")
        setattr(cfg, key, _coerce(byname[key], v, f"override {k}"))
    if data_files:
        # the user's own files: one mix entry each, validation carved from them (val_frac)
        cfg.data = [MixEntry(path=str(Path(f).absolute())) for f in data_files]
        cfg.val = []
    return cfg


def needed_files(cfg: TrainConfig) -> list[Path]:
    """Every file the recipe trains or validates on (RewardBench, read only by the overlap guard when it is
    there, is not required: mix.load_data says when the guard had nothing to check against)."""
    return [Path(e.path) for e in cfg.data + cfg.val if e.path]


def check_files(files: list[Path]) -> None:
    """Stop at the first missing file with one line naming it and the command that fetches the data."""
    for f in files:
        if not f.is_file():
            raise MissingData(f"{f}: not found; fetch the data with `tinyrm data` (or `make data`), "
                              f"or point TINYRM_DATA at a folder that has it (data root now: {data_root()})")


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config a run folder was started with (its config.json), e.g. to resume it."""
    f = Path(run_dir) / "config.json"
    if not f.is_file():
        raise RecipeError(f"{f}: not found; --resume takes a run folder written by `tinyrm train`")
    try:
        raw = json.loads(f.read_text())
        raw["data"] = [MixEntry(**e) for e in raw["data"]]
        raw["val"] = [MixEntry(**e) for e in raw["val"]]
        raw["betas"] = tuple(raw["betas"])
        cfg = TrainConfig(**raw)
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise RecipeError(f"{f}: not a run config ({str(e)[:200]})") from None
    for fl in fields(TrainConfig):      # a hand-edited config.json: every value of the right type and range
        if fl.name not in ("data", "val"):
            setattr(cfg, fl.name, _coerce(fl, getattr(cfg, fl.name), f"{f}: key {fl.name!r}"))
    for e in cfg.data + cfg.val:
        _entry_types({k: v for k, v in vars(e).items() if v is not None}, f"{f}: data entry {e.path or e.synth!r}")
    return cfg
