"""T5 encoder-decoder in Flax linen, with t5x parameter names and logical axes.

Every parameter is created through `nn.with_logical_partitioning`, so the
variables from `init` carry `nn.LogicallyPartitioned` boxes and
`nn.get_partition_spec(variables)` gives the logical axes of every parameter
(see `models.EncoderDecoderModel.params_logical_axes`). Activations are
constrained with `nn.with_logical_constraint` (a no-op without axis rules).

Conventions taken from T5 / t5x:
  * RMS layer norm without mean subtraction or bias, pre-norm residual blocks.
  * No biases anywhere; attention logits are not scaled by 1/sqrt(head_dim):
    the scaling is folded into the query kernel initialisation.
  * One relative position bias table per stack, shared by its layers;
    bidirectional buckets in the encoder, causal buckets in the decoder.
  * Tied logits (T5 1.0) divide by sqrt(emb_dim); T5 1.1 / mT5 use an untied
    `decoder/logits_dense`.
  * Parameters are stored in `param_dtype`, computation runs in `dtype`;
    logits and softmaxes are float32.
  * Packed examples (segment ids) attend only within their segment; see
    `_row_positions` for why the relative positions need no per-example ids.

The dense layer is a seam: every attention projection (query, key, value, out)
and every MLP projection (wi / wi_0, wi_1, wo) is built by one dense module,
chosen by name with `T5Config.dense_layer` (gin: `network.T5Config.dense_layer
= 'NAME'`) from the layers registered with `@register_dense_layer('NAME')`;
`Dense` ("dense") is the default. A replacement (an adapter, a quantized
kernel) is one module with Dense's constructor keywords (`features`,
`kernel_axes`, `kernel_init`, `dtype`, `param_dtype`, `name`) mapping
[..., in] to [..., features]; its parameters live under the projection's name
(`.../attention/query/...`), beside or instead of `kernel`, and `self.name` /
`self.scope.path` tell it which projection it is. The output layer
(`decoder/logits_dense`) stays a plain `Dense`. See docs/models.md.
"""

import functools
import logging
from typing import Any, Callable, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from tkx import errors
from tkx.models import prompt as prompt_lib
from tkx.models.config import AttentionImpl, T5Config

log = logging.getLogger(__name__)

Array = jax.Array
Initializer = Callable[..., Array]

# Large negative bias for masked attention positions (float32 softmax).
_MASK_VALUE = -1e10


def _activation(name: str) -> Callable[[Array], Array]:
  if name == "relu":
    return nn.relu
  if name in ("gelu", "gelu_new"):  # tanh approximation = HF gelu_new (T5 1.1)
    return functools.partial(nn.gelu, approximate=True)
  if name == "gelu_exact":
    return functools.partial(nn.gelu, approximate=False)
  if name in ("silu", "swish"):
    return nn.silu
  if name == "linear":
    return lambda x: x
  raise ValueError(f"unknown activation {name!r}")


def _param(
    module: nn.Module,
    name: str,
    init: Initializer,
    shape: Sequence[int],
    dtype,
    axes: Sequence[str],
) -> Array:
  """Creates a parameter boxed with its logical axis names (unboxed on use)."""
  return module.param(
      name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype
  )


