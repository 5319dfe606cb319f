"""tinyrm: Tiny Reward Models — small bidirectional encoders as reward models.

    rm = tinyrm.RewardModel.load("runs/default-20261129-004000")   # a trained run
    rm.score(prompts, responses)                                   # rewards (pointwise models)
    rm.compare(prompts, responses_a, responses_b)                  # P(a is better)

    enc = tinyrm.load_encoder("weights/minilm-l6")
    enc.encode(input_ids, attention_mask)                 # [B, L, H]
    enc(input_ids, attention_mask, positions=mask_pos)    # MLM logits at the [MASK] slots
"""
__version__ = "0.1.0"

from .config import EncoderConfig
from .errors import CheckpointError, DataError, TinyrmError
from .scorer import RewardModel
from .weights import load_encoder

__all__ = ["CheckpointError", "DataError", "EncoderConfig", "RewardModel", "TinyrmError", "load_encoder"]
