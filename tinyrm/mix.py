"""The training mix: files weighted and subsampled, validation carved out, and data shaping.

`load_mix` reads every `[[data]]` entry of a recipe (a file, or generated pairs from synth.py), holds out
each file's validation prompts first, then subsamples, weights and shuffles the rest. The validation set
is then capped per domain (`sample_validation`) and the training set optionally length-balanced.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path

from .augment import augment
from .data import PreferencePair, SkipReport, prompt_hash, read_pairs
from .errors import TinyrmError
from .paths import REWARDBENCH, data_root
from .rewardbench import load_rewardbench
from .synth import generate


@dataclass
class MixEntry:
    path: str | None = None
    weight: float = 1.0            # 2.0 = every row twice; 0.5 = a seeded half of the rows
    domain: str | None = None      # overrides the rows' own domain
    max_rows: int | None = None    # a seeded random subset of this many rows, before weighting
    synth: str | None = None       # instead of a file: "math" | "code" generated pairs (tinyrm/synth.py),
                                   # max_rows of them (default 500)


def _rng(*parts) -> random.Random:
    # Seeded from a digest, so the stream is the same in every Python process (no salted hash()).
    return random.Random(int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big"))


def weighted_sample(rows: list, weight: float, rng: random.Random) -> list:
    """floor(weight) full copies of rows plus a random round(frac * n)-row subset for the remainder."""
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f"mix weight must be finite and >= 0, got {weight}")
    whole, frac = int(weight), weight - int(weight)
    extra = rng.sample(range(len(rows)), round(frac * len(rows)))
    return rows * whole + [rows[i] for i in sorted(extra)]


def _read_entry(e: MixEntry, seed: int, skip_bad: bool, part: str = "train"):
    if e.synth:
        rows = generate(e.synth, e.max_rows or 500, seed, part)
        return rows, SkipReport(path=f"synth-{e.synth}", total=len(rows))
    return read_pairs(e.path, skip_bad=skip_bad, domain=e.domain)


def load_mix(entries: list[MixEntry], seed: int, skip_bad: bool = False, val_frac: float = 0.0,
             part: str = "train", split_seed: int | None = None
             ) -> tuple[list[PreferencePair], list[PreferencePair], list[SkipReport]]:
    """(train, val, reports). Every file entry first gives up its validation slice: the prompts whose
    hash (split_seed, else seed) is below `val_frac` (split_validation; at least one prompt per file when
    val_frac > 0).
    Then the rest is subsampled to max_rows, repeated by weight and the whole mix shuffled by seed.

    Carving each FILE before weighting keeps validation fixed while the weights change, so two mixes
    are compared on the same held-out pairs; a prompt's side depends only on its text, so a prompt
    shared by two files is held out of both. Generated (synth) entries give no validation rows, and a
    weight-0 entry none either; a mix of validation files (part="val") draws them from synth's held-out
    part, which shares no code function with the training part. Repeated rows are the same objects."""
    train, val, reports = [], [], []
    for i, e in enumerate(entries):
        rows, rep = _read_entry(e, seed, skip_bad, part)
        reports.append(rep)
        if val_frac > 0 and not e.synth and e.weight > 0:
            n_prompts = len({p.prompt.strip() for p in rows})
            rows, held = split_validation(rows, val_frac, seed if split_seed is None else split_seed,
                                          min_rows=1 if n_prompts > 1 else 0)
            val += held
        # keyed by the file's name, not its path: the same recipe and seed draw the same rows wherever the
        # data folder lives (a path-keyed stream gave every machine its own mix)
        rng = _rng(seed, i, Path(e.path).name if e.path else e.synth)
        if e.max_rows is not None and len(rows) > e.max_rows:
            rows = [rows[j] for j in sorted(rng.sample(range(len(rows)), e.max_rows))]
        train += weighted_sample(rows, e.weight, rng)
    _rng(seed, "shuffle").shuffle(train)
    return train, val, reports


def split_validation(pairs: list[PreferencePair], frac: float = 0.05, seed: int = 0,
                     min_rows: int = 1) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, val), grouped by prompt: every prompt whose hash is < frac goes to val, and if that gives
    fewer than min_rows rows, further prompts in increasing hash order join it. A prompt's side depends
    only on its text and the seed (not on the rest of the data) whenever the min_rows top-up is idle.
    Both halves keep the input order."""
    if not 0 <= frac < 1:
        raise ValueError(f"frac must be in [0, 1), got {frac}")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.prompt.strip(), []).append(i)
    order = sorted(groups, key=lambda q: (prompt_hash(q, seed), q))
    val_idx, n_val = set(), 0
    for q in order:
        if prompt_hash(q, seed) >= frac and n_val >= min_rows:
            break
        val_idx.update(groups[q])
        n_val += len(groups[q])
    if pairs and len(val_idx) == len(pairs):
        raise ValueError(f"validation split would take all {len(pairs)} rows ({len(groups)} prompts); "
                         "lower frac/min_rows or add data")
    train = [p for i, p in enumerate(pairs) if i not in val_idx]
    val = [p for i, p in enumerate(pairs) if i in val_idx]
    return train, val


