"""Weight-only int8 inference: an int8 dense layer on the dense seam, and the load-time conversion.

Checkpoints stay float. `tkx infer`, `eval`, `generate` and `serve` read the float
parameters as always and, with `--quantize int8` (gin:
`quantize.quantize_checkpoint.mode = 'int8'`), convert them once after loading
(`quantize_checkpoint`, called by `tkx.checkpoints.directory.load`):

* every projection of the dense seam (attention query/key/value/out of all three
  attentions, MLP wi / wi_0 / wi_1 / wo; see `network`'s module doc) keeps its
  `kernel` as int8 [in, out] plus a float32 `kernel_scale` [out]: symmetric
  absmax per output channel, `kernel = round(w / scale)` in [-127, 127] with
  `scale = max|w[:, j]| / 127`;
* the token embedding, the output layer (`decoder/logits_dense`, T5 1.1 / mT5),
  layer norms and relative position biases stay float: they are a small part of
  the weights of a T5 of any size except the smallest (vocabulary-dominated) ones,
  and the logits' argmax is the part of decoding most sensitive to rounding.

`Int8Dense` (registered as dense layer "int8") computes `(x @ kernel) * scale` with
`x` and the product in the model's activation dtype (bfloat16 / float32): weights
take a quarter of float32's bytes in memory, activations are not quantized. Its
kernel and scale carry the float kernel's logical axes (the scale the output
axis), so the quantized parameters shard as the float ones on any mesh; the
conversion runs jitted straight into those shardings.

Contract:
- `QuantizeMode` (NONE, INT8) and `QuantizeMode.parse(value, name)`: the one parser of a
  mode (a ConfigError naming `name` otherwise); `quantize_flag(text)`: the `--quantize`
  flag's value for its gin binding (`tkx.commands.infer.DECODE_FLAGS`).
- `quantize_checkpoint(loaded, partitioner, mode=gin)`: a `LoadedCheckpoint` with the
  quantized model and parameters (the same one for NONE).
- `quantize_model(model)`, `quantize_params(params, quantized_model, partitioner=None)`,
  `quantize_kernel(w, in_axis)`: the steps, for programs and benchmarks.
- `params_bytes(params)`: bytes of a parameter tree (arrays or ShapeDtypeStructs).
"""

import dataclasses
import enum
import logging
from typing import Any, Callable, Mapping, Sequence, Union

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from tkx import errors
from tkx.models import network

log = logging.getLogger(__name__)

INT8_LAYER = "int8"
_INT8_MAX = 127


class QuantizeMode(enum.Enum):
  """How `infer`, `eval`, `generate` and `serve` hold the projection kernels."""

  NONE = "none"  # float, as in the checkpoint
  INT8 = "int8"  # int8 kernels + float32 per-output-channel scales

  @classmethod
  def parse(
      cls, value: Union["QuantizeMode", str], name: str
  ) -> "QuantizeMode":
    """The mode a flag or gin value names; a ConfigError naming `name` otherwise."""
    if isinstance(value, cls):
      return value
    try:
      return cls(str(value).lower())
    except ValueError:
      raise errors.ConfigError(
          f"{name}: unknown {value!r}; choose from "
          f"{', '.join(m.value for m in cls)}"
      ) from None


def quantize_flag(text: str) -> str:
  """`--quantize int8` -> the mode's name for its gin binding; a ConfigError naming the flag otherwise."""
  return QuantizeMode.parse(text, "--quantize").value


# ------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------
def _zeros(rng, shape, dtype):
  del rng
  return jnp.zeros(shape, dtype)


@network.register_dense_layer(INT8_LAYER)
class Int8Dense(nn.Module):
  """`network.Dense` with an int8 `kernel` [in, out] and a `kernel_scale` [out]: (x @ kernel) * scale.

  For inference: its parameters come from `quantize_params` (it initialises
  zeros and ones), and int8 parameters take no gradients.
  """

  features: int
  kernel_axes: Sequence[str]
  kernel_init: Callable = (
      None  # Dense's keyword; the kernel comes from quantize_params
  )
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32  # the scale's dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    axes = tuple(self.kernel_axes)
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(_zeros, axes),
        (x.shape[-1], self.features),
        jnp.int8,
    )
    scale = self.param(
        "kernel_scale",
        nn.with_logical_partitioning(nn.initializers.ones, axes[-1:]),
        (self.features,),
        self.param_dtype,
    )
    # One [tokens, in] @ [in, out] matmul as Dense; int8 -> dtype is exact (|k| <= 127).
    y = jnp.dot(
        jnp.asarray(x, self.dtype).reshape((-1, x.shape[-1])),
        jnp.asarray(kernel, self.dtype),
    )
    y = y * jnp.asarray(scale, self.dtype)
    return y.reshape(x.shape[:-1] + (self.features,))


