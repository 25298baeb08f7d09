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


def hf_t5(feed_forward_proj: str, tied: bool, seed: int = 0, vocab_size=1024):
  """A tiny random Hugging Face T5 (2+2 layers, d_model 16): "relu" + tied is T5 1.0, "gated-gelu" untied 1.1.

  The default vocabulary fits the embedded sample's 1,000 pieces without sentinels.
  """
  import torch
  import transformers

  config = transformers.T5Config(
      vocab_size=vocab_size,
      d_model=16,
      d_kv=4,
      d_ff=24,
      num_layers=2,
      num_heads=2,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
      feed_forward_proj=feed_forward_proj,
      tie_word_embeddings=tied,
      dropout_rate=0.0,
      decoder_start_token_id=0,
      pad_token_id=0,
      eos_token_id=1,
  )
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(config).eval()
  if not tied:  # T5 1.1: an LM head of its own
    model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab_size, 16))
  return model
