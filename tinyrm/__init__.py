"""tinyrm: Tiny Reward Models — small bidirectional encoders as reward models.

    enc = tinyrm.load_encoder("weights/minilm-l6")
    enc.encode(input_ids, attention_mask)                 # [B, L, H]
    enc(input_ids, attention_mask, positions=mask_pos)    # MLM logits at the [MASK] slots
"""
from .config import CheckpointError, EncoderConfig
from .weights import load_encoder

__all__ = ["CheckpointError", "EncoderConfig", "load_encoder"]
