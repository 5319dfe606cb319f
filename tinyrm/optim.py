"""AdamW with a linear warm-up and linear decay, and the parameter groups a DoRA reward model needs."""
from __future__ import annotations

import torch

from .calibrate import LengthExpert
from .recipe import TrainConfig


def make_optimizer(enc, cfg: TrainConfig, total_steps: int, expert: LengthExpert | None = None):
    decay, no_decay = [], []
    for n, p in enc.named_parameters():
        if p.requires_grad:
            # no weight decay on biases, norms and DoRA magnitudes (they are scales, not directions)
            (no_decay if p.ndim < 2 or "norm" in n.lower() or "magnitude" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas),
                            eps=cfg.eps)
    if expert is not None:
        # β is one scalar per domain with a target of order 1, and AdamW moves a parameter by about lr per
        # step: at the adapters' lr it would need ~1000 steps, at 20x it gets there within the warm-up
        opt.add_param_group({"params": [expert.beta], "weight_decay": 0.0, "lr": 20 * cfg.lr})
    warm = max(1, round(cfg.warmup_frac * total_steps))

    def lr_factor(step: int) -> float:  # linear warm-up, then linear decay to final_lr_frac of the peak
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return 1.0 - (1.0 - cfg.final_lr_frac) * min(1.0, t)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
