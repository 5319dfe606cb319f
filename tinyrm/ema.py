"""A running average of the trained weights, validated and kept in their place: exponential (Polyak) or a
uniform average of the schedule's tail (stochastic weight averaging).

A small model trained for a few hundred steps at a high learning rate ends wherever its last batches
pushed it: two seeds, or two CPUs whose bf16 rounding differs, part ways, and the checkpoint chosen on
validation inherits that noise. Averaging the weights along the trajectory is a cheap answer (no extra
forward pass; free at inference once merged): every step

    avg <- d · avg + (1 − d) · w,        d = min(decay, (1 + t) / (10 + t))

where the warm-up of d keeps the first steps from being pinned to the untrained start. An exponential
average lags about 1/(1 − d) steps behind weights that are still improving; the tail average does not
weigh the past less, so it starts late instead: up to step `start` it is the live weights, after it

    avg <- avg + (w − avg) / n,        n = the number of steps averaged, from `start` on

the plain mean of the weights along the last part of the schedule, where the learning rate has decayed
and the steps circle one basin (Izmailov et al., 2018). The average is kept in float32 for every
trainable tensor (DoRA's A, B and magnitude, unfrozen head weights); `swapped` puts it into the model for
validation and for writing `best/`, then puts the live weights back.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import RecipeError


def weight_average(module: torch.nn.Module, ema: float, swa_from: float, total_steps: int) -> "Ema | None":
    """The recipe's weight average: exponential (`ema` = decay), the tail's mean (`swa_from` = the fraction
    of the steps before it starts), or none."""
    if ema > 0 and swa_from > 0:
        raise RecipeError("ema and swa_from are two weight averages; set one of them")
    if ema > 0:
        return Ema.of(module, ema)
    return Ema.tail(module, int(swa_from * total_steps)) if swa_from > 0 else None


class Ema:
    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float | None, start: int = 0):
        """decay in (0, 1): exponential; None: the uniform average of the steps from `start` on."""
        if decay is not None and not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        if start < 0:
            raise ValueError(f"the tail average's start must be >= 0, got {start}")
        self.params, self.decay, self.start, self.steps = params, decay, start, 0
        self.avg = {n: p.detach().clone().float() for n, p in params.items()}

    @classmethod
    def of(cls, module: torch.nn.Module, decay: float) -> "Ema":
        return cls(cls.trainable(module), decay)

    @classmethod
    def tail(cls, module: torch.nn.Module, start: int) -> "Ema":
        return cls(cls.trainable(module), None, start)

    @staticmethod
    def trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in module.named_parameters() if p.requires_grad}

    @property
    def is_live(self) -> bool:
        """True while the tail average holds exactly the live weights (at most one step averaged)."""
        return self.decay is None and self.steps - self.start <= 1

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.params.items():
            w = p.detach().float()
            if self.decay is not None:
                d = min(self.decay, (1 + self.steps) / (10 + self.steps))
                self.avg[n].mul_(d).add_(w, alpha=1 - d)
            elif self.steps <= self.start:                 # not started, or its first step: the weights
                self.avg[n].copy_(w)
            else:
                self.avg[n].add_(w - self.avg[n], alpha=1 / (self.steps - self.start + 1))
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
