"""Exporting a trained reward model for other tools: a merged transformers folder, or a PEFT adapter.

    tinyrm export --model runs/default-20261128-1200 --out exported/rm            # --format hf (default)
    tinyrm export --model runs/default-20261128-1200 --out exported/rm-peft --format peft

hf: config.json (BertForMaskedLM / ModernBertForMaskedLM), model.safetensors under transformers' key
names with every adapter folded in (DoRALinear's merged weight; a head tinyrm built for a checkpoint
without one goes out as `cls.predictions.*`), tokenizer.json, tinyrm.json (what a scorer needs: mode,
prefix, max_len, answer words, length slopes, relevance floor, base) and README.md. AutoModelForMaskedLM loads
it alone. A model with a relevance floor also carries the plain base encoder in relevance-encoder/.

peft: adapter_config.json + adapter_model.safetensors for peft.PeftModel.from_pretrained on the base
(tinyrm.json's "base"), plus tinyrm.json and README.md. PEFT cannot carry a trained base weight inside a
LoRA-adapted module, so such a module goes out merged, as a modules_to_save entry. A head tinyrm built
(MiniLM has none) is random in the base transformers builds: its whole transform is a modules_to_save
entry and the decoder bias travels as a bias (bias="all": the file then holds every bias of the model).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .adapters import _settings, _trainable_base, load_adapter
from .atomic import replace_dir
from .calibrate import load_slopes
from .config import read_json
from .dora import ADAPTER_PARAMS, adapted_modules
from .errors import CheckpointError
from .prompts import GAP, MIN_MIDDLE, Cloze, gap_ids
from .relevance import load as load_relevance
from .scorer import RELEVANCE_ENCODER
from .tokens import PAIRWISE_WORDS, POINTWISE_WORDS
from .weights import load_encoder

FORMATS = ("hf", "peft")
INFO = "tinyrm.json"
ARCHITECTURES = {"bert": "BertForMaskedLM", "modernbert": "ModernBertForMaskedLM"}
PEFT_PREFIX = "base_model.model."


# ---- reading a run ----
def find_checkpoint(path: Path) -> Path:
    """A run folder's best/ (else last/), or a checkpoint folder holding adapter.json itself."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder (give a run folder or a checkpoint folder)")
    for c in (path / "best", path / "last", path):
        if (c / "adapter.json").is_file():
            return c
    raise CheckpointError(f"{path}: no adapter.json in it or in its best/ or last/ (not a tinyrm run)")


def _base_folder(base: str, meta: dict, meta_file: Path) -> Path:
    """The base named in adapter.json: as given, else the folder training resolved (`base_path`)."""
    for c in (Path(base), *([Path(meta["base_path"])] if meta.get("base_path") else [])):
        if (c / "config.json").is_file():
            return c
    raise CheckpointError(f"{meta_file}: base model {base!r} not found (fetch it with `tinyrm weights`)")


def load_run(path: str | os.PathLike):
    """(encoder with the adapter loaded, in eval mode; tinyrm.json dict; names of trained base weights)."""
    ckpt = find_checkpoint(Path(path))
    meta = read_json(ckpt / "adapter.json", "not found")
    train = meta.get("train") or {}
    base = train.get("model") or meta.get("base")
    if not base:
        raise CheckpointError(f"{ckpt / 'adapter.json'}: missing key 'base' (and 'train.model')")
    enc = load_encoder(_base_folder(str(base), meta, ckpt / "adapter.json"))
    side = load_adapter(enc, ckpt / "adapter.safetensors", base_hash=meta.get("base_hash"))
    mode = train.get("mode", "pairwise")
    if mode not in ("pairwise", "pointwise"):
        raise CheckpointError(f"{ckpt / 'adapter.json'}: key 'train.mode' is {mode!r}, not pairwise/pointwise")
    try:
        slopes = load_slopes(ckpt) if mode == "pointwise" else None
        relevance = load_relevance(ckpt) if mode == "pointwise" else None
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    words = meta.get("answer_words") or list(PAIRWISE_WORDS if mode == "pairwise" else POINTWISE_WORDS)
    info = {"format": "tinyrm-model", "version": 1, "mode": mode, "prefix": train.get("prefix", "domain"),
            "max_len": int(train.get("max_len", 512)), "truncate": train.get("truncate", "end"),
            "answer_words": list(words), "length_slopes": slopes, "relevance": relevance, "base": str(base)}
    return enc.eval(), info, list(side.get("trainable_base", []))