# -----------------------------------------------------------------------------
# Building blocks.
# -----------------------------------------------------------------------------
class LayerNorm(nn.Module):
  """T5 RMS norm: x / sqrt(mean(x^2) + eps) * scale, statistics in float32."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    mean2 = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = jnp.asarray(x * jax.lax.rsqrt(mean2 + self.epsilon), self.dtype)
    scale = _param(
        self,
        "scale",
        nn.initializers.ones,
        (x.shape[-1],),
        self.param_dtype,
        ("embed",),
    )
    return y * jnp.asarray(scale, self.dtype)


# -----------------------------------------------------------------------------
# The dense layer seam.
# -----------------------------------------------------------------------------
# Name (T5Config.dense_layer) -> dense module class (or a factory taking its keywords).
DENSE_LAYERS: dict = {}


def register_dense_layer(name: str):
  """Class decorator: the module becomes `T5Config.dense_layer = name` for attention and MLP projections.

  Re-registering a name is allowed only for the same class (a module imported
  again); another class under a taken name is a ValueError.
  """

  def register(layer):
    known = DENSE_LAYERS.get(name)
    if known is not None and _qualified_name(known) != _qualified_name(layer):
      raise ValueError(
          f"dense layer {name!r} is already registered as {_qualified_name(known)}"
      )
    DENSE_LAYERS[name] = layer
    return layer

  return register


def _qualified_name(layer) -> str:
  layer = getattr(layer, "func", layer)  # functools.partial factories
  return f"{layer.__module__}.{layer.__qualname__}"


def dense_layer(name: str):
  """The dense module registered as `name`; a ConfigError naming T5Config.dense_layer otherwise."""
  try:
    return DENSE_LAYERS[name]
  except KeyError:
    raise errors.ConfigError(
        f"T5Config.dense_layer: unknown {name!r}; registered: "
        f"{', '.join(repr(n) for n in sorted(DENSE_LAYERS))} (import the module "
        "that registers it, e.g. with an `import` line in the gin file)"
    ) from None


def dense_layer_module(name: str) -> str:
  """The Python module that registers dense layer `name` (what a model.gin must import)."""
  layer = dense_layer(name)
  return getattr(layer, "func", layer).__module__


@register_dense_layer("dense")
class Dense(nn.Module):
  """Bias-free dense layer with a 2-D kernel [in, out] and named axes (T5's projections)."""

  features: int
  kernel_axes: Sequence[str]
  kernel_init: Initializer = nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal"
  )
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return self.project(x)

  def project(self, x: Array) -> Array:
    """x @ kernel, creating the kernel; what a subclass (an adapter) adds its update to."""
    kernel = _param(
        self,
        "kernel",
        self.kernel_init,
        (x.shape[-1], self.features),
        self.param_dtype,
        self.kernel_axes,
    )
    # As one [tokens, in] @ [in, out] matmul: with the leading axes kept, XLA's CPU
    # backward transposes the output gradient through a slow copy (MLP gradients ~1.6x slower).
    y = jnp.dot(
        jnp.asarray(x, self.dtype).reshape((-1, x.shape[-1])),
        jnp.asarray(kernel, self.dtype),
    )
    return y.reshape(x.shape[:-1] + (self.features,))


class Embed(nn.Module):
  """Token embedding [vocab, embed]; `attend` gives tied logits."""

  num_embeddings: int
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = _param(
        self,
        "embedding",
        self.embedding_init,
        (self.num_embeddings, self.features),
        self.param_dtype,
        ("vocab", "embed"),
    )

  def __call__(self, ids: Array) -> Array:
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"token ids must be integers, got {ids.dtype}")
    return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)

  def attend(self, query: Array, dtype=jnp.float32) -> Array:
    return jnp.dot(
        jnp.asarray(query, dtype), jnp.asarray(self.embedding, dtype).T
    )


@functools.lru_cache(maxsize=None)
def _bucket_table(
    bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
  """Bucket of every distance n = query_pos - key_pos, tabulated on the host.

  Index n + max_distance for n in [-max_distance, max_distance]; larger
  distances are clipped (they all fall in the last bucket). Tabulating with
  numpy float32 keeps bucket edges identical to T5's float32 formula instead
  of depending on how a device rounds log().
  """
  n = np.arange(-max_distance, max_distance + 1, dtype=np.int64)
  ret = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int64) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide="ignore"):
    scaled = (
        np.log(n.astype(np.float32) / np.float32(max_exact))
        / np.float32(np.log(max_distance / max_exact))
        * np.float32(num_buckets - max_exact)
    )
  val_if_large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  ret += np.where(is_small, n, val_if_large)
  return ret.astype(np.int32)


def relative_position_bucket(
    relative_position: Array,
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
) -> Array:
  """T5's bucket of relative_position = key_pos - query_pos."""
  table = jnp.asarray(_bucket_table(bidirectional, num_buckets, max_distance))
  n = jnp.clip(-relative_position, -max_distance, max_distance) + max_distance
  return table[n]


class RelativePositionBiases(nn.Module):
  """Per-head scalar bias from bucketed relative positions: rel_embedding [heads, buckets]."""

  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  embedding_init: Initializer = nn.initializers.variance_scaling(
      1.0, "fan_avg", "uniform"
  )

  @nn.compact
  def __call__(
      self, query_positions: Array, key_positions: Array, bidirectional: bool
  ) -> Array:
    """query_positions [b|1, q], key_positions [b|1, k] -> bias [b|1, heads, q, k]."""
    rel = key_positions[:, None, :] - query_positions[:, :, None]  # [b, q, k]
    buckets = relative_position_bucket(
        rel, bidirectional, self.num_buckets, self.max_distance
    )
    table = _param(
        self,
        "rel_embedding",
        self.embedding_init,
        (self.num_heads, self.num_buckets),
        self.param_dtype,
        ("heads", "relpos_buckets"),
    )
    bias = jnp.take(
        jnp.asarray(table, self.dtype), buckets, axis=1
    )  # [heads, b, q, k]
    return jnp.transpose(bias, (1, 0, 2, 3))


@jax.custom_vjp
def _add_shared_bias(logits: Array, bias: Array) -> Array:
  """logits [b, h, q, k] + bias [1, h, q, k] shared by the batch."""
  return logits + bias


def _add_shared_bias_fwd(logits, bias):
  return logits + bias, logits.shape[0]


