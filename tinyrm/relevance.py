"""A relevance floor beside a pointwise reward: r'(x, y) = r(x, y) + β_d · min(0, cos(e(x), e(y)) − τ_d).

A cloze reward trained on preference pairs never sees an answer to another question, so it does not check
that an answer addresses its prompt: the default MiniLM prefers another prompt's good answer to the
prompt's own about half the time. The base encoder can: all-MiniLM-L6-v2 was trained so that the mean of
its last hidden states puts a question and its answer close together. e(·) is that embedding, from the
frozen base encoder without adapters (training cannot wear it away), of the prompt and of the response
each alone. The term is a floor, not a bonus: an answer whose cosine with its prompt reaches τ_d is not
charged, however much of the question it repeats (a linear bonus rewarded restating the question and
length; docs/decisions.md 1.37), and one below it pays β_d per unit it falls short.

After training, on the kept checkpoint, τ_d and β_d are fitted on TRAINING rows only (never validation,
never RewardBench; relevance_fit.py): per domain, `relevance_fit_pairs` preference pairs and relevance
pairs made from `relevance_fit_made` of them (a prompt's chosen answer against another prompt's,
augment.py). τ_d is the `relevance_floor` quantile of cos(prompt, chosen) over those preference pairs;
β_d ≥ 0 maximises the likelihood of σ(Δr + β_d·Δf) over all of the domain's rows, Δr the kept reward's
difference. "*" is fitted over every row, for a caller
without a domain. The result is stored beside the checkpoint (FILE) and the scorer adds the term.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .batching import token_batches
from .encoder import packed_from_lists
from .tokens import encode, load_tokenizer
from .weights import load_encoder

FILE = "relevance.json"   # beside adapter.json in a checkpoint folder


class SentenceEmbedder:
    """Mean-pooled, L2-normalised last hidden states of the plain base encoder, over [CLS] text [SEP] cut
    to max_len tokens (as sentence-transformers pools them). Each call embeds a text once, however often
    it appears (a prompt shared by its candidates); nothing is kept between calls."""

    def __init__(self, folder: str | Path, max_len: int, max_tokens: int = 8192, device=None):
        self.enc, self.tok = load_encoder(folder, device=device).eval(), load_tokenizer(folder)
        self.cls, self.sep = self.tok.token_to_id("[CLS]"), self.tok.token_to_id("[SEP]")
        if self.cls is None or self.sep is None:
            raise ValueError(f"{folder}: the relevance floor needs a BERT-style tokenizer with [CLS] and [SEP]")
        self.max_len, self.max_tokens, self.tokens = max_len, max_tokens, 0     # tokens: read so far, all calls
        self.device = next(self.enc.parameters()).device

    def ids(self, text: str) -> list[int]:
        return [self.cls] + encode(self.tok, text)[: self.max_len - 2] + [self.sep]

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:  # -> [N, H] float32 on the CPU
        uniq = sorted(set(texts))
        seqs, out = [self.ids(t) for t in uniq], {}
        self.tokens += sum(map(len, seqs))
        for b in token_batches([len(s) for s in seqs], self.max_tokens):
            lens = torch.tensor([len(seqs[i]) for i in b], device=self.device)
            h = self.enc.encode_packed(packed_from_lists([seqs[i] for i in b], device=self.device)).float()  # [T, H]
            seg = torch.repeat_interleave(torch.arange(len(b), device=self.device), lens)   # [T] row of each token
            mean = torch.zeros(len(b), h.shape[1], device=self.device).index_add_(0, seg, h) / lens[:, None]
            for i, v in zip(b, torch.nn.functional.normalize(mean, dim=1).cpu()):          # [B, H]
                out[uniq[i]] = v
        return torch.stack([out[t] for t in texts]) if texts else torch.empty(0, self.enc.config.hidden_size)

    def cosines(self, prompts: list[str], responses: list[str]) -> torch.Tensor:  # -> [N]
        e, n = self(list(prompts) + list(responses)), len(prompts)
        return (e[:n] * e[n:]).sum(1)


def shortfall(cos: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """min(0, cos − τ): zero at or above the floor, negative below it."""
    return (cos - floor).clamp(max=0)


def term(fitted: dict, cos: torch.Tensor, domains) -> torch.Tensor:
    """[N] β_d · min(0, cos − τ_d), each row with its domain's values ("*" for None or an unknown domain)."""
    keys = [d if d in fitted["weights"] else "*" for d in (domains or [None] * len(cos))]
    floor = torch.tensor([fitted["floors"][k] for k in keys])
    return torch.tensor([fitted["weights"][k] for k in keys]) * shortfall(cos, floor)


def load(folder: str | Path) -> dict | None:
    f = Path(folder) / FILE
    if not f.is_file():
        return None
    try:
        d = json.loads(f.read_text())
        out = {k: {str(a): float(b) for a, b in d[k].items()} for k in ("floors", "weights")}
        out["quantile"], out["max_len"] = float(d["quantile"]), int(d["max_len"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{f}: not a relevance file ({type(e).__name__}: {e})") from None
    if "*" not in out["weights"] or set(out["weights"]) != set(out["floors"]):
        raise ValueError(f"{f}: 'floors' and 'weights' must name the same domains, '*' among them")
    return out