# ---- transformers layout ----
def _decoder(enc):
    dec = enc.decoder_module()
    return dec, next(n for n, m in enc.named_modules() if m is dec)


def hf_state_dict(enc) -> tuple[dict[str, torch.Tensor], bool]:
    """(transformers-named tensors with adapters merged, whether the decoder is tied to the embeddings)."""
    enc.eval()
    mods = adapted_modules(enc)
    dec, dec_name = _decoder(enc)
    # tied: the decoder's weight is the word-embedding matrix itself, not an adapted (merged) version of it
    tied = dec not in mods.values() and any(p is dec.weight for p in enc.embeddings.parameters())
    out = {}
    for key, t in enc.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in mods and leaf in ADAPTER_PARAMS:
            continue
        if owner in mods and leaf == "weight":
            mods[owner].merge()
            t = mods[owner].inference_weight()
        if owner == dec_name and leaf == "weight" and tied:
            continue                        # transformers ties it back to the word embeddings
        if enc.config.arch == "bert" and key == "cls.predictions.decoder.bias":
            out["cls.predictions.bias"] = t                      # BERT's own name for the decoder bias
            if tied:
                continue                    # tied, transformers fills decoder.bias from it; untied, both are read
        out[key] = t
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}, tied


def hf_config(enc, tied: bool) -> dict:
    """The base's config.json, as the masked-LM class, with the tying the exported weights need."""
    cfg = {k: v for k, v in enc.config.extra.items() if k != "_name_or_path"}
    cfg["architectures"] = [ARCHITECTURES[enc.config.arch]]
    cfg["tie_word_embeddings"] = tied
    return cfg


# ---- PEFT layout ----
def peft_plan(enc, trained: list[str]) -> tuple[list[str], list[str], str]:
    """(LoRA target modules, modules_to_save, bias mode) for an adapted encoder whose base weights
    `trained` (state-dict names) were trained too. Raises when PEFT cannot express the model."""
    mods = adapted_modules(enc)
    if not mods:
        raise CheckpointError("export --format peft: the model has no adapters (a full fine-tune): use --format hf")
    dec, dec_name = _decoder(enc)
    params = dict(enc.named_parameters(remove_duplicate=False))
    counts: dict[int, int] = {}
    for p in params.values():
        counts[id(p)] = counts.get(id(p), 0) + 1
    to_save, bias = set(), "none"
    if enc.built_head:                      # the base transformers builds has a random head here
        to_save.add(next(n for n, m in enc.named_modules() if m is enc.head_modules()[0]))
        bias = "all"                        # ... and a zero decoder bias: carry the trained one
    for name in trained:
        if name not in params:
            raise CheckpointError(f"export --format peft: trained weight {name!r} is not in the model")
        if counts[id(params[name])] > 1:
            raise CheckpointError(f"export --format peft: trained {name!r} is tied (the word embeddings and "
                                  "the decoder); PEFT cannot carry it (use --format hf)")
        owner = name.rpartition(".")[0]
        if owner == dec_name and dec not in mods.values():
            bias = "all"                    # the decoder holds the tied matrix: its bias travels alone
            continue
        to_save.add(owner)                  # an adapted module here goes out merged (see module docstring)
    to_save = {m for m in to_save if not any(m.startswith(o + ".") for o in to_save)}
    inside = lambda n: any(n == o or n.startswith(o + ".") for o in to_save)  # noqa: E731
    return sorted(n for n in mods if not inside(n)), sorted(to_save), bias