def _add_shared_bias_bwd(batch, g):
  # The bias gradient sums g over the batch. As a matmul with a ones vector it runs at
  # memory speed; XLA's CPU reduce fusion of the same sum over all layers took ~70 ms.
  ones = jnp.ones((1, batch), g.dtype)
  return g, jnp.dot(ones, g.reshape(batch, -1)).reshape((1,) + g.shape[1:])


_add_shared_bias.defvjp(_add_shared_bias_fwd, _add_shared_bias_bwd)


def _attention_weights(
    logits: Array, mask: Optional[Array], bias: Optional[Array], dtype
) -> Array:
  """softmax(logits + bias) over the keys, masked positions excluded; statistics in float32."""
  logits = logits.astype(jnp.float32)
  if (
      bias is not None
      and bias.shape[0] == 1
      and bias.shape[1:] == logits.shape[1:]
  ):
    logits = _add_shared_bias(logits, bias.astype(jnp.float32))
  elif bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, _MASK_VALUE)
  return jax.nn.softmax(logits, axis=-1).astype(dtype)


# Measured on a 2-core CPU (T5 small shapes): looping over rows pays from about
# 8 x 6 x 512 x 512 float32 logits (50 MB) upwards; at 4 x 6 x 256 x 256 it costs ~4%.
_CHUNK_LOGITS_ABOVE_BYTES = 32 * 2**20


# Backends already told that cuDNN attention runs as XLA there (one log line each).
_CUDNN_FALLBACK_LOGGED = set()


def fused_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Optional[Array],
    bias: Optional[Array],
    dtype,
) -> Array:
  """`jax.nn.dot_product_attention` with T5's conventions (scale 1, bias added before softmax).

  cuDNN's fused kernel on an NVIDIA GPU (it takes the relative-position bias and
  the boolean padding/segment/causal mask, which it folds into the bias);
  elsewhere jax's own XLA implementation of the same function, logged once.
  """
  backend = jax.default_backend()
  implementation = "cudnn" if backend == "gpu" else None
  if implementation is None and backend not in _CUDNN_FALLBACK_LOGGED:
    _CUDNN_FALLBACK_LOGGED.add(backend)
    log.info(
        "attention_impl='cudnn' needs an NVIDIA GPU; on %s it runs "
        "jax.nn.dot_product_attention's XLA implementation",
        backend,
    )
  if bias is not None:
    # cuDNN adds the bias in the activation dtype; the XLA path keeps float32.
    bias = bias.astype(dtype if implementation else jnp.float32)
  return jax.nn.dot_product_attention(
      query.astype(dtype),
      key.astype(dtype),
      value.astype(dtype),
      bias=bias,
      mask=mask,
      scale=1.0,  # T5 folds 1/sqrt(head_dim) into the query initialisation
      implementation=implementation,
  )


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Optional[Array] = None,
    bias: Optional[Array] = None,
    *,
    dtype=jnp.float32,
    dropout_rate: float = 0.0,
    dropout_rng: Optional[Array] = None,
    chunk_rows: Optional[int] = 0,
    impl: AttentionImpl = AttentionImpl.XLA,
) -> Array:
  """softmax(q k^T + bias, masked) v for query [b, q, h, d], key/value [b, k, h, d] -> [b, q, h, d].

  `impl=AttentionImpl.CUDNN` runs `fused_attention` instead, except with
  attention dropout (which jax.nn.dot_product_attention does not offer).

  mask [b|1, 1|h, q, k] (True: attend), bias [1, h, q, k]. With `chunk_rows` > 0
  dividing the batch, the rows go through in chunks of that many, one after
  another: the same numbers, but each chunk's logits fit in the CPU caches.
  Dropout (when `dropout_rng` is given) drops attention weights; chunk i uses
  the key fold_in(dropout_rng, i). `chunk_rows=None` chooses: one row at a time
  on a single CPU device when the whole batch's float32 logits exceed
  `_CHUNK_LOGITS_ABOVE_BYTES`, else the whole batch (on a mesh the batch axis
  is sharded, and a loop over it would serialise the devices; small logits
  gain nothing from the loop's copies).
  """
  if chunk_rows is None:
    logits_bytes = (
        4 * query.shape[0] * query.shape[2] * query.shape[1] * key.shape[1]
    )
    single_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    chunk_rows = (
        1 if (single_cpu and logits_bytes > _CHUNK_LOGITS_ABOVE_BYTES) else 0
    )

  def attend(q, k, v, m, rng, layout="bqhd"):
    kv_layout = layout.replace("q", "k")
    weights = _attention_weights(
        jnp.einsum(f"{layout},{kv_layout}->bhqk", q, k), m, bias, dtype
    )
    if rng is not None:
      keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, weights.shape)
      weights = jnp.where(
          keep,
          weights / jnp.asarray(1.0 - dropout_rate, dtype),
          jnp.zeros((), dtype),
      )
    return jnp.einsum(f"bhqk,{kv_layout}->{layout}", weights, v)

  batch = query.shape[0]
  if dropout_rate <= 0.0:
    dropout_rng = None
  if impl == AttentionImpl.CUDNN and dropout_rng is None:
    return fused_attention(query, key, value, mask, bias, dtype)
  if not chunk_rows or chunk_rows >= batch or batch % chunk_rows:
    return attend(query, key, value, mask, dropout_rng)
  num_chunks = batch // chunk_rows
  chunks = lambda x: x.reshape((num_chunks, chunk_rows) + x.shape[1:])  # noqa: E731
  row_mask = mask is not None and mask.shape[0] == batch
  rngs = (
      None
      if dropout_rng is None
      else jax.vmap(functools.partial(jax.random.fold_in, dropout_rng))(
          jnp.arange(num_chunks)
      )
  )
  # Heads-first once for the whole batch: cheaper than a transposing copy per chunk.
  heads_first = lambda x: chunks(jnp.swapaxes(x, 1, 2))  # noqa: E731
  out = jax.lax.map(
      lambda xs: attend(
          xs[0], xs[1], xs[2], xs[3] if row_mask else mask, xs[4], layout="bhqd"
      ),
      (
          heads_first(query),
          heads_first(key),
          heads_first(value),
          chunks(mask) if row_mask else None,
          rngs,
      ),
  )
  return jnp.swapaxes(out.reshape((batch,) + out.shape[2:]), 1, 2)


