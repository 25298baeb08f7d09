"""LoRA (Hu et al., 2021) on T5's projections: the dense layer "lora" and its settings.

`network.T5Config.dense_layer = 'lora'` builds every attention and MLP
projection with `LoraDense`. A projection that `LoraConfig` targets computes

    y = x @ kernel + (alpha / rank) * dropout(x) @ lora_a @ lora_b

where `kernel` is the base model's (same name, shape and logical axes as
`network.Dense`, so a plain checkpoint loads into it) and `lora_b` starts at
zero, so a fresh adapter computes the base model exactly. The scale is
`alpha / rank` as in Hugging Face peft's default (not rsLoRA's alpha/sqrt(rank)),
so a tkx adapter and a peft adapter with the same numbers agree.

Contract (the names other modules rely on; change one only together with its users):
- `LoraConfig(rank, alpha, dropout_rate, targets, stacks)` (gin `lora.LoraConfig`);
  `.scale`; `.is_target(path)` for a projection's module path
  (`("encoder", "layers_0", "attention", "query")`, scanned: `"layers"`).
  `targets` name projections: "query", "key", "value", "out" (attention, in both
  stacks' self attention and the decoder's encoder_decoder_attention), "wi" (also
  "wi_0"/"wi_1" of gated MLPs), "wo"; `stacks` is "encoder" and/or "decoder".
- Adapter parameters live beside the kernel: `<projection>/lora_a` [in, rank]
  (logical axes (in axis, "lora_rank")) and `<projection>/lora_b` [rank, out]
  (("lora_rank", out axis)); "lora_rank" maps to no mesh axis (replicated: rank
  is small), the other axis shards as the kernel's does. Scanned layers add the
  leading "layers" axis as for every parameter. `ADAPTER_PARAM_NAMES`.
- Per-row adapters (many adapters in one batch): a `lora_a` of shape
  [rows, in, rank] and `lora_b` [rows, rank, out] given in the params apply row
  i's adapter to row i of x. When x has k times as many rows (decoding expands
  each row into k consecutive beams), each adapter row is repeated k times. An
  all-zero row is "no adapter". (Per-layer layout only.)
- `dense_layer_for(config)`: a registered dense-layer name for LoRA with that
  exact config (models built in code, e.g. the server's adapter layout).
- `merge(params, config)`: the plain T5 tree, kernel + scale * a @ b per adapted
  projection, adapter leaves gone. `without_adapters(params)`: the base, adapter leaves dropped.
- Dropout on the adapter's input runs when the module is applied with a
  "dropout" rng (training) and `dropout_rate > 0`; never in evaluation.
- `gin_bindings(config)`: the `lora.LoraConfig.*` lines of a model.gin that
  rebuild `config` (with `network.T5Config.dense_layer = 'lora'`).
"""

import dataclasses
import functools
from typing import Mapping, Optional, Sequence

import gin
import jax.numpy as jnp
from flax import linen as nn

from tkx import errors
from tkx.models import network

ADAPTER_PARAM_NAMES = ("lora_a", "lora_b")
PROJECTIONS = ("query", "key", "value", "out", "wi", "wo")
STACKS = ("encoder", "decoder")
RANK_AXIS = "lora_rank"


