"""Fused ops for tinyrm in plain PyTorch (no Triton, no compile step). Installed as `tinyrm.kernels`."""
from .chunked import by_rows
from .attention import row_attention, varlen_attention, varlen_attention_reference
from .geglu import geglu
from .linear_act import linear_gelu
from .rope import apply_rope, rope_cos_sin

__all__ = ["by_rows", "row_attention", "varlen_attention", "varlen_attention_reference", "geglu", "linear_gelu", "apply_rope",
           "rope_cos_sin"]