class MultiHeadDotProductAttention(nn.Module):
  """T5 attention with 2-D q/k/v/out kernels ([embed, joined_kv], [joined_kv, embed]).

  With decode=True the layer keeps what later decoding steps need in the "cache"
  collection, heads before length ([batch, heads, length, head_dim]) so that each
  step's two small matmuls read the cache in place, with no transposed copy:
    * self-attention (`static_kv=False`): `cached_key`/`cached_value` for
      max_len positions and a scalar `cache_index`. The first decode=True call
      (inputs of length max_len) only creates the zero cache; later calls take
      one token each and append its key/value.
    * attention to the encoder (`static_kv=True`): `encoded_key`/`encoded_value`,
      the projections of `inputs_kv`, computed once by the first decode=True call;
      later calls read them and ignore `inputs_kv`. They are the same for every
      decode of one example, so beam search never reorders them.
  """

  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Initializer = nn.initializers.variance_scaling(
      1.0, "fan_in", "normal"
  )
  static_kv: bool = False
  chunk_rows: Optional[int] = 0  # see `dot_product_attention`
  # Cached decoding steps always use the XLA path (one query per step).
  attention_impl: AttentionImpl = AttentionImpl.XLA
  # The module of the q/k/v/out projections (see the module doc's dense layer seam).
  dense_cls: Callable[..., nn.Module] = Dense
  # dtype of the `out` projection, which writes into the residual stream (None: dtype;
  # float32 under float16, see `T5Config.residual_dtype`).
  output_dtype: Any = None

  @nn.compact
  def __call__(
      self,
      inputs_q: Array,
      inputs_kv: Array,
      mask: Optional[Array] = None,
      bias: Optional[Array] = None,
      *,
      decode: bool = False,
      deterministic: bool = True,
  ) -> Array:
    joined = self.num_heads * self.head_dim
    # T5 does not scale attention logits by 1/sqrt(head_dim); the factor lives in
    # the query initialisation instead (equivalent under Adafactor).
    depth_scaling = float(np.sqrt(self.head_dim))
    query_init = lambda *a: self.kernel_init(*a) / depth_scaling  # noqa: E731
    dense = functools.partial(
        self.dense_cls,
        features=joined,
        kernel_axes=("embed", "joined_kv"),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    split = lambda x: x.reshape(x.shape[:2] + (self.num_heads, self.head_dim))  # noqa: E731
    axes = ("batch", "length", "heads", "kv")
    query = nn.with_logical_constraint(
        split(dense(kernel_init=query_init, name="query")(inputs_q)), axes
    )
    project = lambda name: nn.with_logical_constraint(  # noqa: E731
        split(dense(kernel_init=self.kernel_init, name=name)(inputs_kv)), axes
    )

    if decode:
      return self._decode_step(
          query, project, mask, bias, inputs_q.shape[-1]
      )  # no dropout when decoding
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    out = dot_product_attention(
        query,
        project("key"),
        project("value").astype(self.dtype),
        mask,
        bias,
        dtype=self.dtype,
        dropout_rate=self.dropout_rate,
        dropout_rng=dropout_rng,
        chunk_rows=self.chunk_rows,
        impl=self.attention_impl,
    )
    return self._output(out, inputs_q.shape[-1])

  def _output(self, out, features):
    out = out.reshape(out.shape[:2] + (self.num_heads * self.head_dim,))
    out = nn.with_logical_constraint(out, ("batch", "length", "joined_kv"))
    return self.dense_cls(
        features=features,
        kernel_axes=("joined_kv", "embed"),
        kernel_init=self.kernel_init,
        dtype=self.output_dtype or self.dtype,
        param_dtype=self.param_dtype,
        name="out",
    )(out)

  def _decode_step(self, query, project, mask, bias, features):
    """Attention of `query` [batch, q, heads, head_dim] over the cached keys/values."""
    cache_axes = ("batch", "heads", "length", "kv")
    heads_first = lambda x: nn.with_logical_constraint(jnp.swapaxes(x, 1, 2), cache_axes)  # noqa: E731
    if self.static_kv:
      is_initialized = self.has_variable("cache", "encoded_key")
      if is_initialized:
        key = self.variable("cache", "encoded_key").value
        value = self.variable("cache", "encoded_value").value
      else:
        key, value = heads_first(project("key")), heads_first(project("value"))
        self.variable("cache", "encoded_key", lambda: key)
        self.variable("cache", "encoded_value", lambda: value)
    else:
      is_initialized = self.has_variable("cache", "cached_key")
      step_key, step_value = heads_first(project("key")), heads_first(
          project("value")
      )
      cached_key = self.variable(
          "cache", "cached_key", jnp.zeros, step_key.shape, step_key.dtype
      )
      cached_value = self.variable(
          "cache", "cached_value", jnp.zeros, step_value.shape, step_value.dtype
      )
      cache_index = self.variable(
          "cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32)
      )
      if is_initialized:
        if query.shape[1] != 1:
          raise ValueError(
              f"cached decoding takes one token per step, got length {query.shape[1]}"
          )
        idx = cache_index.value
        key = jax.lax.dynamic_update_slice(
            cached_key.value,
            step_key.astype(cached_key.value.dtype),
            (0, 0, idx, 0),
        )
        value = jax.lax.dynamic_update_slice(
            cached_value.value,
            step_value.astype(cached_value.value.dtype),
            (0, 0, idx, 0),
        )
        cached_key.value = nn.with_logical_constraint(key, cache_axes)
        cached_value.value = nn.with_logical_constraint(value, cache_axes)
        cache_index.value = idx + 1
        # Only positions already written are visible.
        max_length = key.shape[2]
        step_mask = (jnp.arange(max_length) <= idx)[None, None, None, :]
        mask = step_mask if mask is None else jnp.logical_and(mask, step_mask)
        if (
            bias is not None
        ):  # bias rows cover all max_length query positions; keep row idx.
          bias = jax.lax.dynamic_slice(
              bias,
              (0, 0, idx, 0),
              (bias.shape[0], bias.shape[1], 1, bias.shape[3]),
          )
      else:  # the cache-creating call attends over its own inputs, as without a cache
        key, value = step_key, step_value
    logits = jnp.einsum("bhqd,bhkd->bhqk", heads_first(query), key)
    weights = _attention_weights(logits, mask, bias, self.dtype)
    out = jnp.einsum("bhqk,bhkd->bqhd", weights, value.astype(self.dtype))
    return self._output(out, features)


class MlpBlock(nn.Module):
  """wi (or gated wi_0 * wi_1 ...) -> dropout -> wo."""

  mlp_dim: int
  activations: Sequence[str] = ("relu",)
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal"
  )
  # The module of the wi / wo projections (see the module doc's dense layer seam).
  dense_cls: Callable[..., nn.Module] = Dense
  # dtype of the activations' product and of `wo` (None: dtype; float32 under
  # float16, where the product overflows first; see `T5Config.residual_dtype`).
  output_dtype: Any = None

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
    output_dtype = self.output_dtype or self.dtype
    dense = functools.partial(
        self.dense_cls,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    hidden = None
    for i, act in enumerate(self.activations):
      name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      x = dense(features=self.mlp_dim, kernel_axes=("embed", "mlp"), name=name)(
          inputs
      )
      x = _activation(act)(x.astype(output_dtype))
      hidden = x if hidden is None else hidden * x
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    hidden = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(
        hidden, deterministic=deterministic
    )
    return dense(
        features=inputs.shape[-1],
        kernel_axes=("mlp", "embed"),
        dtype=output_dtype,
        name="wo",
    )(hidden)


def _dropout(rate):
  # t5x shares the residual dropout mask along the length axis.
  return nn.Dropout(rate=rate, broadcast_dims=(-2,))


def _layer_norm(cfg: T5Config, name: str) -> LayerNorm:
  return LayerNorm(
      epsilon=cfg.layer_norm_epsilon,
      dtype=cfg.activation_dtype,
      param_dtype=cfg.parameter_dtype,
      name=name,
  )


def _attention(
    cfg: T5Config, name: str, **kwargs
) -> MultiHeadDotProductAttention:
  return MultiHeadDotProductAttention(
      cfg.num_heads,
      cfg.head_dim,
      cfg.activation_dtype,
      cfg.parameter_dtype,
      cfg.dropout_rate,
      chunk_rows=cfg.attention_chunk_rows,
      attention_impl=cfg.attention_impl,
      dense_cls=dense_layer(cfg.dense_layer),
      output_dtype=cfg.residual_dtype,
      name=name,
      **kwargs,
  )


def _mlp_sublayer(cfg: T5Config, x, deterministic: bool):
  """The pre-norm MLP sublayer both stacks end their layers with, and its residual."""
  y = _layer_norm(cfg, "pre_mlp_layer_norm")(x)
  y = MlpBlock(
      cfg.mlp_dim,
      cfg.mlp_activations,
      cfg.dropout_rate,
      cfg.activation_dtype,
      cfg.parameter_dtype,
      dense_cls=dense_layer(cfg.dense_layer),
      output_dtype=cfg.residual_dtype,
      name="mlp",
  )(y, deterministic=deterministic)
  x = x + _dropout(cfg.dropout_rate)(y, deterministic=deterministic)
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  config: T5Config
  scanned: bool = False  # under nn.scan: return (carry, None)

  @nn.compact
  def __call__(self, x, mask, bias, deterministic: bool = True):
    cfg = self.config
    y = _layer_norm(cfg, "pre_attention_layer_norm")(x)
    y = _attention(cfg, "attention")(
        y, y, mask, bias, deterministic=deterministic
    )
    x = x + _dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    x = _mlp_sublayer(cfg, x, deterministic)
    return (x, None) if self.scanned else x


class DecoderLayer(nn.Module):
  config: T5Config
  scanned: bool = False  # under nn.scan: return (carry, None)

  @nn.compact
  def __call__(
      self,
      x,
      encoded,
      decoder_mask,
      encoder_decoder_mask,
      bias,
      deterministic: bool = True,
      decode: bool = False,
  ):
    cfg = self.config
    y = _layer_norm(cfg, "pre_self_attention_layer_norm")(x)
    y = _attention(cfg, "self_attention")(
        y, y, decoder_mask, bias, decode=decode, deterministic=deterministic
    )
    x = x + _dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = _layer_norm(cfg, "pre_cross_attention_layer_norm")(x)
    y = _attention(cfg, "encoder_decoder_attention", static_kv=True)(
        y,
        encoded,
        encoder_decoder_mask,
        decode=decode,
        deterministic=deterministic,
    )
    x = x + _dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    x = _mlp_sublayer(cfg, x, deterministic)
    return (x, None) if self.scanned else x


# jax.checkpoint policies by t5x / flaxformer name: what the backward pass may keep.
_REMAT_POLICIES = {
    "full": None,  # keep nothing but the layer inputs
    "minimal": (
        jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    ),  # keep weight matmul outputs
}


def _layer_class(layer_cls, policy: str, static_argnums):
  """The layer, rematerialised in the backward pass unless policy is "none"."""
  if policy == "none":
    return layer_cls
  if policy not in _REMAT_POLICIES:
    raise ValueError(
        f"T5Config.remat_policy: unknown {policy!r}; choose none, minimal or full"
    )
  return nn.remat(
      layer_cls, policy=_REMAT_POLICIES[policy], static_argnums=static_argnums
  )


def _run_layers(layer_cls, cfg: T5Config, num_layers: int, x, *args):
  """The stack's layers on x: layers_0 .. layers_{n-1}, or one `layers` module under nn.scan.

  Scanned, every parameter (and decoding cache entry) gets a leading axis of
  size num_layers, logical name "layers"; the other arguments are broadcast
  (the same for every layer) and dropout draws a new key per layer.
  """
  if not cfg.scan_layers:
    for i in range(num_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x, *args)
    return x
  scanned = nn.scan(
      layer_cls,
      variable_axes={"params": 0, "cache": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * len(args),
      length=num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
  )
  x, _ = scanned(cfg, scanned=True, name="layers")(x, *args)
  return x


def _row_positions(tokens: Array) -> Array:
  """Positions for the relative-position bias: always 0..length-1, shared by the batch.

  Packed examples (SeqIO) number their tokens 0, 1, 2, ... within each segment,
  so a key-query distance inside a segment is the same whether measured with
  the packed `positions` or with the row index, and pairs across segments are
  masked. The row index gives one [1, heads, q, k] bias instead of a
  per-example [batch, heads, q, k] one (gigabytes for large packed batches), so
  the packed `*_positions` inputs are accepted but not needed.
  """
  return jnp.arange(tokens.shape[-1], dtype=jnp.int32)[None, :]


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens, mask, positions=None, deterministic: bool = True):
    cfg = self.config
    x = self.shared_embedding(tokens.astype(jnp.int32))
    if (
        cfg.prompt_length
    ):  # prompt tuning: learned vectors first (tkx.models.prompt)
      x = prompt_lib.Prompt(
          cfg.prompt_length,
          cfg.activation_dtype,
          cfg.parameter_dtype,
          name="prompt",
      )(x, self.shared_embedding.embedding)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = _dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    pos = _row_positions(x[..., 0])
    bias = RelativePositionBiases(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
        cfg.num_heads,
        cfg.activation_dtype,
        cfg.parameter_dtype,
        name="relpos_bias",
    )(pos, pos, bidirectional=True)
    layer_cls = _layer_class(
        EncoderLayer, cfg.remat_policy, static_argnums=(4,)
    )  # deterministic
    x = _run_layers(
        layer_cls, cfg, cfg.num_encoder_layers, x, mask, bias, deterministic
    )
    x = LayerNorm(
        cfg.layer_norm_epsilon,
        cfg.activation_dtype,
        cfg.parameter_dtype,
        name="encoder_norm",
    )(x)
    return _dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(
      self,
      encoded,
      decoder_input_tokens,
      decoder_mask=None,
      encoder_decoder_mask=None,
      positions=None,
      *,
      deterministic: bool = True,
      decode: bool = False,
      max_decode_length: Optional[int] = None,
  ):
    cfg = self.config
    x = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = _dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    relpos = RelativePositionBiases(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
        cfg.num_heads,
        cfg.activation_dtype,
        cfg.parameter_dtype,
        name="relpos_bias",
    )
    if decode:
      # The bias covers every cache position; each attention keeps the row of its cache index.
      length = max_decode_length or decoder_input_tokens.shape[-1]
      if decoder_input_tokens.shape[-1] == 1 and not max_decode_length:
        raise ValueError(
            "decode=True with one-token inputs needs max_decode_length"
        )
      pos = jnp.arange(length, dtype=jnp.int32)[None, :]
    else:
      pos = _row_positions(decoder_input_tokens)
    bias = relpos(pos, pos, bidirectional=False)
    layer_cls = _layer_class(
        DecoderLayer, cfg.remat_policy, static_argnums=(6, 7)
    )  # deterministic, decode
    x = _run_layers(
        layer_cls,
        cfg,
        cfg.num_decoder_layers,
        x,
        encoded,
        decoder_mask,
        encoder_decoder_mask,
        bias,
        deterministic,
        decode,
    )
    x = LayerNorm(
        cfg.layer_norm_epsilon,
        cfg.activation_dtype,
        cfg.parameter_dtype,
        name="decoder_norm",
    )(x)
    x = _dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      # T5 1.0 ties the output layer to the embedding and rescales by 1/sqrt(d_model).
      logits = self.shared_embedding.attend(x) / jnp.sqrt(
          jnp.float32(x.shape[-1])
      )
    else:
      logits = Dense(
          cfg.vocab_size,
          ("embed", "vocab"),
          dtype=jnp.float32,
          param_dtype=cfg.parameter_dtype,
          name="logits_dense",
      )(x)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


# -----------------------------------------------------------------------------
# Masks.
# -----------------------------------------------------------------------------
def make_attention_mask(
    query_input: Array, key_input: Array, pairwise_fn=jnp.multiply
) -> Array:
  """[b, q], [b, k] -> bool [b, 1, q, k]."""
  mask = pairwise_fn(query_input[..., :, None], key_input[..., None, :])
  return mask[:, None].astype(bool)


def make_decoder_mask(
    decoder_target_tokens: Array, decoder_segment_ids: Optional[Array] = None
) -> Array:
  """Causal mask over non-padding target positions, restricted to one segment when packed."""
  valid = decoder_target_tokens > 0
  mask = make_attention_mask(valid, valid)
  length = decoder_target_tokens.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]
  mask = jnp.logical_and(mask, causal)
  if decoder_segment_ids is not None:
    mask = jnp.logical_and(
        mask,
        make_attention_mask(
            decoder_segment_ids, decoder_segment_ids, jnp.equal
        ),
    )
  return mask