def drop_overlap(pairs: list[PreferencePair], prompts: set[str]) -> tuple[list[PreferencePair], int]:
    """Drop pairs whose prompt equals one of `prompts` (e.g. RewardBench's), compared after strip()."""
    banned = {q.strip() for q in prompts}
    kept = [p for p in pairs if p.prompt.strip() not in banned]
    return kept, len(pairs) - len(kept)


def sample_validation(val: list[PreferencePair], max_pairs: int, seed: int) -> list[PreferencePair]:
    """At most `max_pairs` validation pairs: a fixed, seeded sample keeps validation cheap, and an equal
    share per domain keeps every domain's accuracy measurable (the selection metric averages them)."""
    if len(val) <= max_pairs:
        return val
    by_dom: dict = {}
    for p in val:
        by_dom.setdefault(p.domain, []).append(p)
    share, rng, keep = max_pairs // len(by_dom), random.Random(seed), []
    for dom in sorted(by_dom, key=str):
        # a canonical order first, so the sample does not depend on how the mix was shuffled
        rows = sorted(by_dom[dom], key=lambda p: (prompt_hash(p.prompt + p.chosen + p.rejected), p.prompt))
        keep += rng.sample(rows, min(share, len(rows)))
    return keep


def length_balanced(pairs: list[PreferencePair], seed: int) -> tuple[list[PreferencePair], int]:
    """(pairs, n_dropped): per domain, a seeded subsample of the majority side so that pairs whose chosen
    response is longer (in characters) are exactly as many as those where it is shorter; ties all stay.
    Preference data mostly favours the longer answer, so a model can score well by counting tokens;
    balancing removes that shortcut. The order of the rest is kept."""
    rng, drop = random.Random(f"length-balance-{seed}"), set()
    for dom in sorted({p.domain for p in pairs}, key=str):
        idx = [i for i, p in enumerate(pairs) if p.domain == dom]
        longer = [i for i in idx if len(pairs[i].chosen) > len(pairs[i].rejected)]
        shorter = [i for i in idx if len(pairs[i].chosen) < len(pairs[i].rejected)]
        big, small = (longer, shorter) if len(longer) > len(shorter) else (shorter, longer)
        drop.update(rng.sample(big, len(big) - len(small)))
    return [p for i, p in enumerate(pairs) if i not in drop], len(drop)


def load_data(cfg) -> tuple[list[PreferencePair], list[PreferencePair], list[str]]:
    """A recipe's (train pairs, validation pairs, report lines); `cfg` is a recipe.TrainConfig. Validation
    is carved from every mix file (plus the recipe's [[val]] files), then capped per domain."""
    train, val, reports = load_mix(cfg.data, cfg.seed, skip_bad=cfg.skip_bad, val_frac=cfg.val_frac,
                                   split_seed=cfg.split_seed)
    notes = [str(r) for r in reports if r.skipped]
    rb = data_root() / REWARDBENCH
    if cfg.drop_rewardbench_overlap and rb.is_file():
        # a guard, not a selection: rows whose prompt is literally a RewardBench prompt are removed
        banned = {r["prompt"] for r in load_rewardbench(rb)}
        (train, n), (val, m) = drop_overlap(train, banned), drop_overlap(val, banned)
        notes.append(f"dropped {n + m} pairs whose prompt is a RewardBench prompt")
    elif cfg.drop_rewardbench_overlap:
        notes.append(f"{rb} not found: no RewardBench prompts to drop (`tinyrm data --only rewardbench` fetches it)")
    if cfg.train_pairs and cfg.train_pairs < len(train):
        # the mix is already shuffled by seed: its first n pairs are a seeded sample in the mix's proportions
        notes.append(f"train_pairs: {cfg.train_pairs} of the mix's {len(train)} training pairs")
        train = train[:cfg.train_pairs]
    if cfg.length_balance:
        train, n = length_balanced(train, cfg.seed)
        notes.append(f"length balance: dropped {n} training pairs so that, in every domain, the chosen response "
                     "is the longer one as often as the shorter")
    fracs = {"style": cfg.aug_style, "relevance": cfg.aug_relevance, "shuffle": cfg.aug_shuffle,
             "neighbour": cfg.aug_neighbour}
    if any(fracs.values()):
        train, made = augment(train, fracs, cfg.seed)
        notes.append("augmented: " + ", ".join(f"{n} {k} pairs" for k, n in made.items() if n))
    if cfg.val:
        extra, _, _ = load_mix(cfg.val, cfg.split_seed, skip_bad=cfg.skip_bad, part="val")
        seen = {p.prompt.strip() for p in train}
        val += [p for p in extra if p.prompt.strip() not in seen]
    if not train:           # else the run would end at once, with nothing trained and nothing said
        raise TinyrmError("no training pairs left" + (": " + "; ".join(notes) if notes else " in the mix"))
    return train, sample_validation(val, cfg.val_max_pairs, cfg.split_seed), notes
