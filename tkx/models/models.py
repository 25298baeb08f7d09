"""EncoderDecoderModel: initialisation, loss, scoring and cached decoding.

Follows t5x's `models.EncoderDecoderModel`: batches are SeqIO
`EncDecFeatureConverter` outputs, the loss is cross entropy with z-loss and
optional label smoothing, and `predict_batch` runs a decoding function
(`tkx.decoding.greedy`, `beam_search`, `temperature_sample`) over a KV cache.

Decoding interface (t5x's; see `tkx.decoding`, flattened beams as in t5x):
  decode_fn(inputs=, cache=, tokens_to_logits=, eos_id=, num_decodes=, **kwargs)
      -> (sequences [batch, num_decodes, max_decode_length], scores [batch, num_decodes]),
  best decode last. `inputs` are t5x's decoder prompt inputs, zeros
  [batch, max_decode_length] (start token 0, no prompt), and `cache` has batch
  `batch`; decode_fn expands it to batch*num_decodes itself (each array
  repeated along axis 0; `cache_index` scalars are shared). `tokens_to_logits(state)`
  reads `state.cur_token` [batch*num_decodes, 1] and `state.cache` and returns
  (float32 logits [batch*num_decodes, vocab], new_cache). The encoder output
  given to it is already repeated num_decodes times (example-major).
"""

import copy
import functools
import math
import enum
from typing import Any, Callable, Mapping, Optional, Union

import gin
import jax
import jax.numpy as jnp
from flax import linen as nn

from tkx import decoding, errors
from tkx.models import base
from tkx.models import network  # noqa: F401  (registers network.* with gin)
from tkx.models.base import init_input_shapes  # noqa: F401  (models.init_input_shapes, as before)

Array = jax.Array
PyTree = Any

_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
)
_PACKING_FEATURES = (
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
)


