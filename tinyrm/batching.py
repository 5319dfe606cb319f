"""Cutting examples into batches: one greedy packer, used for scoring, training steps and micro-batches.

`pack` walks units (groups of row indices that must stay together, such as the two orders of a pair) in
the given order and starts a new batch whenever the next unit would break the budget; a unit that alone
breaks it gets a batch of its own. The callers choose the order and the budget:
  token_batches          scoring: rows sorted by length, at most `max_tokens` real tokens (packed)
  micro_batches          a training step's pairs, in order, at most `max_tokens` real tokens each
  length_grouped_batches training steps: similar lengths together, `batch_size` rows (or a padded budget)
"""
from __future__ import annotations

import random
from typing import Callable

# fits(rows, tokens, longest) -> bool: may a batch of this many rows, real tokens and longest row exist?
Fits = Callable[[int, int, int], bool]


def pack(units: list[list[int]], lengths: list[int], fits: Fits) -> list[list[int]]:
    """Greedy, in order: each unit joins the current batch while `fits` holds, else starts the next one."""
    batches, cur, rows, tokens, longest = [], [], 0, 0, 0
    for unit in units:
        n, t, L = len(unit), sum(lengths[i] for i in unit), max(lengths[i] for i in unit)
        if cur and not fits(rows + n, tokens + t, max(longest, L)):
            batches.append(cur)
            cur, rows, tokens, longest = [], 0, 0, 0
        cur, rows, tokens, longest = cur + unit, rows + n, tokens + t, max(longest, L)
    return batches + ([cur] if cur else [])


def token_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices sorted by length, cut so each batch holds at most `max_tokens` real tokens (packed)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return pack([[i] for i in order], lengths, lambda n, t, L: t <= max_tokens)


def micro_batches(ids: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """`ids` in their order, cut so each micro-batch holds at most `max_tokens` tokens (lengths[i]: all of
    item i's tokens, e.g. both sequences of a pair)."""
    return pack([[i] for i in ids], lengths, lambda n, t, L: t <= max_tokens)


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

    def fits(n: int, tokens: int, longest: int) -> bool:
        return n <= batch_size if batch_size is not None else n * longest <= max_tokens

    def pack_chunk(chunk: list[list[int]]) -> list[list[int]]:
        chunk = sorted(chunk, key=lambda m: max(lengths[i] for i in m))  # stable: position breaks ties
        units = []
        for members in chunk:
            fit = fits(len(members), 0, max(lengths[i] for i in members))
            units += [members] if fit else [[i] for i in members]
        return pack(units, lengths, fits)

    if not shuffle:
        return pack_chunk(order)
    rng.shuffle(order)
    batches, chunk, size = [], [], 0
    limit = mega_batches * (batch_size if batch_size is not None else max_tokens)
    for members in order:
        chunk.append(members)
        size += len(members) if batch_size is not None else sum(lengths[i] for i in members)
        if size >= limit:
            batches += pack_chunk(chunk)
            chunk, size = [], 0
    batches += pack_chunk(chunk)
    rng.shuffle(batches)
    return batches
