"""Optimizers and learning-rate schedules, configured as t5x configures them.

* `adafactor(...)`: factored second moments, decay_rate 0.8, update clipping 1.0,
  updates scaled by the parameter RMS (`multiply_by_parameter_scale`) -- the
  settings of t5x's `adafactor.Adafactor` used for T5 / Tk-Instruct fine-tuning.
* `adamw(...)`: decoupled weight decay (Tk-Instruct's published recipe uses AdamW
  at a constant 5e-5).
* `create_learning_rate_scheduler(factors=...)`: t5x's product-of-factors
  schedule ("constant * linear_warmup * rsqrt_decay", ...).
* `create_optimizer(...)`: global-norm clipping + the optimizer, as one
  `optax.GradientTransformation`; the trainer only sees this.

Every function is gin-configurable under `optimizers.<name>`.

Contract (the names other modules rely on; change one only together with its users):
- `optimizers.adafactor(learning_rate, decay_rate=0.8, clipping_threshold=1.0, multiply_by_parameter_scale=True, ...)`,
  `optimizers.adamw(learning_rate, ...)`, `optimizers.create_learning_rate_scheduler(factors=..., ...)` (t5x's factors),
  `optimizers.create_optimizer(optimizer_fn, learning_rate, grad_clip_norm=None) -> optax.GradientTransformation`.
"""

from typing import Callable, Optional, Union

import gin
import jax.numpy as jnp
import numpy as np
import optax

from tkx import errors

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
LearningRate = Union[float, Schedule]


@gin.configurable(module="optimizers")
def create_learning_rate_scheduler(
    factors: str = "constant * linear_warmup * rsqrt_decay",
    base_learning_rate: float = 0.5,
    warmup_steps: int = 1000,
    decay_factor: float = 0.5,
    steps_per_decay: int = 20000,
    steps_per_cycle: int = 100000,
    step_offset: int = 0,
    min_learning_rate: float = 1e-8,
) -> Schedule:
  """The learning rate as a product of named factors (t5x's `utils.create_learning_rate_scheduler`).

  Factors: constant, linear_warmup, rsqrt_decay (1/sqrt(max(step, warmup_steps))),
  rsqrt_normalized_decay, decay_every, cosine_decay, linear_decay (to 0 at
  steps_per_cycle). `step_offset` shifts the step seen by every factor
  (e.g. to restart warmup when fine-tuning from a pre-trained checkpoint).
  """
  names = [n.strip() for n in factors.split("*") if n.strip()]
  known = {
      "constant",
      "linear_warmup",
      "rsqrt_decay",
      "rsqrt_normalized_decay",
      "decay_every",
      "cosine_decay",
      "linear_decay",
  }
  unknown = [n for n in names if n not in known]
  if unknown:
    raise errors.ConfigError(
        f"unknown learning-rate factor(s) {unknown} in {factors!r}; "
        f"known: {sorted(known)}"
    )

  def schedule(step):
    step = jnp.maximum(0, jnp.asarray(step, jnp.float32) - step_offset)
    ret = jnp.asarray(1.0, jnp.float32)
    for name in names:
      if name == "constant":
        ret *= base_learning_rate
      elif name == "linear_warmup":
        ret *= jnp.minimum(1.0, step / max(warmup_steps, 1))
      elif name == "rsqrt_decay":
        ret /= jnp.sqrt(jnp.maximum(step, warmup_steps))
      elif name == "rsqrt_normalized_decay":
        ret *= np.sqrt(warmup_steps)
        ret /= jnp.sqrt(jnp.maximum(step, warmup_steps))
      elif name == "decay_every":
        ret *= decay_factor ** (step // steps_per_decay)
      elif name == "cosine_decay":
        progress = jnp.maximum(
            0.0, (step - warmup_steps) / float(steps_per_cycle)
        )
        ret *= jnp.maximum(
            0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0)))
        )
      elif name == "linear_decay":
        ret *= jnp.maximum(0.0, 1.0 - step / float(steps_per_cycle))
    return jnp.maximum(ret, min_learning_rate) if min_learning_rate else ret

  return schedule


@gin.configurable(module="optimizers")
def adafactor(
    learning_rate: LearningRate,
    decay_rate: float = 0.8,
    clipping_threshold: Optional[float] = 1.0,
    multiply_by_parameter_scale: bool = True,
    min_dim_size_to_factor: int = 128,
    momentum: Optional[float] = None,
    weight_decay_rate: Optional[float] = None,
    epsilon1: float = 1e-30,
    factored: bool = True,
) -> optax.GradientTransformation:
  """Adafactor with t5x's defaults (factored second moments over the two largest dims >= 128)."""
  return optax.adafactor(
      learning_rate=learning_rate,
      min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
      momentum=momentum,
      weight_decay_rate=weight_decay_rate,
      eps=epsilon1,
      factored=factored,
  )


def _decay_mask(params):
  # No weight decay on layer-norm scales (1-D), as is usual for AdamW on transformers.
  import jax

  return jax.tree_util.tree_map(lambda p: jnp.ndim(p) > 1, params)


@gin.configurable(module="optimizers")
def adamw(
    learning_rate: LearningRate,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay_layer_norms: bool = False,
) -> optax.GradientTransformation:
  """AdamW (HF Trainer defaults: betas 0.9/0.999, eps 1e-8, weight decay 0)."""
  return optax.adamw(
      learning_rate=learning_rate,
      b1=b1,
      b2=b2,
      eps=eps,
      weight_decay=weight_decay,
      mask=None if decay_layer_norms else _decay_mask,
  )


@gin.configurable(module="optimizers")
def create_optimizer(
    optimizer_fn: Callable[..., optax.GradientTransformation] = adafactor,
    learning_rate: LearningRate = gin.REQUIRED,
    grad_clip_norm: Optional[float] = None,
) -> optax.GradientTransformation:
  """`optimizer_fn(learning_rate=...)`, preceded by global-norm clipping when grad_clip_norm is set."""
  if isinstance(learning_rate, (int, float)):
    learning_rate = float(learning_rate)
  opt = optimizer_fn(learning_rate=learning_rate)
  if grad_clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(grad_clip_norm), opt)
  return opt


def learning_rate_at(learning_rate: LearningRate, step) -> jnp.ndarray:
  """The learning rate a schedule (or constant) gives at `step`, for logging."""
  return (
      learning_rate(step)
      if callable(learning_rate)
      else jnp.asarray(learning_rate, jnp.float32)
  )
