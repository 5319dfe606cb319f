"""The scorer: a trained cloze reward model behind a small API for users' own code.

    rm = tinyrm.RewardModel.load("runs/default-20261128-1200")   # a run, a checkpoint or an exported folder
    rm.compare(prompts, responses_a, responses_b)  # P(a is better), pairwise or pointwise models
    rm.score(prompts, responses)                   # scalar rewards (pointwise models), for best-of-n

Inputs are tokenised into templates (prompts.py), sorted by length, cut into token-budget batches and
fed packed — no padding at all — with the MLM head run only at each [MASK] and only for the two
answer tokens. Adapters are merged for inference, so a DoRA model costs what the base model costs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from tqdm import tqdm

from .adapters import load_adapter
from .batching import token_batches
from .calibrate import length_term, load_slopes
from .config import read_json
from .dora import merge_all
from .encoder import Encoder, packed_from_lists
from .errors import CheckpointError, TinyrmError
from .prompts import Cloze
from .relevance import SentenceEmbedder, load as load_relevance, term as relevance_term
from .rank import rank as rank_candidates, reward_func
from .weights import load_encoder


RELEVANCE_ENCODER = "relevance-encoder"   # an export's copy of the plain base, for the relevance floor
log = logging.getLogger(__name__)


def prompt_settings(saved: dict, kw: dict, where: str) -> dict:
    """The prompt settings a model was trained with (`saved`), the caller's `kw` overriding them. A longer
    max_len than trained is allowed, with a warning: six models trained at 192 tokens and read at 384
    validated 0.021 lower on average (0.647 -> 0.626; docs/decisions.md 1.42)."""
    opts = {k: saved[k] for k in ("mode", "prefix", "max_len", "truncate") if k in saved}
    if kw.get("max_len") and opts.get("max_len") and kw["max_len"] > opts["max_len"]:
        log.warning("%s: scoring at max_len %d, longer than the %d tokens the model was trained on; models read "
                    "past their training length validated lower (docs/decisions.md 1.42)", where, kw["max_len"],
                    opts["max_len"])
    return {**opts, **kw}


def mask_logits(enc: Encoder, examples, vocab_ids: torch.Tensor) -> torch.Tensor:
    """One packed forward: examples (with .input_ids, .token_type_ids, .mask_pos) -> [N, 2] answer logits."""
    dev = vocab_ids.device
    p = packed_from_lists([e.input_ids for e in examples], [e.token_type_ids for e in examples], device=dev)
    rows = p.cu_seqlens[:-1] + torch.tensor([e.mask_pos for e in examples], device=dev)
    h = enc.encode_packed(p, rows)                                               # [N, H]: last layer at the masks only
    return enc.logits_at(h, vocab_ids)                                           # [N, 2]


# Tokens per scoring batch on a GPU (big batches; its caching allocator reuses memory), and the cap on CPU.
GPU_MAX_TOKENS = 16384
# On CPU a batch is sized so that a layer's widest activation stays under this many bytes. glibc's malloc
# reuses a freed block only below its mmap threshold, which adapts up to 32 MB; every larger tensor is a
# fresh mmap that the kernel page-faults and zeroes on each allocation, twice per layer. Measured on
# ModernBERT-base scoring (`bench/chunk_ab.py --model modernbert --tokens 16384 2730`): 15k minor faults
# per call instead of 534k, 1.11x faster. MiniLM's widest whole activation is [T, 384]: unchanged.
CPU_ACTIVATION_BYTES = 24 << 20


def default_max_tokens(enc: Encoder) -> int:
    """The scorer's default token budget per batch for this encoder on its device (see above)."""
    p = next(enc.parameters())
    if p.device.type != "cpu":
        return GPU_MAX_TOKENS
    per_token = enc.widest_features() * max(p.element_size(), 4)   # float32 activations at least
    return max(1, min(GPU_MAX_TOKENS, CPU_ACTIVATION_BYTES // per_token))


def pick_device(name: str | None = "cpu") -> torch.device:
    """"auto": CUDA when available, else CPU; anything else as torch names it ("cpu", "cuda:1")."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise TinyrmError(f"--device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TinyrmError(f"--device {name!r}: this torch build or machine has no CUDA device")
    return dev


def pair_logit(first: torch.Tensor, second: torch.Tensor, mode: str) -> torch.Tensor:
    """The one rule that turns a model's two outputs for a pair into the log-odds that response a beats b.
    pairwise: first = z_ab (a shown as Choice 0), second = z_ba (b shown first); both orders averaged,
    (z_ab − z_ba) / 2, which cancels any preference for a position. pointwise: r_a − r_b."""
    return (first - second) / 2 if mode == "pairwise" else first - second


class RewardModel:
    """A cloze reward model: an encoder (with merged adapters) plus its prompt settings."""

    def __init__(self, enc: Encoder, mode: str = "pairwise", prefix: str = "domain", max_len: int = 512,
                 max_tokens: int | None = None, progress: bool = False, truncate: str = "end"):
        self.enc, self.cloze = enc, Cloze.for_encoder(enc, mode, prefix, max_len, truncate)
        self.mode, self.prefix, self.max_len, self.truncate = mode, prefix, self.cloze.max_len, truncate
        # tokens per packed batch (a longer sequence still gets a batch of its own); None: default_max_tokens
        self.max_tokens, self.progress = max_tokens or default_max_tokens(enc), progress
        # pointwise only: per-domain slopes of reward on log length to remove (calibrate.py); None = raw
        self.length_slopes: dict[str, float] | None = None
        # pointwise only: a relevance floor (relevance.py) and the plain base encoder it reads; None = none
        self.relevance: dict | None = None
        self.embedder: SentenceEmbedder | None = None
        self.device = next(enc.parameters()).device

    # ---- loading ----
    @classmethod
    def load(cls, path: str | Path, device=None, dtype=None, **kw) -> "RewardModel":
        """A run folder (its best checkpoint), a checkpoint folder holding adapter.json, an exported model
        folder (tinyrm.json beside config.json), or a plain encoder folder (an untrained cloze model: a
        zero-shot baseline)."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such model folder (a run folder, a checkpoint or an export)")
        # best.old/: a kill between the two renames of a best/ swap leaves the previous best there
        names = ("best", "best.old", "last", "last.old", ".")
        ckpt = next((path / n for n in names if (path / n / "adapter.json").is_file()), None)
        if ckpt is not None:
            return cls._load_checkpoint(ckpt, device, dtype, **kw)
        if (path / "tinyrm.json").is_file():
            s = read_json(path / "tinyrm.json", "")
            if s.get("format") != "tinyrm-model":
                raise CheckpointError(f"{path / 'tinyrm.json'}: format {s.get('format')!r} is not a merged model "
                                      "(a PEFT export loads with peft onto its base; `tinyrm export --format hf` "
                                      "writes one tinyrm loads)")
            rm = cls(load_encoder(path, dtype=dtype, device=device), **prompt_settings(s, kw, str(path)))
            rm.length_slopes = s.get("length_slopes") if rm.mode == "pointwise" else None
            if rm.mode == "pointwise" and s.get("relevance"):   # the base encoder travels in a subfolder
                rm.relevance = s["relevance"]
                rm.embedder = SentenceEmbedder(path / RELEVANCE_ENCODER, s["relevance"]["max_len"], device=rm.device)
            return rm
        return cls(load_encoder(path, dtype=dtype, device=device), **kw)

    @classmethod
    def _load_checkpoint(cls, ckpt: Path, device, dtype, **kw) -> "RewardModel":
        meta = read_json(ckpt / "adapter.json", "")
        train = meta.get("train", {}) if isinstance(meta, dict) else None
        if not isinstance(train, dict) or not all(isinstance(meta.get(k, ""), str) for k in ("base", "base_path")):
            raise CheckpointError(f"{ckpt / 'adapter.json'}: key 'train' must be an object and 'base' a path")
        base = Path(str(train.get("model") or meta.get("base", "")))
        if not (base / "config.json").is_file() and meta.get("base_path"):
            base = Path(meta["base_path"])     # the folder as training resolved it, from another directory
        enc = load_encoder(base, dtype=dtype, device=device)
        load_adapter(enc, ckpt / "adapter.safetensors", base_hash=meta.get("base_hash"))
        enc.eval()  # adapters were just added in training mode; merging is for inference
        merge_all(enc)
        rm = cls(enc, **prompt_settings(train, kw, str(ckpt)))
        rm.length_slopes = load_slopes(ckpt) if rm.mode == "pointwise" else None
        try:
            rm.relevance = load_relevance(ckpt) if rm.mode == "pointwise" else None
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        if rm.relevance:
            rm.embedder = SentenceEmbedder(base, rm.relevance["max_len"], device=rm.device)
        return rm

    # ---- batched inference ----
    @torch.inference_mode()
    def _logits(self, examples) -> torch.Tensor:
        """[N] answer-logit differences (token '0' − '1', or 'yes' − 'no'), in the input order."""
        was_training = self.enc.training
        self.enc.eval()
        vocab = torch.tensor(self.cloze.answer_ids, device=self.device)
        out = torch.empty(len(examples))
        batches = token_batches([len(e.input_ids) for e in examples], self.max_tokens)
        for b in tqdm(batches, desc="scoring", unit="batch", disable=not self.progress):
            lg = mask_logits(self.enc, [examples[i] for i in b], vocab).float()
            out[torch.tensor(b)] = (lg[:, 0] - lg[:, 1]).cpu()
        self.enc.train(was_training)
        return out

    def pairwise_logits(self, prompts, responses_a, responses_b, domains=None):
        """Both orders: (z_ab, z_ba), each [N], the log-odds that Choice 0 is the better response."""
        if self.mode != "pairwise":
            raise TinyrmError("pairwise_logits needs a pairwise model; this one is pointwise")
        domains = domains or [None] * len(prompts)
        exs = []
        for q, a, b, d in zip(prompts, responses_a, responses_b, domains, strict=True):
            exs += [self.cloze.pairwise(q, a, b, d), self.cloze.pairwise(q, b, a, d)]
        z = self._logits(exs)
        return z[0::2], z[1::2]

    def score(self, prompts, responses, domains=None) -> list[float]:
        """Pointwise rewards logit('yes') − logit('no'), one per (prompt, response), prompted with each
        domain's prefix where the model has one; minus slope · log(1 + characters) when the model carries
        a length correction (the slope of the given domain, or the pooled one "*" without a domain); plus
        β · min(0, cos(prompt, response) − τ) when it carries a relevance floor (relevance.py; the same
        choice of domain)."""
        if self.mode != "pointwise":
            raise TinyrmError("score() needs a pointwise model; a pairwise model only compares (use compare())")
        if domains is not None and len(domains) != len(prompts):
            raise TinyrmError(f"score(): {len(prompts)} prompts but {len(domains)} domains")
        doms = domains if domains is not None else [None] * len(prompts)   # a "criterion" prefix reads them
        r = self._logits([self.cloze.pointwise(q, r, d) for q, r, d in zip(prompts, responses, doms, strict=True)])
        return self.add_terms(r, prompts, responses, domains).tolist()

    def add_terms(self, raw: torch.Tensor, prompts, responses, domains=None) -> torch.Tensor:
        """[N] float32 raw rewards (the cloze logits alone) -> the rewards score() returns: the length and
        relevance terms the model carries, added as score() adds them. Rewards scored before (training's
        own validation pass) take the same form here without a second forward."""
        r = raw
        if self.length_slopes:
            r = r - length_term(self.length_slopes, responses, domains).float()
        if self.relevance:       # + β_d·min(0, cos(prompt, response) − τ_d): only below the floor
            r = r + relevance_term(self.relevance, self.embedder.cosines(prompts, responses), domains).float()
        return r

    def compare_outputs(self, prompts, responses_a, responses_b, domains=None,
                        raw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's two outputs per pair, for pair_logit: pairwise (z_ab, z_ba), pointwise (r_a, r_b).
        Pointwise `raw` [2, N]: the raw rewards of a and of b, scored before; only the terms are added."""
        if self.mode == "pairwise":
            return self.pairwise_logits(prompts, responses_a, responses_b, domains)
        qs, rs, ds = list(prompts) * 2, list(responses_a) + list(responses_b), domains and domains * 2
        r = torch.tensor(self.score(qs, rs, ds)) if raw is None else self.add_terms(raw.reshape(-1), qs, rs, ds)
        n = len(prompts)
        return r[:n], r[n:]

    def compare_logits(self, prompts, responses_a, responses_b, domains=None, raw=None) -> torch.Tensor:
        """[N] log-odds that a beats b (pair_logit of the model's outputs; `raw` as compare_outputs takes it)."""
        return pair_logit(*self.compare_outputs(prompts, responses_a, responses_b, domains, raw), self.mode)

    def compare(self, prompts, responses_a, responses_b, domains=None) -> list[float]:
        """Probability that responses_a[i] is better than responses_b[i]."""
        return torch.sigmoid(self.compare_logits(prompts, responses_a, responses_b, domains)).tolist()

    # ---- ranking and RL reward functions (rank.py) ----
    def rank(self, prompt: str, candidates, domain: str | None = None) -> tuple[list[int], list[float]]:
        """(order, scores): candidate indices best first; pointwise scores are rewards, pairwise ones mean
        log-odds against the other candidates (n(n-1) sequences; see rank.py)."""
        return rank_candidates(self, prompt, candidates, domain)

    def as_reward_func(self):
        """A TRL-style reward function `(prompts, completions, **kw) -> list[float]` (pointwise models)."""
        return reward_func(self)
