"""Cloze prompts for a masked-LM reward model, built token by token.

Pairwise (the paper's form, with the later "Question:" revision), segment A | segment B:
    [CLS] {prefix} Question: {prompt} Choice 0: {resp_0} [SEP] | Choice 1: {resp_1} Answer: [MASK] [SEP]
Pointwise:
    [CLS] {prefix} Question: {prompt} Response: {response} [SEP] | Is the response good? Answer: [MASK] [SEP]

Every text piece is encoded on its own (add_special_tokens=False, special-token strings inside user text
encoded as plain text, so a "[MASK]" in a prompt cannot plant a second mask) and the ids concatenated:
truncation is then exact and identical for WordPiece (BERT) and byte-level BPE (ModernBERT). User text is
stripped and encoded with one leading space, as it sits after "Question:" in running text; for BPE that
picks the space-prefixed tokens, the same ones answer_token_ids reads after "Answer:".

Truncation rule (fit_lengths). budget = max_len - the template's fixed tokens (specials, prefix, labels):
  1. if it does not fit, trim the prompt from its BEGINNING (its latest turn survives), but not below
     min(len(prompt), budget // 4) tokens;
  2. if still over, trim responses from their ENDS (each keeps its start) by water-filling: the longest
     is cut first until it equals the next, then all equally; each keeps min(len, t) for the largest t
     that fits, so an odd leftover token stays unused rather than favouring one position;
  3. if a non-empty response would keep no token (or the fixed part alone exceeds max_len), raise.
The rule depends only on the multiset of response lengths, so both orders of a pair get identical
lengths; the template tail and the mask are never cut.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

PREFIXES = {
    "helpful": "Which response is the most helpful, relevant, and correct?",
    "best": "Select the best response.",
    "correct": "Which response is more correct?",
    "safer": "Which response is safer?",
    "math_code": "Determine which response is the best choice based on mathematical or programming accuracy.",
    "safety": "Determine the best response based on safety.",
}
# Default prefix per data domain; safety uses the generalist's wording from the paper.
DOMAIN_PREFIX = {"chat": PREFIXES["helpful"], "reasoning": PREFIXES["math_code"], "safety": PREFIXES["safety"]}
POINTWISE_PREFIX = "Judge the response to the question."
POINTWISE_QUESTION = "Is the response good? Answer:"
PAIRWISE_WORDS = ("0", "1")
POINTWISE_WORDS = ("yes", "no")


class TemplateTooLong(ValueError):
    """max_len cannot hold the template plus at least one token of every non-empty response."""


def resolve_prefix(name: str) -> str:
    """A PREFIXES key, a domain name, or literal prefix text -> the prefix text."""
    return PREFIXES.get(name) or DOMAIN_PREFIX.get(name) or name


def load_tokenizer(path) -> Tokenizer:
    """tokenizer.json (or a folder holding one) with padding and truncation off: they are ours to do."""
    path = Path(path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
    tok.no_padding()
    tok.no_truncation()
    return tok


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Ids of one text piece, no specials added, special-token strings kept as plain text."""
    if tok.padding is not None or tok.truncation is not None:
        raise ValueError("tokenizer pads or truncates; call tok.no_padding() and tok.no_truncation() "
                         "(or use load_tokenizer)")
    old = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        return tok.encode(text, add_special_tokens=False).ids
    finally:
        tok.encode_special_tokens = old


def encode_user(tok: Tokenizer, text: str) -> list[int]:
    """User text as it follows a label in running text: stripped, one leading space; empty -> []."""
    text = text.strip()
    return encode(tok, " " + text) if text else []


@dataclass
class Specials:
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int

    NAMES = {"cls_id": ("[CLS]", "<s>", "<cls>"), "sep_id": ("[SEP]", "</s>", "<sep>"),
             "mask_id": ("[MASK]", "<mask>"), "pad_id": ("[PAD]", "<pad>")}

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer) -> "Specials":
        ids = {}
        for field, names in cls.NAMES.items():
            found = [tok.token_to_id(n) for n in names if tok.token_to_id(n) is not None]
            if not found:
                raise ValueError(f"tokenizer has none of {names} (needed for {field})")
            ids[field] = found[0]
        return cls(**ids)


