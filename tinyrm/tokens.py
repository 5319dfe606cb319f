"""Tokenizer loading, special tokens and answer tokens: what every cloze prompt is built from.

The model layer (weights.py) needs the special ids to build an encoder, the prompt layer (prompts.py)
needs them to build templates; both read them here, from the checkpoint's own tokenizer.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from .errors import CheckpointError, first_line

PAIRWISE_WORDS = ("0", "1")
POINTWISE_WORDS = ("yes", "no")


def load_tokenizer(path) -> Tokenizer:
    """tokenizer.json (or a folder holding one) with padding and truncation off: they are ours to do."""
    path = Path(path)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"{path}: tokenizer.json not found")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises its own exception type for a bad file
        raise CheckpointError(f"{path}: not a readable tokenizer.json ({first_line(e)})") from None
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
    def from_tokenizer(cls, tok: Tokenizer, where: str = "tokenizer") -> "Specials":
        ids = {}
        for field, names in cls.NAMES.items():
            found = [tok.token_to_id(n) for n in names if tok.token_to_id(n) is not None]
            if not found:
                raise CheckpointError(f"{where}: no special token among {names} (needed for {field})")
            ids[field] = found[0]
        return cls(**ids)


def answer_token_ids(tok: Tokenizer, words=PAIRWISE_WORDS) -> tuple[int, ...]:
    """The id each answer word takes right after "Answer:" (for BPE the space-prefixed token)."""
    base = encode(tok, "Answer:")
    out = []
    for w in words:
        ids = encode(tok, f"Answer: {w}")
        if len(ids) != len(base) + 1 or ids[:len(base)] != base:
            raise CheckpointError(f"answer word {w!r} is not a single token after 'Answer:' "
                             f"({tok.encode(f'Answer: {w}', add_special_tokens=False).tokens})")
        if tok.decode([ids[-1]]).strip().lower() != w.lower():
            raise CheckpointError(f"answer token for {w!r} decodes to {tok.decode([ids[-1]])!r}")
        out.append(ids[-1])
    if len(set(out)) != len(out):
        raise CheckpointError(f"answer words {words} share a token id")
    return tuple(out)


