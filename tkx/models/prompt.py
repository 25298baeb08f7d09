"""Prompt tuning (Lester et al., 2021; google-research/prompt-tuning on t5x): learned vectors before the encoder input.

`network.T5Config.prompt_length = N` makes the encoder call `Prompt`, which
prepends N learned vectors `encoder/prompt/prompt` [N, embed] (logical axes
("length", "embed")) to the input token embeddings of every row. The prompt
positions are always valid: the encoder's self-attention mask and the decoder's
encoder-decoder mask grow by N (`valid_with_prompt`), and the relative position
bias counts them as the first N positions. Trained alone with
`TRAINABLE = 'adapters'` (`tkx.models.adapters`); docs/adapters.md.

Initialisation (gin `prompt.PromptInit`): 'vocab' (Lester et al.'s best:
rows of the token embedding sampled without replacement from the first
`population` ids, which SentencePiece orders roughly by frequency) or 'uniform'
(U(-scale, scale)). Over a base checkpoint the sampled rows are the base's
(`train_state` initialises adapters over the loaded base).

Packed rows (segment ids) are refused: each packed example would need its own
prompt copy; prompt-tuned runs train unpacked (PACK = False).

Contract (the names other modules rely on; change one only together with its users):
- `Prompt(length, dtype, param_dtype)(embedded [b, l, d], embedding [vocab, d]) -> [b, N + l, d]`
  (named "prompt" by the encoder; parameter "prompt").
- `valid_with_prompt(valid [b, l], length) -> [b, N + l]`.
- gin `prompt.PromptInit(method, population, scale)`.
"""

import dataclasses
from typing import Any

import gin
import jax
import jax.numpy as jnp
from flax import linen as nn

from tkx import errors

METHODS = ("vocab", "uniform")


@gin.configurable(module="prompt")
@dataclasses.dataclass(frozen=True)
class PromptInit:
  """How a fresh prompt starts: sampled vocabulary embeddings or uniform noise."""

  method: str = "vocab"
  population: int = 5000  # 'vocab': sample from the first `population` ids
  scale: float = 0.5  # 'uniform': U(-scale, scale)

  def __post_init__(self):
    if self.method not in METHODS:
      raise errors.ConfigError(
          f"prompt.PromptInit.method must be one of {METHODS}, got {self.method!r}"
      )
    if int(self.population) < 1:
      raise errors.ConfigError(
          f"prompt.PromptInit.population must be positive, got {self.population!r}"
      )

  def __call__(self, rng, shape, dtype, embedding):
    length, _ = shape
    if self.method == "uniform":
      return jax.random.uniform(rng, shape, dtype, -self.scale, self.scale)
    population = min(int(self.population), embedding.shape[0])
    if population < length:
      raise errors.ConfigError(
          f"prompt.PromptInit.population={population} ids cannot give "
          f"network.T5Config.prompt_length={length} distinct rows"
      )
    ids = jax.random.choice(rng, population, (length,), replace=False)
    return jnp.take(embedding, ids, axis=0).astype(dtype)


class Prompt(nn.Module):
  """[b, l, d] embeddings -> [b, N + l, d]: the learned prompt first."""

  length: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, embedded, embedding):
    prompt = self.param(
        "prompt",
        nn.with_logical_partitioning(PromptInit(), ("length", "embed")),
        (self.length, embedded.shape[-1]),
        self.param_dtype,
        embedding,
    )
    rows = jnp.broadcast_to(
        jnp.asarray(prompt, self.dtype)[None],
        (embedded.shape[0],) + tuple(prompt.shape),
    )
    return jnp.concatenate([rows, jnp.asarray(embedded, self.dtype)], axis=1)


def valid_with_prompt(valid, length: int):
  """The encoder positions' validity with `length` prompt positions (always valid) first."""
  if not length:
    return valid
  ones = jnp.ones(valid.shape[:-1] + (length,), valid.dtype)
  return jnp.concatenate([ones, valid], axis=-1)
