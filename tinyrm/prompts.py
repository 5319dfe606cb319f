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

Which tokens a cut response keeps (`truncate`, cut_response): "end" keeps its first k tokens; "middle"
keeps its opening and its close, k - k // 3 - len(gap) tokens from the start, a gap marker (" ...") and
the last k // 3, so a reward trained at a short max_len still reads a worked answer's final line and a
reply's conclusion. Both keep exactly k tokens: the lengths above, and the cost, do not change.
"""
from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

from .errors import TinyrmError
from .tokens import PAIRWISE_WORDS, POINTWISE_WORDS, Specials, answer_token_ids, encode, encode_user

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
# prefix = "criterion": each domain's criterion, phrased for one response (pointwise); the paper's domain
# prefixes ask "which response", which fits pairwise prompts only. Pairwise "criterion" = "domain".
CRITERION_PREFIX = {"chat": "Judge whether the response is helpful, relevant, and correct.",
                    "reasoning": "Judge the response based on mathematical or programming accuracy.",
                    "safety": "Judge the response based on safety."}
POINTWISE_QUESTION = "Is the response good? Answer:"
TRUNCATE = ("end", "middle")   # which part of a response that must be cut is dropped (cut_response)
GAP = " ..."                   # stands where "middle" dropped tokens, so the model can tell the seam
MIN_MIDDLE = 16                # a response cut to fewer tokens keeps its start only: a close too short to read


# A conversation before the response, rendered as the prompt text (one rule for every data format and
# for callers such as TRL that pass message lists): a single user turn is its text, else `Role: text` blocks.
_ROLES = {"user": "User", "human": "User", "assistant": "Assistant", "system": "System"}


def render_turns(turns: list[tuple[str, str]]) -> str:
    """[(role, text)] -> prompt text, by the module's one rendering rule (see the docstring)."""
    turns = [(_ROLES.get(r.lower(), r.capitalize()), t.strip()) for r, t in turns]
    if len(turns) == 1 and turns[0][0] == "User":
        return turns[0][1]
    return "\n\n".join(f"{r}: {t}" for r, t in turns)


class TemplateTooLong(TinyrmError):
    """max_len cannot hold the template plus at least one token of every non-empty response."""


def resolve_prefix(name: str) -> str:
    """A PREFIXES key, a domain name, or literal prefix text -> the prefix text."""
    return PREFIXES.get(name) or DOMAIN_PREFIX.get(name) or name


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


def cut_response(ids: list[int], k: int, gap: list[int] | None) -> list[int]:
    """The k tokens a response keeps: its first k (gap None, truncate = "end"), or its opening, the gap
    ids and its last k // 3 (truncate = "middle"; only where the response is cut to MIN_MIDDLE or more)."""
    if k >= len(ids):
        return ids
    if gap is None or k < MIN_MIDDLE:
        return ids[:k]
    tail = k // 3
    return ids[:k - tail - len(gap)] + gap + ids[len(ids) - tail:]


def gap_ids(tok: Tokenizer, truncate: str) -> list[int] | None:
    if truncate not in TRUNCATE:
        raise ValueError(f"truncate must be one of {', '.join(map(repr, TRUNCATE))}, got {truncate!r}")
    return encode(tok, GAP) if truncate == "middle" else None


def _assemble(sp: Specials, seg_a: list[list[int]], seg_b: list[list[int]]) -> Example:
    a = [sp.cls_id] + [i for piece in seg_a for i in piece] + [sp.sep_id]
    b = [i for piece in seg_b for i in piece] + [sp.mask_id, sp.sep_id]
    return Example(input_ids=a + b, token_type_ids=[0] * len(a) + [1] * len(b), mask_pos=len(a) + len(b) - 2)


def _head(tok: Tokenizer, prefix: str) -> list[int]:
    prefix = prefix.strip()
    return encode(tok, f"{prefix} Question:" if prefix else "Question:")


def _pairwise_pieces(tok, prefix):
    return _head(tok, prefix), encode(tok, " Choice 0:"), encode(tok, "Choice 1:"), encode(tok, " Answer:")


def _build_pairwise_ids(sp, pieces, max_len, q, r0, r1, gap=None) -> Example:
    head, c0, c1, ans = pieces
    fixed = 4 + len(head) + len(c0) + len(c1) + len(ans)  # CLS, SEP, MASK, SEP
    p, (k0, k1) = fit_lengths(max_len - fixed, len(q), [len(r0), len(r1)])
    q = q[len(q) - p:]
    return _assemble(sp, [head, q, c0, cut_response(r0, k0, gap)], [c1, cut_response(r1, k1, gap), ans])


def build_pairwise(tok: Tokenizer, sp: Specials, prompt: str, resp_0: str, resp_1: str,
                   prefix: str, max_len: int, truncate: str = "end") -> Example:
    """[CLS] {prefix} Question: {prompt} Choice 0: {resp_0} [SEP] Choice 1: {resp_1} Answer: [MASK] [SEP]"""
    return _build_pairwise_ids(sp, _pairwise_pieces(tok, prefix), max_len, encode_user(tok, prompt),
                               encode_user(tok, resp_0), encode_user(tok, resp_1), gap_ids(tok, truncate))


