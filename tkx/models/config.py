"""T5 model hyper-parameters.

One frozen dataclass covers T5 1.0, T5 1.1 / LM-adapted and mT5; the families
differ only in values (activations, tied logits, vocabulary), which live in
`gin_configs/models/<family>/<size>.gin`. Gin sees the class as
`network.T5Config`, the name t5x model gin files use. Reading gin files is
`tkx.gin_utils`' job; this module imports nothing from tkx but `tkx.errors`
(which imports nothing).
"""

import dataclasses
import enum
from typing import Any, Sequence

import gin
import jax.numpy as jnp

from tkx import errors


class AttentionImpl(str, enum.Enum):
  """How attention (outside cached decoding) is computed."""

  # tkx's einsum + softmax (row-chunked on a CPU), what XLA fuses on any backend.
  XLA = "xla"
  # jax.nn.dot_product_attention(implementation="cudnn"): cuDNN's fused attention on
  # NVIDIA GPUs; elsewhere jax.nn.dot_product_attention's XLA implementation.
  CUDNN = "cudnn"


@gin.configurable(module="network")
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Global hyper-parameters of a T5 encoder-decoder (t5x field names)."""

  vocab_size: int
  emb_dim: int = 512
  num_heads: int = 8
  head_dim: int = 64
  mlp_dim: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  # ("relu",) is T5 1.0; ("gelu", "linear") is the gated GELU of T5 1.1 / mT5.
  mlp_activations: Sequence[str] = ("relu",)
  # True: logits = decoder output @ embedding.T / sqrt(emb_dim) (T5 1.0).
  logits_via_embedding: bool = True
  dropout_rate: float = 0.1
  dtype: Any = "float32"  # activations / computation
  param_dtype: Any = "float32"  # stored parameters
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  # Rematerialise each layer in the backward pass (t5x names): "none", "minimal"
  # (keep only the weight matmul outputs) or "full" (recompute everything).
  remat_policy: str = "none"
  # Attention (outside cached decoding) over this many batch rows at a time, one
  # chunk after another (lax.map), so that a chunk's [rows, heads, q, k] logits
  # stay in the CPU caches: on a 2-core CPU about 2x faster at 1024 tokens,
  # with identical results. 0: the whole batch at once. None: automatic (see
  # `network.dot_product_attention`): rows one at a time on a single CPU device
  # when the batch's logits are large, else the whole batch.
  attention_chunk_rows: Any = None
  # Run each stack's layers under nn.scan (t5x's name): one compiled layer instead of
  # one per layer (compile time, program size). Parameters are stacked along a leading
  # `layers` axis: encoder/layers/<layer params> [num_layers, ...]; see tkx.models.scan
  # for the conversion to and from the per-layer layout (encoder/layers_<i>/...).
  scan_layers: bool = False
  # "xla" or "cudnn" (see AttentionImpl); a gin string or the enum.
  attention_impl: Any = AttentionImpl.XLA
  # The module of every attention and MLP projection, by the name it is registered
  # under (`network.register_dense_layer`): "dense" is T5's plain kernel; an adapter or
  # a quantized kernel registers another name (see network's dense layer seam).
  dense_layer: str = "dense"
  # Prompt tuning (Lester et al., 2021; tkx.models.prompt): this many learned vectors are
  # prepended to the encoder's input embeddings (0: none). docs/adapters.md.
  prompt_length: int = 0

  def __post_init__(self):
    # Gin and JSON hand over lists and strings; keep the dataclass hashable and canonical.
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    for name in ("dtype", "param_dtype"):
      object.__setattr__(self, name, jnp.dtype(getattr(self, name)).name)
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim"):
      if int(getattr(self, name)) <= 0:
        raise errors.ConfigError(
            f"T5Config.{name} must be positive, got {getattr(self, name)!r}"
        )
    for act in self.mlp_activations:
      if act not in ACTIVATIONS:
        raise errors.ConfigError(
            f"T5Config.mlp_activations: unknown activation {act!r}; "
            f"choose from {sorted(ACTIVATIONS)}"
        )

    if (
        self.attention_chunk_rows is not None
        and int(self.attention_chunk_rows) < 0
    ):
      raise errors.ConfigError(
          f"T5Config.attention_chunk_rows must be None or >= 0, got {self.attention_chunk_rows!r}"
      )
    try:
      object.__setattr__(
          self, "attention_impl", AttentionImpl(self.attention_impl)
      )
    except ValueError:
      raise errors.ConfigError(
          f"T5Config.attention_impl: unknown {self.attention_impl!r}; choose "
          + " or ".join(repr(m.value) for m in AttentionImpl)
      ) from None
    object.__setattr__(self, "scan_layers", bool(self.scan_layers))
    if isinstance(self.prompt_length, bool) or int(self.prompt_length) < 0:
      raise errors.ConfigError(
          f"T5Config.prompt_length must be >= 0, got {self.prompt_length!r}"
      )
    object.__setattr__(self, "prompt_length", int(self.prompt_length))
    if not isinstance(self.dense_layer, str) or not self.dense_layer:
      raise ValueError(
          f"T5Config.dense_layer must be a registered layer name, got {self.dense_layer!r}"
      )
    if self.remat_policy not in ("none", "minimal", "full"):
      raise errors.ConfigError(
          f"T5Config.remat_policy: unknown {self.remat_policy!r}; choose none, minimal or full"
      )

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def parameter_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def residual_dtype(self):
    """The residual stream's dtype: float32 when computing in float16, else `dtype`.

    T5's residual stream and its writers (attention `out`, MLP `wo`) exceed
    float16's 65504 on real checkpoints (T5 1.1, mT5), giving inf and NaN. As
    Hugging Face keeps `wo` in float32 (`_keep_in_fp32_modules`), tkx keeps the
    stream and the projections that write into it in float32; where HF then
    clamps the stream to float16's range, tkx never narrows it, so nothing is
    clamped. bfloat16 and float32 are unchanged (bfloat16 has float32's range).
    """
    dtype = jnp.dtype(self.dtype)
    return jnp.dtype(jnp.float32) if dtype == jnp.float16 else dtype

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)


# Names accepted in mlp_activations. "gelu" is the tanh approximation, which is
# what T5 1.1 was trained with (HF calls it "gelu_new").
ACTIVATIONS = (
    "relu",
    "gelu",
    "gelu_new",
    "gelu_exact",
    "silu",
    "swish",
    "linear",
)