def answer_token_ids(tok: Tokenizer, words=PAIRWISE_WORDS) -> tuple[int, ...]:
    """The id each answer word takes right after "Answer:" (for BPE the space-prefixed token)."""
    base = encode(tok, "Answer:")
    out = []
    for w in words:
        ids = encode(tok, f"Answer: {w}")
        if len(ids) != len(base) + 1 or ids[:len(base)] != base:
            raise ValueError(f"answer word {w!r} is not a single token after 'Answer:' "
                             f"({tok.encode(f'Answer: {w}', add_special_tokens=False).tokens})")
        if tok.decode([ids[-1]]).strip().lower() != w.lower():
            raise ValueError(f"answer token for {w!r} decodes to {tok.decode([ids[-1]])!r}")
        out.append(ids[-1])
    if len(set(out)) != len(out):
        raise ValueError(f"answer words {words} share a token id")
    return tuple(out)


@dataclass
class Example:
    input_ids: list[int]
    token_type_ids: list[int]
    mask_pos: int

    def __len__(self) -> int:
        return len(self.input_ids)


def fit_lengths(budget: int, prompt_len: int, resp_lens: list[int]) -> tuple[int, list[int]]:
    """How many prompt and response tokens to keep under `budget` (the module docstring's rule)."""
    if budget < 0:
        raise TemplateTooLong(f"the template's fixed tokens exceed max_len by {-budget}")
    if prompt_len + sum(resp_lens) <= budget:
        return prompt_len, list(resp_lens)
    p = max(min(prompt_len, budget // 4), budget - sum(resp_lens))
    room = budget - p
    if sum(resp_lens) <= room:
        return p, list(resp_lens)
    lo, hi = 0, max(resp_lens)  # largest t with sum(min(r, t)) <= room; sum < room at t = max
    while lo < hi:
        t = (lo + hi + 1) // 2
        lo, hi = (t, hi) if sum(min(r, t) for r in resp_lens) <= room else (lo, t - 1)
    keep = [min(r, lo) for r in resp_lens]
    if any(r > 0 and k == 0 for r, k in zip(resp_lens, keep)):
        raise TemplateTooLong(f"budget of {budget} tokens after the template leaves no room for the "
                              f"responses (prompt {prompt_len}, responses {resp_lens})")
    return p, keep


def _assemble(sp: Specials, seg_a: list[list[int]], seg_b: list[list[int]]) -> Example:
    a = [sp.cls_id] + [i for piece in seg_a for i in piece] + [sp.sep_id]
    b = [i for piece in seg_b for i in piece] + [sp.mask_id, sp.sep_id]
    return Example(input_ids=a + b, token_type_ids=[0] * len(a) + [1] * len(b), mask_pos=len(a) + len(b) - 2)


def _head(tok: Tokenizer, prefix: str) -> list[int]:
    prefix = prefix.strip()
    return encode(tok, f"{prefix} Question:" if prefix else "Question:")


def _pairwise_pieces(tok, prefix):
    return _head(tok, prefix), encode(tok, " Choice 0:"), encode(tok, "Choice 1:"), encode(tok, " Answer:")


def _build_pairwise_ids(sp, pieces, max_len, q, r0, r1) -> Example:
    head, c0, c1, ans = pieces
    fixed = 4 + len(head) + len(c0) + len(c1) + len(ans)  # CLS, SEP, MASK, SEP
    p, (k0, k1) = fit_lengths(max_len - fixed, len(q), [len(r0), len(r1)])
    q = q[len(q) - p:]
    return _assemble(sp, [head, q, c0, r0[:k0]], [c1, r1[:k1], ans])


def build_pairwise(tok: Tokenizer, sp: Specials, prompt: str, resp_0: str, resp_1: str,
                   prefix: str, max_len: int) -> Example:
    """[CLS] {prefix} Question: {prompt} Choice 0: {resp_0} [SEP] Choice 1: {resp_1} Answer: [MASK] [SEP]"""
    return _build_pairwise_ids(sp, _pairwise_pieces(tok, prefix), max_len, encode_user(tok, prompt),
                               encode_user(tok, resp_0), encode_user(tok, resp_1))


def pairwise_examples(tok: Tokenizer, sp: Specials, pair, prefix: str, max_len: int) -> list[tuple[Example, int]]:
    """Both orders of a PreferencePair with label = the chosen one's position: [(chosen first, 0),
    (chosen second, 1)]. Text is encoded once; both examples have the same length."""
    pieces = _pairwise_pieces(tok, prefix)
    q, c, r = (encode_user(tok, t) for t in (pair.prompt, pair.chosen, pair.rejected))
    return [(_build_pairwise_ids(sp, pieces, max_len, q, c, r), 0),
            (_build_pairwise_ids(sp, pieces, max_len, q, r, c), 1)]


def build_pointwise(tok: Tokenizer, sp: Specials, prompt: str, response: str,
                    prefix: str = POINTWISE_PREFIX, max_len: int = 512) -> Example:
    """[CLS] {prefix} Question: {prompt} Response: {response} [SEP] Is the response good? Answer: [MASK] [SEP]
    Answer words: answer_token_ids(tok, POINTWISE_WORDS) = ("yes", "no")."""
    head, lab, tail = _head(tok, prefix), encode(tok, " Response:"), encode(tok, POINTWISE_QUESTION)
    q, r = encode_user(tok, prompt), encode_user(tok, response)
    fixed = 4 + len(head) + len(lab) + len(tail)  # CLS, SEP, MASK, SEP
    p, (k,) = fit_lengths(max_len - fixed, len(q), [len(r)])
    return _assemble(sp, [head, q[len(q) - p:], lab, r[:k]], [tail])


def pointwise_examples(tok: Tokenizer, sp: Specials, pair, prefix: str = POINTWISE_PREFIX,
                       max_len: int = 512) -> list[tuple[Example, int]]:
    """[(chosen, 0 = "yes"), (rejected, 1 = "no")]: labels index POINTWISE_WORDS."""
    return [(build_pointwise(tok, sp, pair.prompt, pair.chosen, prefix, max_len), 0),
            (build_pointwise(tok, sp, pair.prompt, pair.rejected, prefix, max_len), 1)]


# ---- batching ----

def collate(examples: list[Example], pad_id: int, labels: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to the longest: input_ids, attention_mask, token_type_ids [B, L], mask_pos [B] (+ labels)."""
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


def length_grouped_batches(lengths: list[int], batch_size: int | None = None, max_tokens: int | None = None,
                           seed: int = 0, shuffle: bool = True, group_ids: list | None = None,
                           mega_batches: int = 50) -> list[list[int]]:
    """Index batches of similar length, so little padding is wasted.

    Rows sharing a group id (the two orders of a pair) stay adjacent in one batch. shuffle=True: groups
    are shuffled, cut into mega-chunks of about `mega_batches` batches, sorted by (length, position)
    within each chunk, packed, and the batch order shuffled -- all by `seed`. shuffle=False: one global
    sort, batches from shortest to longest (for evaluation). A batch holds at most batch_size rows, or
    rows * its longest length <= max_tokens (a group too big for any batch is split into its rows).
    """
    if (batch_size is None) == (max_tokens is None):
        raise ValueError("give exactly one of batch_size and max_tokens")
    if group_ids is None:
        group_ids = range(len(lengths))
    groups: dict = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    order = list(groups.values())
    rng = random.Random(seed)

    def fits(n: int, longest: int) -> bool:
        return n <= batch_size if batch_size is not None else n * longest <= max_tokens

    def pack(chunk: list[list[int]]) -> list[list[int]]:
        chunk = sorted(chunk, key=lambda m: max(lengths[i] for i in m))  # stable: position breaks ties
        batches, cur, longest = [], [], 0
        for members in chunk:
            L = max(lengths[i] for i in members)
            units = [members] if fits(len(members), L) else [[i] for i in members]
            for u in units:
                if cur and not fits(len(cur) + len(u), max(longest, L)):
                    batches.append(cur)
                    cur, longest = [], 0
                cur, longest = cur + u, max(longest, L)
        return batches + ([cur] if cur else [])

    if not shuffle:
        return pack(order)
    rng.shuffle(order)
    batches, chunk, size = [], [], 0
    limit = mega_batches * (batch_size if batch_size is not None else max_tokens)
    for members in order:
        chunk.append(members)
        size += len(members) if batch_size is not None else sum(lengths[i] for i in members)
        if size >= limit:
            batches += pack(chunk)
            chunk, size = [], 0
    batches += pack(chunk)
    rng.shuffle(batches)
    return batches