def peft_tensors(enc, targets, to_save, bias) -> dict[str, torch.Tensor]:
    """adapter_model.safetensors: PEFT's key names for the adapters, the saved modules and (bias="all")
    every bias, a LoRA target's as `<module>.base_layer.bias`."""
    names = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "magnitude": "lora_magnitude_vector"}
    mods = adapted_modules(enc)
    out = {}
    for m in targets:
        for p in ADAPTER_PARAMS:
            if getattr(mods[m], p) is not None:
                out[f"{PEFT_PREFIX}{m}.{names[p]}"] = getattr(mods[m], p).detach().clone()
    merged, _ = hf_state_dict(enc)
    for key, t in merged.items():
        owner = key.rpartition(".")[0]
        if any(key.startswith(o + ".") for o in to_save):
            out[PEFT_PREFIX + key] = t
        elif bias == "all" and key.endswith("bias"):
            out[PEFT_PREFIX + (f"{owner}.base_layer.bias" if owner in targets else key)] = t
    if bias == "all" and enc.config.arch == "bert" and "cls.predictions.decoder.bias" not in merged:
        out[PEFT_PREFIX + "cls.predictions.decoder.bias"] = merged["cls.predictions.bias"].clone()
    return out


def peft_config(enc, targets, to_save, bias, base: str) -> dict:
    s = _settings(enc)
    return {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base,
            "r": s["rank"], "lora_alpha": s["alpha"], "lora_dropout": s["dropout"], "use_dora": s["use_dora"],
            "target_modules": targets, "modules_to_save": to_save or None, "bias": bias,
            "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True, "inference_mode": True,
            "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "layers_pattern": None,
            "revision": None}


# ---- writing ----
TEMPLATES = {
    "pairwise": "[CLS] {prefix} Question: {prompt} Choice 0: {a} [SEP] Choice 1: {b} Answer: [MASK] [SEP]",
    "pointwise": "[CLS] {prefix} Question: {prompt} Response: {response} [SEP] Is the response good? Answer: [MASK] [SEP]",
}


def _cut_rule(cz) -> str:
    if cz.truncate == "end":
        return ", trimming the prompt from its start and a response from its end"
    gap = gap_ids(cz.tok, "middle")
    return (f", trimming the prompt from its start and a response from its middle: one cut to k >= {MIN_MIDDLE} "
            f"tokens keeps its first k - k // 3 - {len(gap)}, the ids {gap} of {GAP!r}, and its last k // 3")


def _readme(enc, info: dict, fmt: str) -> str:
    """How to use the folder without tinyrm: what to load, the prompt, and which two logits make the reward."""
    cz = Cloze.for_encoder(enc, info["mode"], info["prefix"], info["max_len"], info.get("truncate", "end"))
    (w0, w1), (i0, i1) = cz.words, cz.answer_ids
    prefixes = {d: cz.prefix_for(d) for d in ("chat", "reasoning", "safety")}
    prefix = (repr(prefixes["chat"]) if len(set(prefixes.values())) == 1 else
              "by domain, " + ", ".join(f"{d}: {t!r}" for d, t in prefixes.items()) + " (chat when unknown)")
    if fmt == "hf":
        load = ("    model = AutoModelForMaskedLM.from_pretrained(THIS_FOLDER)\n"
                "    rm = tinyrm.RewardModel.load(THIS_FOLDER)          # tinyrm itself, reading tinyrm.json\n")
    else:
        load = (f"    base = AutoModelForMaskedLM.from_pretrained({info['base']!r})   # the base trained on\n"
                "    model = PeftModel.from_pretrained(base, THIS_FOLDER)\n\n"
                "(tinyrm itself reads the --format hf export.)\n")
    use = (("z" if info["mode"] == "pairwise" else "reward") + f" = logit at [MASK] of {w0!r} (id {i0}) minus that of {w1!r} (id {i1})" +
           (": the log-odds that Choice 0 is better; average both orders, (z_ab - z_ba) / 2."
            if info["mode"] == "pairwise" else "."))
    if info["length_slopes"]:
        use += (' Then subtract length_slopes[domain] ("*" without one) * log(1 + characters of the response), '
                "slopes in tinyrm.json.")
    if info.get("relevance"):
        use += (" Then add weights[domain] * min(0, c - floors[domain]) from tinyrm.json's \"relevance\", "
                "where c is the cosine between the mean-pooled last hidden states of the plain base encoder "
                + (f"({RELEVANCE_ENCODER}/ in this folder) " if fmt == "hf" else "")
                + "over [CLS] prompt [SEP] and [CLS] response [SEP], each cut to max_len tokens.")
    return (f"# tinyrm reward model ({info['mode']}, exported as {fmt})\n\n{load}\n"
            f"Prompt (token_type_ids 1 after the first [SEP]; tinyrm/prompts.py builds it piece by piece and "
            f"truncates it to {cz.max_len} tokens{_cut_rule(cz)}):\n\n    {TEMPLATES[info['mode']]}\n\n"
            f"prefix: {prefix}\n\n{use}\n")


