"""The two sides of each benchmark comparison: tinyrm against the obvious transformers code (scoring:
RewardModel vs RefScorer) and against transformers + peft DoRA (training: TinyrmTrainer vs RefTrainer),
plus the alternated scoring comparison itself. Device-agnostic; see bench/README.md for the method.
"""
from __future__ import annotations

from pathlib import Path

import torch

from flops import Shape, scoring_flops
from inputs import build_pair_examples, build_point_examples  # also put the repo root on sys.path
from machine import alternate, median

MINILM_TARGETS = ["query", "key", "value", "dense"]      # the default recipe's targets
MODERNBERT_TARGETS = ["Wqkv", "Wo", "Wi", "dense"]       # the same parts of ModernBERT (no decoder)


# --------------------------------------------------------------------------- the reference model

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

def pair_probability(z: torch.Tensor, mode: str) -> torch.Tensor:
    """Adjacent logits -> P(a beats b): pairwise (z_ab, z_ba) -> σ((z_ab − z_ba) / 2), both orders
    averaged; pointwise (r_a, r_b) -> σ(r_a − r_b). The same rule as RewardModel.compare_logits."""
    return torch.sigmoid((z[0::2] - z[1::2]) / (2 if mode == "pairwise" else 1))


def tinyrm_score(rm, pairs=None, examples=None) -> torch.Tensor:
    """P(a beats b) per pair. Text in: RewardModel.compare (tokenises, sorts by length, packs, head at the
    mask for the two answer rows). Examples in: the same minus tokenisation (RewardModel._logits)."""
    if examples is None:
        return torch.tensor(rm.compare([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]))
    return pair_probability(rm._logits(examples), rm.mode)



def collate(examples: list, pad_id: int, labels: list[int] | None = None) -> dict[str, torch.Tensor]:
    """The reference side's input: right-pad to the longest: input_ids, attention_mask, token_type_ids [B, L], mask_pos [B] (+ labels)."""
    L = max(len(e) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(examples), L), dtype=torch.long)
    tt = torch.zeros((len(examples), L), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids)
        att[i, :n] = 1
        tt[i, :n] = torch.tensor(e.token_type_ids)
    out = {"input_ids": ids, "attention_mask": att, "token_type_ids": tt,
           "mask_pos": torch.tensor([e.mask_pos for e in examples], dtype=torch.long)}
    if labels is not None:
        out["labels"] = torch.tensor(labels, dtype=torch.long)
    return out

class RefScorer:
    """The obvious transformers implementation: padded batches of `batch` sequences in dataset order,
    the full MLM head over every position, then the mask position's two answer logits."""

    def __init__(self, model, tok, sp, answer_ids, prefix: str, max_len: int, batch: int = 8, arch="bert",
                 mode: str = "pairwise"):
        self.model, self.tok, self.sp, self.prefix, self.max_len = model, tok, sp, prefix, max_len
        self.batch, self.arch, self.mode = batch, arch, mode
        self.device = next(model.parameters()).device
        self.answer = torch.tensor(answer_ids, device=self.device)

    @torch.inference_mode()
    def logits(self, examples) -> torch.Tensor:
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
            examples = _examples(self.mode, self.tok, self.sp, pairs, self.prefix, self.max_len)
        return pair_probability(self.logits(examples), self.mode)


def _examples(mode, tok, sp, pairs, prefix, max_len):
    if mode == "pairwise":
        return build_pair_examples(tok, sp, pairs, prefix, max_len)
    return build_point_examples(tok, sp, pairs, max_len)


# --------------------------------------------------------------------------- training: the two sides

def _bt(diff):
    return torch.nn.functional.softplus(-diff).mean()


class TinyrmTrainer:
    """tinyrm's DoRA step: add_dora + freeze_layers, packed forward (no padding), head at the mask for the
    two answer rows only, Bradley–Terry loss, backward, AdamW."""

    def __init__(self, path, rank, alpha, targets, frozen, device="cpu", autocast_dtype=None, lr=5e-4):
        from tinyrm import load_encoder
        from tinyrm.dora import add_dora, freeze_layers
        from tinyrm.tokens import PAIRWISE_WORDS, Specials, answer_token_ids
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
        from tinyrm.tokens import PAIRWISE_WORDS, Specials, answer_token_ids, load_tokenizer
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
                  device="cpu", dtype=torch.float32, mode: str = "pairwise") -> dict:
    """tinyrm RewardModel vs RefScorer on the same pairs, alternated, medians.

    With `pairs` (text) both sides go text -> probability (tokenisation timed on both sides, the same
    build_pairwise / build_pointwise code); with `examples` (pre-tokenised, the two sequences of a pair
    adjacent) only the model work. mode: "pairwise" (both orders, the paper's form) or "pointwise" (one
    sequence per response, the default recipe's form)."""
    import gc
    from tinyrm import load_encoder
    from tinyrm.scorer import RewardModel
    enc = load_encoder(path, dtype=dtype, device=device)
    rm = RewardModel(enc, mode=mode, max_len=max_len)
    ref = load_reference(path, arch, device=device, dtype=dtype, like=enc)
    cz = rm.cloze                                   # the scorer's own prompt settings, shared by both sides
    prefix = cz.prefix_for(None)
    scorer = RefScorer(ref, enc.tokenizer, cz.sp, cz.answer_ids, prefix, cz.max_len, batch, arch, mode)
    exs = examples if examples is not None else _examples(mode, enc.tokenizer, cz.sp, pairs, prefix, cz.max_len)
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
           "text_in": examples is None, "batch": batch, "dtype": str(dtype).removeprefix("torch."), "mode": mode,
           "probs": {side: outs[side][0].tolist() for side in outs}}   # first rep's P(a beats b) per pair
    for side in ("tinyrm", "ref"):
        t = median(times[side])
        res[side] = {"s": t, "pairs_per_s": n_pairs / t, "flops_per_s": flops / t}
    del enc, rm, ref, scorer
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return res
