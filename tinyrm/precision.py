"""The precision of training steps: float32, or bf16 autocast where the hardware makes it pay."""
from __future__ import annotations

import torch

from . import distributed as dp
from .errors import RecipeError
from .recipe import TrainConfig


def cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AMX, AVX512-BF16, or AVX-512 converting). On an
    AVX2-only CPU it has none, and a training step runs ~20x slower than in float32 (an AMD EPYC, measured)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_for(cfg: TrainConfig, device: torch.device):
    """bf16 autocast: on CUDA by default ("auto"); on CPU only when asked ("bf16"), since the bf16 rounding
    of each CPU family differs and float32 steps give the same run on every machine."""
    if cfg.amp not in ("auto", "bf16", "off"):
        raise RecipeError(f"amp must be 'auto', 'bf16' or 'off', got {cfg.amp!r}")
    on = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    if on and device.type == "cpu" and not cpu_has_bf16():
        dp.say("warning: amp = 'bf16' on a CPU without bf16 units (AMX, AVX-512): steps run about 20x "
               "slower than float32; use --amp auto")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)