def _write_folder(out: Path, write) -> Path:
    """Fill a fresh temporary folder with `write(tmp)`, then swap it in for `out` (absent, empty, or an
    earlier export: never another kind of folder, e.g. a run whose config.json would be overwritten)."""
    if out.exists() and any(out.iterdir()) and not (out / INFO).is_file():
        raise CheckpointError(f"{out}: exists and is not an earlier export (no {INFO}); choose another --out")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    replace_dir(tmp, out)
    return out


def export_hf(enc, out: str | os.PathLike, info: dict) -> Path:
    """A merged transformers folder (see the module docstring); `info` becomes tinyrm.json."""
    def write(d: Path):
        tensors, tied = hf_state_dict(enc)
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(hf_config(enc, tied), indent=2) + "\n")
        shutil.copy(Path(enc.source) / "tokenizer.json", d / "tokenizer.json")
        (d / INFO).write_text(json.dumps(info, indent=2) + "\n")
        (d / "README.md").write_text(_readme(enc, info, "hf"))
        if info.get("relevance"):     # the floor reads the plain base, which the merged weights no longer are
            (d / RELEVANCE_ENCODER).mkdir()
            for f in Path(enc.source).iterdir():
                if f.name in ("config.json", "tokenizer.json") or f.name.endswith((".safetensors", ".index.json")):
                    shutil.copy(f, d / RELEVANCE_ENCODER / f.name)
    return _write_folder(Path(out), write)


def export_peft(enc, out: str | os.PathLike, info: dict, trained: list[str] | None = None) -> Path:
    """A PEFT adapter folder for info["base"]. trained: the base weights that were trained (a checkpoint's
    sidecar lists them); None reads them off requires_grad (a model straight from training)."""
    trained = sorted(_trainable_base(enc)) if trained is None else trained
    targets, to_save, bias = peft_plan(enc, trained)

    def write(d: Path):
        save_file(peft_tensors(enc, targets, to_save, bias), str(d / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
        cfg = peft_config(enc, targets, to_save, bias, info["base"])
        (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        shutil.copy(Path(enc.source) / "tokenizer.json", d / "tokenizer.json")
        (d / INFO).write_text(json.dumps({**info, "format": "tinyrm-peft"}, indent=2) + "\n")
        (d / "README.md").write_text(_readme(enc, info, "peft"))
    return _write_folder(Path(out), write)


def export_model(model: str | os.PathLike, out: str | os.PathLike, fmt: str = "hf") -> Path:
    """`tinyrm export`: a run (or checkpoint) folder -> an hf or peft folder at `out`."""
    if fmt not in FORMATS:
        raise CheckpointError(f"export: format {fmt!r} is not one of {', '.join(FORMATS)}")
    enc, info, trained = load_run(model)
    return export_hf(enc, out, info) if fmt == "hf" else export_peft(enc, out, info, trained)