def pairwise_examples(tok: Tokenizer, sp: Specials, pair, prefix: str, max_len: int,
                      truncate: str = "end") -> list[tuple[Example, int]]:
    """Both orders of a PreferencePair with label = the chosen one's position: [(chosen first, 0),
    (chosen second, 1)]. Text is encoded once; both examples have the same length."""
    pieces, gap = _pairwise_pieces(tok, prefix), gap_ids(tok, truncate)
    q, c, r = (encode_user(tok, t) for t in (pair.prompt, pair.chosen, pair.rejected))
    return [(_build_pairwise_ids(sp, pieces, max_len, q, c, r, gap), 0),
            (_build_pairwise_ids(sp, pieces, max_len, q, r, c, gap), 1)]


def build_pointwise(tok: Tokenizer, sp: Specials, prompt: str, response: str,
                    prefix: str = POINTWISE_PREFIX, max_len: int = 512, truncate: str = "end") -> Example:
    """[CLS] {prefix} Question: {prompt} Response: {response} [SEP] Is the response good? Answer: [MASK] [SEP]
    Answer words: answer_token_ids(tok, POINTWISE_WORDS) = ("yes", "no")."""
    head, lab, tail = _head(tok, prefix), encode(tok, " Response:"), encode(tok, POINTWISE_QUESTION)
    q, r = encode_user(tok, prompt), encode_user(tok, response)
    fixed = 4 + len(head) + len(lab) + len(tail)  # CLS, SEP, MASK, SEP
    p, (k,) = fit_lengths(max_len - fixed, len(q), [len(r)])
    return _assemble(sp, [head, q[len(q) - p:], lab, cut_response(r, k, gap_ids(tok, truncate))], [tail])


def pointwise_examples(tok: Tokenizer, sp: Specials, pair, prefix: str = POINTWISE_PREFIX,
                       max_len: int = 512, truncate: str = "end") -> list[tuple[Example, int]]:
    """[(chosen, 0 = "yes"), (rejected, 1 = "no")]: labels index POINTWISE_WORDS."""
    return [(build_pointwise(tok, sp, pair.prompt, pair.chosen, prefix, max_len, truncate), 0),
            (build_pointwise(tok, sp, pair.prompt, pair.rejected, prefix, max_len, truncate), 1)]


@dataclass
class Cloze:
    """A model's prompt settings, decided in this one place: the template (`mode`), the prefix rule, the
    length limit, and the special and answer tokens they need. Training and scoring both build their
    examples through it, so a model is always scored with the prompts it was trained on."""
    tok: Tokenizer
    mode: str                       # "pairwise" (Choice 0 / 1) | "pointwise" (yes / no per response)
    prefix: str                     # "domain" | "criterion": by each pair's domain; else a PREFIXES key or text
    max_len: int
    sp: Specials
    words: tuple[str, ...]          # the two answer words: ("0", "1") or ("yes", "no")
    answer_ids: tuple[int, ...]     # their token ids right after "Answer:"
    truncate: str = "end"           # "end" | "middle": which part of a cut response is dropped (cut_response)

    @classmethod
    def for_encoder(cls, enc, mode: str = "pairwise", prefix: str = "domain", max_len: int = 512,
                    truncate: str = "end") -> "Cloze":
        if mode not in ("pairwise", "pointwise"):
            raise ValueError(f"mode must be 'pairwise' or 'pointwise', got {mode!r}")
        tok = enc.tokenizer
        gap_ids(tok, truncate)      # checks the name
        words = PAIRWISE_WORDS if mode == "pairwise" else POINTWISE_WORDS
        return cls(tok, mode, prefix, min(max_len, enc.config.max_position), Specials.from_tokenizer(tok),
                   words, answer_token_ids(tok, words), truncate)

    def prefix_for(self, domain: str | None) -> str:
        """The prefix text for a row of this domain (chat when unknown): pairwise "domain" and "criterion"
        prompts name the domain's criterion; pointwise "domain" prompts share one neutral instruction, and
        pointwise "criterion" prompts name the domain's criterion for one response."""
        if self.prefix not in ("domain", "criterion"):
            return resolve_prefix(self.prefix)
        if self.mode == "pointwise" and self.prefix == "domain":
            return POINTWISE_PREFIX
        table = CRITERION_PREFIX if self.mode == "pointwise" else DOMAIN_PREFIX
        return table.get(domain or "chat", table["chat"])

    def pairwise(self, prompt: str, resp_0: str, resp_1: str, domain: str | None = None) -> Example:
        return build_pairwise(self.tok, self.sp, prompt, resp_0, resp_1, self.prefix_for(domain), self.max_len,
                              self.truncate)

    def pointwise(self, prompt: str, response: str, domain: str | None = None) -> Example:
        return build_pointwise(self.tok, self.sp, prompt, response, self.prefix_for(domain), self.max_len,
                               self.truncate)

    def training_examples(self, pair) -> list[tuple[Example, int]]:
        """A PreferencePair's labelled examples: pairwise both orders, pointwise (chosen, rejected)."""
        make = pairwise_examples if self.mode == "pairwise" else pointwise_examples
        return make(self.tok, self.sp, pair, self.prefix_for(pair.domain), self.max_len, self.truncate)
