"""Tiny T5 configs for tests: one place for their shapes (a test overrides what it needs)."""

from tkx.models import config as config_lib

# T5 1.1-style (gated GELU, untied logits), small enough to compile in seconds.
TINY_T5_1_1 = dict(
    vocab_size=64,
    emb_dim=16,
    num_heads=2,
    head_dim=8,
    mlp_dim=24,
    num_encoder_layers=1,
    num_decoder_layers=1,
    mlp_activations=("gelu", "linear"),
    logits_via_embedding=False,
    dropout_rate=0.0,
)


def t5_config(**overrides) -> config_lib.T5Config:
  return config_lib.T5Config(**{**TINY_T5_1_1, **overrides})