# ------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------
def quantize_kernel(w: jax.Array, in_axis: int) -> tuple[jax.Array, jax.Array]:
  """(int8 kernel, float32 scale without `in_axis`): symmetric absmax per output channel."""
  w = jnp.asarray(w, jnp.float32)
  absmax = jnp.max(jnp.abs(w), axis=in_axis, keepdims=True)
  scale = jnp.where(
      absmax > 0, absmax / _INT8_MAX, 1.0
  )  # an all-zero column stays 0
  q = jnp.clip(jnp.round(w / scale), -_INT8_MAX, _INT8_MAX).astype(jnp.int8)
  return q, jnp.squeeze(scale, in_axis)


def quantize_model(model):
  """The same model with `T5Config.dense_layer = 'int8'` (a T5 `EncoderDecoderModel` over the plain dense layer)."""
  config = getattr(model, "config", None)
  if config is None or not hasattr(model, "with_module"):
    raise errors.ConfigError(
        f"--quantize int8 applies to T5 models (EncoderDecoderModel); this checkpoint's "
        f"model is a {type(model).__name__}"
    )
  if config.dense_layer != "dense":
    raise errors.ConfigError(
        f"--quantize int8 quantizes T5Config.dense_layer 'dense'; this model's is "
        f"{config.dense_layer!r} (merge it into a plain model first, e.g. with "
        "`tkx export-checkpoint`)"
    )
  quantized = dataclasses.replace(config, dense_layer=INT8_LAYER)
  return model.with_module(model.module.clone(config=quantized))


def _convert(params: Mapping, axes: Mapping) -> dict:
  """Float params -> the tree `axes` (the quantized model's logical axes) describes."""
  out = {}
  for name, value in params.items():
    value_axes = axes[name]
    if not isinstance(value, Mapping):
      out[name] = value
    elif "kernel_scale" in value_axes:
      kernel_axes = tuple(value_axes["kernel"])
      scale_axes = set(value_axes["kernel_scale"])
      # The input axis is the kernel's one the scale lacks ([in, out], or [layers, in, out] scanned).
      (in_axis,) = [i for i, a in enumerate(kernel_axes) if a not in scale_axes]
      kernel, scale = quantize_kernel(value["kernel"], in_axis)
      out[name] = {"kernel": kernel, "kernel_scale": scale}
    else:
      out[name] = _convert(value, value_axes)
  return out


def quantize_params(params, quantized_model, partitioner=None):
  """Float parameters -> `quantized_model`'s (int8 kernels + scales), placed with its shardings.

  Without a partitioner the result stays where jit puts it (one device).
  """
  from tkx.models import base

  axes = quantized_model.params_logical_axes(base.init_input_shapes())
  convert = lambda p: _convert(p, axes)  # noqa: E731
  if partitioner is None:
    return jax.jit(convert)(params)
  # The float params keep their own shardings (committed arrays); the result gets the quantized model's.
  shardings = base.param_shardings(quantized_model, partitioner)
  return jax.jit(convert, out_shardings=shardings)(params)


def params_bytes(params) -> int:
  """Bytes of a parameter tree's arrays (or ShapeDtypeStructs)."""
  return sum(
      int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
      for x in jax.tree_util.tree_leaves(params)
  )


@gin.configurable(module="quantize")
def quantize_checkpoint(
    loaded, partitioner, mode: Union[QuantizeMode, str] = QuantizeMode.NONE
):
  """`loaded` (a `LoadedCheckpoint`) with its model and parameters quantized as `mode` says.

  `mode` is bound by `--quantize` (gin: `quantize.quantize_checkpoint.mode`).
  """
  from tkx import multihost

  mode = QuantizeMode.parse(mode, "quantize.quantize_checkpoint.mode")
  if mode is QuantizeMode.NONE:
    return loaded
  model = quantize_model(loaded.model)
  before = params_bytes(loaded.params)
  params = quantize_params(loaded.params, model, partitioner)
  if multihost.is_primary_host():
    log.info(
        "quantized the projection kernels to int8 (weight-only, per output channel): "
        "parameters %.1f MB -> %.1f MB",
        before / 1e6,
        params_bytes(params) / 1e6,
    )
  return dataclasses.replace(
      loaded, model=model, params=params, config=model.config
  )
