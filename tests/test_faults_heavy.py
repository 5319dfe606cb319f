"""The long fault runs (`make test-all`): 20+ seeded SIGKILLs of the training CLI, each attempt resumed with
`tinyrm train --resume RUN`, and a real 100 MB line. `TINYRM_FAULT_LOG=file.json` writes the tallies that
docs/reliability.md quotes."""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from tinyrm.data import read_pairs
from tinyrm.errors import DataError
from faultkit import attempt, check_checkpoints, same_result
from test_faults import tiny_bert, write_recipe  # noqa: F401 (fixture)
from test_train import _write, repeat_task

pytestmark = pytest.mark.heavy
KILLS = 20
STEPS = 24
FIRST = ["setup:{ms}", "start:any:1", "tmp:best:1", "new:best:1", "start:last:1", "tmp:last:1"]
LATER = ["start:{f}:{n}", "tmp:{f}:{n}", "old:last:{n}", "old:best:{n}", "new:last:{n}", "new:{f}:{n}",
         "step:{s}:{ms}", "step:{s}:{ms}", "step:{s}:{ms}", "external"]


def _fault(rng: random.Random, first: bool, resumed: int, later: list[str]):
    """One seeded fault spec (faultkit's syntax) and None, or None and the seconds after which the test
    kills the process from outside. Later attempts take the kinds of LATER in a shuffled cycle."""
    if not later:
        later += rng.sample(LATER, len(LATER))
    kind = rng.choice(FIRST) if first else later.pop()
    if kind == "external":
        return None, rng.uniform(1.0, 20.0)
    return kind.format(ms=rng.randrange(0, 150), f=rng.choice(["last", "best", "any"]), n=rng.randrange(1, 3),
                       s=rng.randrange(min(resumed, STEPS - 2), STEPS - 1)), None


def test_twenty_sigkills_then_resume_match_the_undisturbed_run(tiny_bert, tmp_path):  # noqa: F811
    data = _write(tmp_path / "d.jsonl", repeat_task(140, 1))     # 119 training pairs: 30 steps, 24 run
    recipe = write_recipe(tmp_path / "r.toml", tiny_bert, data, max_steps=STEPS, save_every=3, eval_every=4,
                          val_max_pairs=30)
    (tmp_path / "ref").mkdir()
    p = attempt(["train", "--recipe", str(recipe)], cwd=tmp_path / "ref")
    assert p.returncode == 0, p.stderr
    ref = next((tmp_path / "ref" / "runs").glob("*/summary.json")).parent

    rng, log, tally, later = random.Random(2026), [], Counter(), []
    lives = 0
    while tally["kills"] < KILLS:
        lives += 1
        work = tmp_path / f"life{lives}"
        work.mkdir()
        run, resumed, first = None, 0, True
        while True:                      # the first attempt of a run dies before its first checkpoint
            fault, after = _fault(rng, first, resumed, later) if tally["kills"] < KILLS else (None, None)
            first = False
            args = ["train", "--resume", str(run)] if run else ["train", "--recipe", str(recipe)]
            p = attempt(args, cwd=work, fault=fault, kill_after_s=after)
            if run is None:                  # None while a kill came before the run folder was written
                run = next((c.parent for c in (work / "runs").glob("*/config.json")), None)
            if p.returncode == 0:
                break                                            # the fault never fired: the run finished
            assert p.returncode == -9, (fault, p.returncode, p.stderr[-3000:])
            seen = check_checkpoints(run) if run else {"tmp": []}
            resumed = seen.get("last", seen.get("last.old", 0))
            tally["kills"] += 1
            tally["before first checkpoint"] += "last" not in seen and "last.old" not in seen
            tally["left a .tmp folder"] += bool(seen["tmp"])
            tally["left only last.old (mid-swap)"] += "last.old" in seen and "last" not in seen
            tally["left last and last.old"] += "last.old" in seen and "last" in seen
            tally["left only best.old (mid-swap)"] += "best.old" in seen and "best" not in seen
            tally[f"fault {fault.split(':')[0] if fault else 'external'}"] += 1
            log.append({"life": lives, "fault": fault or f"external after {after:.1f} s", "left": seen})
        same_result(run, ref)
        tally["runs finished identical"] += 1
    tally["lives"] = lives
    if os.environ.get("TINYRM_FAULT_LOG"):
        Path(os.environ["TINYRM_FAULT_LOG"]).write_text(json.dumps({"tally": tally, "kills": log}, indent=1))
    assert tally["kills"] >= KILLS and tally["before first checkpoint"] >= lives // 2
    assert tally["left a .tmp folder"] > 0 and tally["left only last.old (mid-swap)"] > 0
    assert json.loads((ref / "summary.json").read_text())["best_step"] > 0      # best/ moved: a real comparison


def test_a_real_100_mb_line(tmp_path):
    """A 100 MB line between good rows: DataError at its line number, read in bounded pieces."""
    good = "".join(json.dumps(r) + "\n" for r in repeat_task(4, 1))
    p = tmp_path / "d.jsonl"
    with open(p, "w") as f:
        f.write(good)
        f.write('{"prompt": "' + "x" * (100 << 20) + '", "chosen": "a", "rejected": "b"}\n')
        f.write(good)
    with pytest.raises(DataError, match=f"{p}:5: line too long"):
        read_pairs(p)
    pairs, rep = read_pairs(p, skip_bad=True)
    assert len(pairs) == 8 and rep.reasons == {"line too long": 1}
