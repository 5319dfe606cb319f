"""An exponential moving average of the trained weights (Polyak averaging), validated and kept in their place.

A small model trained for a few hundred steps at a high learning rate ends wherever its last batches
pushed it: two seeds, or two CPUs whose bf16 rounding differs, part ways, and the checkpoint chosen on
validation inherits that noise. Averaging the weights along the trajectory is a cheap answer (no extra
forward pass; free at inference once merged): every step

    avg <- d · avg + (1 − d) · w,        d = min(decay, (1 + t) / (10 + t))

where the warm-up of d keeps the first steps from being pinned to the untrained start. The average is
kept in float32 for every trainable tensor (DoRA's A, B and magnitude, unfrozen head weights); `swapped`
puts it into the model for validation and for writing `best/`, then puts the live weights back.
"""
from __future__ import annotations

import contextlib

import torch


class Ema:
    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.params, self.decay, self.steps = params, decay, 0
        self.avg = {n: p.detach().clone().float() for n, p in params.items()}

    @classmethod
    def of(cls, module: torch.nn.Module, decay: float) -> "Ema":
        return cls({n: p for n, p in module.named_parameters() if p.requires_grad}, decay)

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for n, p in self.params.items():
            self.avg[n].mul_(d).add_(p.detach().float(), alpha=1 - d)
        self.steps += 1

    @contextlib.contextmanager
    def swapped(self):
        """The average in the model's trainable tensors for the duration; the live values come back after
        (also when the body raises)."""
        live = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.avg[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(live[n])

    def state_dict(self) -> dict:
        return {"steps": self.steps, "avg": {n: t.clone() for n, t in self.avg.items()}}

    def load_state_dict(self, state: dict) -> None:
        if set(state["avg"]) != set(self.avg):
            raise ValueError("the saved weight average does not match this model's trainable tensors")
        self.steps = int(state["steps"])
        for n, t in state["avg"].items():
            self.avg[n].copy_(t)