# -----------------------------------------------------------------------------
# Losses (t5x.losses conventions).
# -----------------------------------------------------------------------------
def cross_entropy_with_logits(
    logits: Array,
    targets: Array,
    z_loss: float,
    confidence: float = 1.0,
    low_confidence: float = 0.0,
):
  """Per-token cross entropy against a (smoothed) one-hot target, plus z_loss * log(Z)^2.

  The target distribution puts `confidence` on the label and `low_confidence`
  on every other token; it is never materialised ([batch, length, vocab] is
  large for mT5). Returns (total, z_loss part).
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  label_logp = (
      jnp.take_along_axis(
          logits, targets[..., None].astype(jnp.int32), axis=-1
      )[..., 0]
      - log_z
  )
  loss = -(confidence - low_confidence) * label_logp
  if low_confidence:
    loss = loss - low_confidence * (
        jnp.sum(logits, axis=-1) - logits.shape[-1] * log_z
    )
  z = z_loss * jnp.square(log_z)
  return loss + z, z


def compute_weighted_cross_entropy(
    logits: Array,
    targets: Array,
    weights: Optional[Array] = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
):
  """Sums over tokens of (loss, z_loss) and the weight sum.

  With label smoothing the target puts 1-ls on the label and ls/(V-1) on every
  other token; the entropy of that distribution is subtracted so a perfect
  model still reaches 0 (as in t5x).
  """
  if logits.ndim != targets.ndim + 1:
    raise ValueError(
        f"logits {logits.shape} and targets {targets.shape} do not match"
    )
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  normalizing_constant = -(
      confidence * math.log(confidence)
      + (vocab_size - 1) * low_confidence * math.log(low_confidence + 1e-20)
  )
  total, z = cross_entropy_with_logits(
      logits, targets, z_loss, confidence, low_confidence
  )
  total = total - normalizing_constant
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  weights = weights.astype(jnp.float32)
  return jnp.sum(total * weights), jnp.sum(z * weights), jnp.sum(weights)


# -----------------------------------------------------------------------------
# Decoding helpers.
# -----------------------------------------------------------------------------
def _expand(x: Array, n: int) -> Array:
  """Repeats each row n times in place (t5x's flattened beams: row b * n + j)."""
  return x if (n == 1 or x.ndim == 0) else jnp.repeat(x, n, axis=0)


class LossNormalizingFactor(enum.Enum):
  """What the summed token losses of a batch are divided by, when not a fixed number (t5x's names)."""

  NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"  # non-padding target tokens


gin.constants_from_enum(LossNormalizingFactor, module="models")

# Also accepted as strings; t5x's NUM_TARGET_TOKENS counts the same tokens here
# (padding has zero loss weight).
_LOSS_NORMALIZER_NAMES = {
    "NUM_REAL_TARGET_TOKENS": LossNormalizingFactor.NUM_REAL_TARGET_TOKENS,
    "NUM_TARGET_TOKENS": LossNormalizingFactor.NUM_REAL_TARGET_TOKENS,
}


def loss_normalizer(value) -> Optional[float]:
  """None (divide by the batch's real target tokens) or the fixed number to divide by.

  Accepts None, a positive number, a `LossNormalizingFactor` or its name.
  """
  if value is None or isinstance(value, LossNormalizingFactor):
    return None
  if isinstance(value, str):
    if value.upper() not in _LOSS_NORMALIZER_NAMES:
      raise errors.ConfigError(
          f"loss_normalizing_factor: unknown {value!r}; use None or "
          f"{' / '.join(repr(n) for n in _LOSS_NORMALIZER_NAMES)} (divide by the "
          "number of target tokens) or a positive number"
      )
    return None
  if isinstance(value, bool) or not float(value) > 0:
    raise errors.ConfigError(
        f"loss_normalizing_factor must be None, a positive number or "
        f"{' / '.join(repr(n) for n in _LOSS_NORMALIZER_NAMES)}, got {value!r}"
    )
  return float(value)


# -----------------------------------------------------------------------------
# Logical axes.
# -----------------------------------------------------------------------------
def get_logical_axes(boxed_variables: PyTree) -> PyTree:
  """PartitionSpecs of logical axis names for a boxed variables tree (as `init` returns it)."""
  return nn.get_partition_spec(boxed_variables)


# -----------------------------------------------------------------------------
# The model.
# -----------------------------------------------------------------------------
@gin.configurable(module="models")
class EncoderDecoderModel(base.BaseModel):
  """T5-style encoder-decoder wrapper around `network.Transformer` (t5x interface).

  Owns its compiled initialisers (`get_initial_variables` jits one per input
  shape and dtype and keeps it as long as the model lives).
  """

  def __init__(
      self,
      module: nn.Module,
      input_vocabulary=None,
      output_vocabulary=None,
      z_loss: float = 1e-4,
      label_smoothing: float = 0.0,
      loss_normalizing_factor: Union[
          None, float, str, "LossNormalizingFactor"
      ] = None,
  ):
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary
    self.z_loss = float(z_loss)
    self.label_smoothing = float(label_smoothing)
    # None: per target token; else a fixed number every batch's summed loss is divided by.
    self.loss_normalizing_factor = loss_normalizer(loss_normalizing_factor)
    # Jitted initialisers by (input shapes, input types, unbox): running the
    # initialisers op by op costs seconds even for tiny models.
    self._init_fns: dict = {}

  @property
  def config(self):
    return self.module.config

  def with_module(self, module: nn.Module) -> "EncoderDecoderModel":
    """This model (vocabularies, loss settings) over another module, e.g. a quantized one; own initialisers."""
    model = copy.copy(self)
    model.module = module
    model._init_fns = {}
    return model

  # --- initialisation -------------------------------------------------------
  def _init_boxed(
      self,
      rng: Array,
      input_shapes: Mapping[str, tuple],
      input_types: Optional[Mapping[str, Any]] = None,
  ) -> PyTree:
    input_types = input_types or {}
    enc_shape = tuple(input_shapes["encoder_input_tokens"])
    dec_shape = tuple(
        input_shapes.get(
            "decoder_input_tokens", input_shapes.get("decoder_target_tokens")
        )
    )
    enc = jnp.ones(
        enc_shape, input_types.get("encoder_input_tokens", jnp.int32)
    )
    dec = jnp.ones(
        dec_shape, input_types.get("decoder_input_tokens", jnp.int32)
    )
    params_rng, dropout_rng = jax.random.split(rng)
    return self.module.init(
        {"params": params_rng, "dropout": dropout_rng},
        enc,
        dec,
        dec,
        enable_dropout=False,
    )

  def get_initial_variables(
      self,
      rng: Array,
      input_shapes: Mapping[str, tuple],
      input_types: Optional[Mapping[str, Any]] = None,
      *,
      unbox: bool = True,
  ) -> PyTree:
    """{"params": ...} with plain arrays (unbox=False keeps the LogicallyPartitioned boxes)."""
    key = (
        tuple(sorted((k, tuple(v)) for k, v in input_shapes.items())),
        tuple(
            sorted(
                (k, jnp.dtype(v).name) for k, v in (input_types or {}).items()
            )
        ),
        unbox,
    )
    if key not in self._init_fns:

      def init(rng):
        variables = self._init_boxed(rng, dict(key[0]), dict(key[1]))
        return nn.meta.unbox(variables) if unbox else variables

      self._init_fns[key] = jax.jit(init)
    return self._init_fns[key](rng)

  def variables_logical_axes(self, input_shapes: Mapping[str, tuple]) -> PyTree:
    """Logical PartitionSpec per variable, computed with eval_shape (no allocation)."""
    boxed = jax.eval_shape(
        functools.partial(self._init_boxed, input_shapes=input_shapes),
        jax.random.PRNGKey(0),
    )
    return get_logical_axes(boxed)

  # --- forward / loss -------------------------------------------------------
  @staticmethod
  def _check_batch(batch: Mapping[str, Array]):
    missing = [k for k in _FEATURES if k not in batch]
    if missing:
      raise KeyError(
          f"batch lacks {missing}; it has {sorted(batch)} (expected EncDecFeatureConverter output)"
      )

  def _compute_logits(
      self,
      params: PyTree,
      batch: Mapping[str, Array],
      dropout_rng: Optional[Array] = None,
  ) -> Array:
    self._check_batch(batch)
    packing = {k: batch[k] for k in _PACKING_FEATURES if k in batch}
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        enable_dropout=dropout_rng is not None,
        rngs=rngs,
        **packing,
    )

  def loss_fn(
      self,
      params: PyTree,
      batch: Mapping[str, Array],
      dropout_rng: Optional[Array],
  ):
    """(loss, metrics); loss = summed token losses / number of target tokens."""
    logits = self._compute_logits(params, batch, dropout_rng)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = (targets > 0).astype(jnp.float32)
    loss_sum, z_sum, weight_sum = compute_weighted_cross_entropy(
        logits,
        targets,
        weights,
        label_smoothing=self.label_smoothing,
        z_loss=self.z_loss,
    )
    if self.loss_normalizing_factor is None:
      denom = jnp.maximum(weight_sum, 1.0)
    else:
      denom = jnp.float32(self.loss_normalizing_factor)
    loss = loss_sum / denom
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
    metrics = {
        "loss": loss,
        "z_loss": z_sum / denom,
        "cross_ent_loss": (loss_sum - z_sum) / denom,
        "accuracy": correct / jnp.maximum(weight_sum, 1.0),
        "num_tokens": weight_sum,
        "num_examples": jnp.float32(targets.shape[0]),
    }
    return loss, metrics

  def score_batch(self, params: PyTree, batch: Mapping[str, Array]) -> Array:
    """Sum of target-token log-likelihoods per example [batch] (no z-loss, no dropout)."""
    logits = self._compute_logits(params, batch, None)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = targets > 0
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_lp = jnp.take_along_axis(
        log_probs, targets[..., None].astype(jnp.int32), axis=-1
    )[..., 0]
    return jnp.sum(token_lp * weights.astype(jnp.float32), axis=-1)

  # --- cached decoding ------------------------------------------------------
  def initial_cache(
      self,
      params: PyTree,
      encoded: Array,
      encoder_input_tokens: Array,
      max_decode_length: int,
  ) -> PyTree:
    """The decoding cache of a batch: zero self-attention keys/values for max_decode_length
    tokens, and the encoder outputs' keys/values of every cross-attention layer, projected once.

    Made by the decoder's cache-creating call (decode=True over max_decode_length
    placeholder tokens); under jit XLA drops the rest of that call, whose outputs
    are unused.
    """
    dec = jnp.ones((encoded.shape[0], max_decode_length), jnp.int32)
    _, variables = self.module.apply(
        {"params": params},
        encoded,
        encoder_input_tokens,
        dec,
        dec,
        enable_dropout=False,
        decode=True,
        max_decode_length=max_decode_length,
        mutable=["cache"],
        method=self.module.decode,
    )
    return variables["cache"]

  def _compute_logits_from_slice(
      self,
      decoding_state,
      params: PyTree,
      encoded_inputs: Array,
      raw_inputs: Array,
      max_decode_length: int,
  ):
    """tokens_to_logits for decode_fn: one decoder step on the cache."""
    token = decoding_state.cur_token
    logits, new_vars = self.module.apply(
        {"params": params, "cache": decoding_state.cache},
        encoded_inputs,
        raw_inputs,
        token,
        token,
        enable_dropout=False,
        decode=True,
        max_decode_length=max_decode_length,
        mutable=["cache"],
        method=self.module.decode,
    )
    return logits[:, 0, :], new_vars["cache"]

  def predict_batch_with_aux(
      self,
      params: PyTree,
      batch: Mapping[str, Array],
      rng: Optional[Array] = None,
      *,
      decode_fn: Optional[Callable] = None,
      max_decode_length: Optional[int] = None,
      num_decodes: int = 1,
      return_all_decodes: bool = False,
      **decode_kwargs,
  ):
    """(decodes, {"scores": ...}); decodes [batch, len] or [batch, num_decodes, len] (best last)."""
    inputs = batch["encoder_input_tokens"]
    if max_decode_length is None:
      max_decode_length = (
          batch["decoder_input_tokens"].shape[1]
          if "decoder_input_tokens" in batch
          else 128
      )
    decode_fn = decode_fn or decoding.greedy
    batch_size = inputs.shape[0]
    encoded = self.module.apply(
        {"params": params},
        inputs,
        enable_dropout=False,
        method=self.module.encode,
    )
    cache = self.initial_cache(params, encoded, inputs, max_decode_length)
    tokens_to_logits = functools.partial(
        self._compute_logits_from_slice,
        params=params,
        encoded_inputs=decoding.flat_batch_beam_expand(encoded, num_decodes),
        raw_inputs=decoding.flat_batch_beam_expand(inputs, num_decodes),
        max_decode_length=max_decode_length,
    )
    if rng is not None:  # t5x's name for the sampling key
      decode_kwargs["decode_rng"] = rng
    # t5x's decoder prompt: the start token (0) and no prompt, one position per output.
    if self.config.scan_layers:
      # Scanned decoder: cache arrays are [layers, batch, ...] (t5x's cache_offset).
      decode_kwargs.setdefault("cache_offset", 1)
    decodes, scores = decode_fn(
        inputs=jnp.zeros((batch_size, max_decode_length), jnp.int32),
        cache=cache,
        tokens_to_logits=tokens_to_logits,
        eos_id=self.eos_id,
        num_decodes=num_decodes,
        **decode_kwargs,
    )
    if return_all_decodes:
      return decodes, {"scores": scores}
    return decodes[:, -1, :], {"scores": scores[:, -1]}
