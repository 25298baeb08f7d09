"""Helpers shared by the benchmarks in this folder.

The benches run as `python bench/<name>.py`, so Python puts this folder on
`sys.path` (each bench also inserts it, for other ways of running them) and
`import common` finds this file; importing it puts the repository root on
`sys.path` so that `tkx` imports from the checkout. Nothing heavy is imported
here at module level: some benches set environment variables for TensorFlow
and JAX before those load.
"""

import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)


def cpu_name() -> str:
  """The CPU's model name (for printing beside figures measured on it)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return os.uname().machine


def log(msg):
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn, warmup, steps, label):
  """Median seconds of fn() over `steps` calls after `warmup` calls (None when `steps` is 0)."""
  for i in range(warmup):
    t0 = time.perf_counter()
    fn()
    log(f"{label}: warm-up {i + 1}/{warmup} {time.perf_counter() - t0:.2f}s")
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
    log(f"{label}: step {i + 1}/{steps} {times[-1]:.2f}s")
  return statistics.median(times) if times else None


def random_batch(vocab_size, batch, inputs_length, targets_length, seed=0):
  """Random (encoder inputs, decoder inputs, decoder targets) int32 arrays; decoder inputs are shifted targets."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab_size, (batch, inputs_length)).astype(np.int32)
  tgt = rng.randint(2, vocab_size, (batch, targets_length)).astype(np.int32)
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
  return enc, dec, tgt


def hf_t5_config(cfg):
  """The `transformers.T5Config` of a tkx T5 config (dropout off, start/pad token 0, EOS 1)."""
  from transformers import T5Config  # pylint: disable=g-import-not-at-top

  act = {("relu",): "relu", ("gelu", "linear"): "gated-gelu"}[
      tuple(cfg.mlp_activations)
  ]
  return T5Config(
      vocab_size=cfg.vocab_size,
      d_model=cfg.emb_dim,
      d_kv=cfg.head_dim,
      d_ff=cfg.mlp_dim,
      num_layers=cfg.num_encoder_layers,
      num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads,
      relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      relative_attention_max_distance=cfg.relative_attention_max_distance,
      dropout_rate=0.0,
      feed_forward_proj=act,
      tie_word_embeddings=cfg.logits_via_embedding,
      decoder_start_token_id=0,
      pad_token_id=0,
      eos_token_id=1,
  )
