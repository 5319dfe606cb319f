"""Non-finite optimiser steps: counted, skipped by the trainer, fatal after `max_bad_steps` in a row.

train_step applies an update only when the clipped gradient's norm is finite (a NaN or inf loss makes it
NaN), so a bad batch never reaches the weights or the optimiser's moments; the scheduler still steps,
keeping the learning rate on the step plan. The counts live on the Run for the length of one process; a
resumed run starts them at 0, and the metrics rows (`skipped`) keep the record of every step.
"""
from __future__ import annotations

from .errors import TrainingDiverged


def note_step(run, finite: bool, step: int) -> dict:
    """Count step `step` (0-based) on `run`; TrainingDiverged naming it after cfg.max_bad_steps bad steps
    in a row. Returns the metrics row's fields: `skipped` (this step) and `skipped_steps` (so far)."""
    run.bad_in_row = 0 if finite else run.bad_in_row + 1
    run.skipped_steps += not finite
    if run.bad_in_row >= run.cfg.max_bad_steps:
        raise TrainingDiverged(f"step {step + 1}: the loss or gradient was not finite in {run.bad_in_row} steps "
                               f"in a row (max_bad_steps = {run.cfg.max_bad_steps}); they did not change the "
                               f"weights, and `tinyrm train --resume {run.run_dir}` continues from the last "
                               "checkpoint (with a lower lr if it recurs)")
    return {"skipped": not finite, "skipped_steps": run.skipped_steps}