@gin.configurable(module="lora")
@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Where LoRA adapts the model and how strongly (peft's names: r, lora_alpha, lora_dropout)."""

  rank: int = 8
  alpha: float = 16.0
  dropout_rate: float = 0.0
  # peft's default for T5 adapts q and v; Tk-Instruct users often add k, o, wi, wo.
  targets: Sequence[str] = ("query", "value")
  stacks: Sequence[str] = STACKS

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    object.__setattr__(self, "stacks", tuple(self.stacks))
    if int(self.rank) <= 0:
      raise errors.ConfigError(
          f"LoraConfig.rank must be positive, got {self.rank!r}"
      )
    if not 0.0 <= float(self.dropout_rate) < 1.0:
      raise errors.ConfigError(
          f"LoraConfig.dropout_rate must be in [0, 1), got {self.dropout_rate!r}"
      )
    for name, given, known in (
        ("targets", self.targets, PROJECTIONS),
        ("stacks", self.stacks, STACKS),
    ):
      unknown = [t for t in given if t not in known]
      if unknown or not given:
        raise errors.ConfigError(
            f"LoraConfig.{name}: unknown {unknown or 'empty'}; choose from {list(known)}"
        )

  @property
  def scale(self) -> float:
    return float(self.alpha) / int(self.rank)

  def is_target(self, path: Sequence[str]) -> bool:
    """Whether the projection at module path `path` (stack first, projection last) is adapted."""
    if not path or path[0] not in self.stacks:
      return False
    projection = path[-1]
    if projection.startswith("wi_"):
      projection = "wi"
    return projection in self.targets


def gin_bindings(config: LoraConfig) -> str:
  """model.gin lines binding gin's `lora.LoraConfig` to `config` (what the dense layer "lora" reads)."""
  values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
  values["targets"], values["stacks"] = list(config.targets), list(
      config.stacks
  )
  return "".join(f"lora.LoraConfig.{k} = {v!r}\n" for k, v in values.items())


@network.register_dense_layer("lora")
class LoraDense(network.Dense):
  """`network.Dense` plus a low-rank update where the `LoraConfig` targets this projection."""

  # None: the gin-bound `LoraConfig()` (what `T5Config.dense_layer = 'lora'` gets).
  config: Optional[LoraConfig] = None

  @nn.compact
  def __call__(self, x):
    cfg = self.config or LoraConfig()
    out = self.project(x)
    if not cfg.is_target(self.scope.path):
      return out
    lora_a, lora_b = self._adapter(x.shape[-1], cfg.rank)
    if self.has_rng("dropout") and cfg.dropout_rate > 0.0:
      x = nn.Dropout(rate=cfg.dropout_rate, deterministic=False)(x)
    x = jnp.asarray(x, self.dtype)
    a, b = jnp.asarray(lora_a, self.dtype), jnp.asarray(lora_b, self.dtype)
    if a.ndim == 2:
      delta = jnp.dot(jnp.dot(x.reshape((-1, x.shape[-1])), a), b)
      delta = delta.reshape(x.shape[:-1] + (self.features,))
    else:
      delta = _per_row_delta(x, a, b)
    return out + jnp.asarray(cfg.scale, self.dtype) * delta

  def _adapter(self, features_in: int, rank: int):
    # Per-row adapters are handed in through the params with a leading rows axis;
    # `self.param` would refuse their shape, so read what is given before creating.
    if self.has_variable("params", "lora_a"):
      given = [
          nn.unbox(self.get_variable("params", n)) for n in ADAPTER_PARAM_NAMES
      ]
      if given[0].ndim == 3:
        return given
    in_axis, out_axis = self.kernel_axes
    lora_a = network._param(  # pylint: disable=protected-access
        self,
        "lora_a",
        # peft's default: kaiming-uniform A (a=sqrt(5)), zero B.
        nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        (features_in, rank),
        self.param_dtype,
        (in_axis, RANK_AXIS),
    )
    lora_b = network._param(  # pylint: disable=protected-access
        self,
        "lora_b",
        nn.initializers.zeros,
        (rank, self.features),
        self.param_dtype,
        (RANK_AXIS, out_axis),
    )
    return lora_a, lora_b


def _per_row_delta(x, a, b):
  """x [n*k, ..., in] with adapter rows a [n, in, r], b [n, r, out]: each row's own update."""
  rows = a.shape[0]
  if x.shape[0] % rows:
    raise ValueError(
        f"per-row LoRA: {x.shape[0]} input rows are not a multiple of {rows} adapter rows"
    )
  repeat = x.shape[0] // rows
  if repeat > 1:  # beams: each row's k copies are consecutive
    a, b = jnp.repeat(a, repeat, axis=0), jnp.repeat(b, repeat, axis=0)
  hidden = jnp.einsum("n...i,nir->n...r", x, a)
  return jnp.einsum("n...r,nro->n...o", hidden, b)


def merge(params: Mapping, config: LoraConfig) -> dict:
  """The plain T5 parameter tree: each adapted kernel += scale * lora_a @ lora_b, adapters removed.

  Computed in float32 and cast back to the kernel's dtype. Works on the per-layer
  and the scanned layout (a leading "layers" axis on all three arrays).
  """

  def walk(tree):
    if not isinstance(tree, Mapping):
      return tree
    out = {k: walk(v) for k, v in tree.items() if k not in ADAPTER_PARAM_NAMES}
    if "lora_a" in tree:
      kernel = tree["kernel"]
      update = jnp.einsum(
          "...ir,...ro->...io",
          jnp.asarray(tree["lora_a"], jnp.float32),
          jnp.asarray(tree["lora_b"], jnp.float32),
      )
      out["kernel"] = (
          jnp.asarray(kernel, jnp.float32) + config.scale * update
      ).astype(jnp.asarray(kernel).dtype)
    return out

  return walk(params)


def adapter_params(params: Mapping) -> dict:
  """Only the LoRA leaves of `params` (nested dicts, empty branches dropped)."""

  def walk(tree):
    out = {}
    for k, v in tree.items():
      if isinstance(v, Mapping):
        sub = walk(v)
        if sub:
          out[k] = sub
      elif k in ADAPTER_PARAM_NAMES:
        out[k] = v
    return out

  return walk(params)


def without_adapters(params: Mapping) -> dict:
  """The base model's params: every LoRA leaf dropped, the kernels as they are (not merged)."""
  if not isinstance(params, Mapping):
    return params
  return {
      k: without_adapters(v)
      for k, v in params.items()
      if k not in ADAPTER_PARAM_NAMES
  }


def dense_layer_for(config: LoraConfig) -> str:
  """A dense-layer name for LoRA with exactly `config` (not gin's), registered on first use.

  For a model built in code whose adapters are not gin's (`tkx.serve.adapters`:
  one layout that holds every served adapter).
  """
  name = (
      f"lora(rank={config.rank},alpha={config.alpha},"
      f"targets={'+'.join(config.targets)},stacks={'+'.join(config.stacks)})"
  )
  if name not in network.DENSE_LAYERS:
    network.register_dense_layer(name)(
        functools.partial(LoraDense, config=config)
    )
  return name
