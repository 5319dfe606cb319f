"""The end of a training run: its summary (summary.json) and runs/LATEST, which names it for `tinyrm eval`.

`finish(run)` takes the train.Run the loop advanced. Under a launcher rank 0 writes both files (it alone
validated, so its `best` is the run's) and every rank returns rank 0's summary.
"""
from __future__ import annotations

import json
import resource
import time

from . import distributed as dp
from .atomic import atomic_write


def finish(run) -> dict:
    """The summary dict, also written to summary.json; runs/LATEST names this run for `tinyrm eval`."""
    best, cfg = run.best, run.cfg
    corrected = {k: best.get(k) for k in ("raw_val_score", "corrected_val_score", "corrected_val_acc")
                 } if cfg.length_correct else {}
    summary = {"run_dir": str(run.run_dir), "best_val_score": best["val_score"],
               "best_val_acc": best.get("val_acc", -1.0), **corrected,
               "length_correction_applied": bool(best.get("length_corrected")),
               **({"length_shares": best["length_shares"]} if best.get("length_shares") else {}),
               **({"length_expert": run.expert.values()} if run.expert else {}),
               **({"relevance": best["relevance"]} if best.get("relevance") else {}),
               "select": cfg.select, "best_step": best["step"], "steps": len(run.steps),
               "train_pairs": len(run.train_pairs), "val_pairs": len(run.val), "seconds": time.time() - run.t0,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "processes": dp.world()}
    if dp.is_main():
        atomic_write(run.run_dir / "summary.json", json.dumps(summary, indent=2))
        atomic_write(run.run_dir.parent / "LATEST", run.run_dir.name + "\n")
    return dp.finished(summary)       # rank 0's summary (it alone validated) on every rank; the group ends