# -----------------------------------------------------------------------------
# The model.
# -----------------------------------------------------------------------------
@gin.configurable(module="network")
class Transformer(nn.Module):
  """T5 encoder-decoder; the interface of t5x's `network.Transformer`."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(
        cfg.vocab_size,
        cfg.emb_dim,
        dtype=cfg.residual_dtype,  # the embeddings start the residual stream
        param_dtype=cfg.parameter_dtype,
    )
    self.encoder = Encoder(cfg, shared_embedding=self.token_embedder)
    self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

  def encode(
      self,
      encoder_input_tokens,
      encoder_segment_ids=None,
      encoder_positions=None,
      *,
      enable_dropout: bool = True,
  ):
    valid = self._encoder_valid(encoder_input_tokens, encoder_segment_ids)
    mask = make_attention_mask(valid, valid)
    if encoder_segment_ids is not None:
      mask = jnp.logical_and(
          mask,
          make_attention_mask(
              encoder_segment_ids, encoder_segment_ids, jnp.equal
          ),
      )
    return self.encoder(
        encoder_input_tokens,
        mask,
        encoder_positions,
        deterministic=not enable_dropout,
    )

  def _encoder_valid(self, encoder_input_tokens, encoder_segment_ids=None):
    """Which encoder positions are real: the tokens, after a tuned prompt's positions."""
    length = self.config.prompt_length
    if length and encoder_segment_ids is not None:
      raise errors.ConfigError(
          "network.T5Config.prompt_length: prompt tuning does not pack rows; set PACK = False"
      )
    return prompt_lib.valid_with_prompt(encoder_input_tokens > 0, length)

  def decode(
      self,
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids=None,
      decoder_segment_ids=None,
      decoder_positions=None,
      *,
      enable_dropout: bool = True,
      decode: bool = False,
      max_decode_length: Optional[int] = None,
  ):
    if decode:
      # One query per step: causality comes from the cache index, padding is irrelevant.
      decoder_mask = None
      encoder_decoder_mask = make_attention_mask(
          jnp.ones_like(decoder_target_tokens),
          self._encoder_valid(encoder_input_tokens),
      )
    else:
      decoder_mask = make_decoder_mask(
          decoder_target_tokens, decoder_segment_ids
      )
      encoder_decoder_mask = make_attention_mask(
          decoder_target_tokens > 0, self._encoder_valid(encoder_input_tokens)
      )
    if encoder_segment_ids is not None:
      if decode:
        raise ValueError(
            "packed inputs (segment ids) are not supported with decode=True"
        )
      encoder_decoder_mask = jnp.logical_and(
          encoder_decoder_mask,
          make_attention_mask(
              decoder_segment_ids, encoder_segment_ids, jnp.equal
          ),
      )
    return self.decoder(
        encoded,
        decoder_input_tokens,
        decoder_mask,
        encoder_decoder_mask,
        decoder_positions,
        deterministic=not enable_dropout,
        decode=decode,
        max_decode_length=max_decode_length,
    )

  def __call__(
      self,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      *,
      encoder_segment_ids=None,
      decoder_segment_ids=None,
      encoder_positions=None,
      decoder_positions=None,
      enable_dropout: bool = True,
      decode: bool = False,
      max_decode_length: Optional[int] = None,
  ):
    """Teacher-forced logits [batch, target_length, vocab] (float32).

    Encoder features may be [batch, blocks, length]: packed rows whose decoder
    row spans several encoder blocks (`tkx.data.packing.RowLayout`). Each block
    is encoded on its own (no example crosses a block) and the decoder attends
    to the row's blocks side by side, masked by segment ids (unique in a row).
    """
    if (encoder_segment_ids is None) != (decoder_segment_ids is None):
      raise ValueError(
          "give both encoder_segment_ids and decoder_segment_ids (packed) or neither"
      )
    blocks = None
    if encoder_input_tokens.ndim == 3:
      if encoder_segment_ids is None or decode:
        raise ValueError(
            "encoder blocks [batch, blocks, length] are for packed training only "
            "(give segment ids; not with decode=True)"
        )
      batch, blocks, length = encoder_input_tokens.shape
      as_blocks = (
          lambda x: x if x is None else x.reshape(batch * blocks, length)
      )
      encoder_input_tokens, encoder_segment_ids, encoder_positions = map(
          as_blocks,
          (encoder_input_tokens, encoder_segment_ids, encoder_positions),
      )
    encoded = self.encode(
        encoder_input_tokens,
        encoder_segment_ids,
        encoder_positions,
        enable_dropout=enable_dropout,
    )
    if blocks is not None:
      as_row = lambda x: x.reshape((batch, blocks * length) + x.shape[2:])
      encoded = nn.with_logical_constraint(
          as_row(encoded), ("batch", "length", "embed")
      )
      encoder_input_tokens = as_row(encoder_input_tokens)
      encoder_segment_ids = as_row(encoder_segment_ids)
    return self.decode(
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens,
        encoder_segment_ids,
        decoder_segment_ids,
        decoder_positions,
        enable_dropout=enable_dropout,
        decode=decode,
        max_decode_length=max_decode_length,
    )
