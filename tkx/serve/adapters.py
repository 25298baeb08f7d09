"""Many LoRA adapters on one served base model: reading, checking, stacking, and each batch's per-row parameters.

`tkx serve --adapter NAME=PATH` (repeatable) names tkx LoRA checkpoints: model dirs whose
model.gin sets `network.T5Config.dense_layer = 'lora'` and binds `lora.LoraConfig`, with the
adapters (`<projection>/lora_a`, `lora_b`) among their parameters (a full LoRA model's or only
the adapters; only the adapters are read); the base weights are the server's own checkpoint. Each adapter must fit that
base: its projections exist there and its shapes match the kernels'.

One compiled program serves every adapter (`tkx.models.lora`'s per-row adapters): the served
model is the base with LoRA on the union of the adapters' targets at the largest rank. The
adapters are stacked [1 + adapters, in, rank] per projection, row 0 zeros ("no adapter": the
base model, exactly: zero adds nothing), a smaller rank padded with zero columns of `lora_a` and
rows of `lora_b` (exact), a projection an adapter does not adapt all zeros. One scale
(`alpha / rank`) applies to every row, so each adapter's own scale is folded into its `lora_b`
relative to it (the served scale is the first adapter's: its rows are not rescaled at all).

Contract (the names other modules rely on; change one only together with its users):
- `parse_flag("NAME=PATH") -> (name, path)`; `BASE` ("base") names the base model in metrics
  and may not name an adapter.
- `read(name, path) -> Adapter` (its `LoraConfig` and adapters by projection path);
  `Adapters(adapters: Sequence[Adapter], base_params)`: checked against the base, stacked;
  `.names`, `.index(name)` (0: base; unknown -> `schema.RequestError` naming it),
  `.model(base_model)` (the served model; `check_base(model)` says first whether a base can
  take adapters), `.rows(base_params, partitioner, batch_size)`
  -> `RowParams`.
- `RowParams.param_shardings`, `.initial` (every row the base) and `RowParams(adapter_ids)`:
  the parameter tree of one batch (per-row `lora_a` [batch_size, in, rank] gathered on the
  device), for `infer.Predictor.predict_ids(batch_params=...)`.
"""

import copy
import dataclasses
import re
from typing import Dict, List, Mapping, Sequence, Tuple

import jax
import numpy as np

from tkx import errors, storage
from tkx.checkpoints import layout
from tkx.models import lora
from tkx.serve import schema

BASE = "base"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
Path = Tuple[str, ...]  # a projection's keys from the params root


def _flag_error(flag: str, message: str) -> errors.ConfigError:
  return errors.ConfigError(f"--adapter {flag}: {message}")


def parse_flag(text: str) -> Tuple[str, str]:
  """`NAME=PATH` -> (name, path); a ConfigError naming the flag otherwise."""
  name, sep, path = text.partition("=")
  if not sep or not path:
    raise _flag_error(text, "expected NAME=PATH (a tkx LoRA checkpoint dir)")
  if not _NAME.match(name):
    raise _flag_error(
        text,
        f"adapter name {name!r}: use letters, digits and _ . - (starting with a letter or digit)",
    )
  if name == BASE:
    raise _flag_error(
        text, f"{BASE!r} names the base model (requests without an adapter)"
    )
  return name, path


@dataclasses.dataclass
class Adapter:
  name: str
  path: str
  config: lora.LoraConfig
  weights: Dict[
      Path, Tuple[np.ndarray, np.ndarray]
  ]  # projection -> (lora_a, lora_b)

  @property
  def flag(self) -> str:
    return f"{self.name}={self.path}"


def _lora_config_bindings(model_gin: str) -> Dict[str, object]:
  """The `LoraConfig` and `T5Config.dense_layer` values a model.gin binds, read without applying it.

  The server's own gin state (its model and flags) stays as it is: the file is
  only parsed, statement by statement.
  """
  import gin
  from gin import config_parser

  text = storage.read_text(model_gin)
  found = {}
  delegate = gin.config.ParserDelegate(skip_unknown=True)
  for statement in config_parser.ConfigParser(text, delegate):
    if not isinstance(statement, config_parser.BindingStatement):
      continue
    selector = statement.selector.rsplit(".", 1)[-1]
    if statement.scope or selector not in ("LoraConfig", "T5Config"):
      continue
    if selector == "T5Config" and statement.arg_name != "dense_layer":
      continue
    found[f"{selector}.{statement.arg_name}"] = statement.value
  return found


def _read_config(flag: str, root: str) -> lora.LoraConfig:
  model_gin = storage.join(root, layout.MODEL_GIN)
  if not storage.isfile(model_gin):
    raise _flag_error(flag, f"{model_gin} is missing (is it a tkx checkpoint?)")
  bindings = _lora_config_bindings(model_gin)
  if bindings.pop("T5Config.dense_layer", None) != "lora":
    raise _flag_error(
        flag,
        f"{model_gin} does not set network.T5Config.dense_layer = 'lora' (not a LoRA checkpoint)",
    )
  settings = {k.split(".", 1)[1]: v for k, v in bindings.items()}
  try:
    return lora.LoraConfig(**settings)
  except (TypeError, errors.ConfigError) as e:
    raise _flag_error(flag, f"{model_gin}: {e}") from None


def _weights(params: Mapping) -> Dict[Path, Tuple[np.ndarray, np.ndarray]]:
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(
      lora.adapter_params(params)
  ):
    keys = tuple(k.key for k in path)
    pair = out.setdefault(keys[:-1], [None, None])
    pair[lora.ADAPTER_PARAM_NAMES.index(keys[-1])] = np.asarray(leaf)
  return {k: tuple(v) for k, v in out.items()}


def _read_adapter_params(path: str) -> Mapping:
  """Only the LoRA leaves of a checkpoint's params (a whole LoRA model's base weights are not read)."""
  from tkx.checkpoints import orbax_io

  stored = orbax_io.params_metadata(path)
  wanted = lora.adapter_params(stored or {})
  if not wanted:
    return {}
  abstract = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted
  )
  return orbax_io.load_params(path, abstract)


def read(name: str, path: str) -> Adapter:
  """The adapter of a tkx LoRA checkpoint dir (or one of its `checkpoint_<step>/`)."""
  flag = f"{name}={path}"
  try:
    config = _read_config(flag, layout.root_of(path))
    weights = _weights(_read_adapter_params(path))
  except (errors.UserError, FileNotFoundError) as e:
    if str(e).startswith("--adapter"):
      raise
    raise _flag_error(flag, str(e)) from None
  if not weights:
    raise _flag_error(
        flag, "the checkpoint holds no LoRA parameters (lora_a, lora_b)"
    )
  for keys, (a, b) in weights.items():
    if a is None or b is None or a.ndim != 2 or b.ndim != 2:
      raise _flag_error(
          flag,
          f"{'/'.join(keys)}: needs a 2-D lora_a and lora_b (the per-layer layout)",
      )
    if a.shape[1] != config.rank or b.shape[0] != config.rank:
      raise _flag_error(
          flag,
          f"{'/'.join(keys)}: lora_a {a.shape} / lora_b {b.shape} do not have "
          f"model.gin's rank {config.rank}",
      )
  return Adapter(name, path, config, weights)


def _subtree(params: Mapping, keys: Path):
  for key in keys:
    if not isinstance(params, Mapping) or key not in params:
      return None
    params = params[key]
  return params


def check_fits(adapter: Adapter, base_params: Mapping) -> None:
  """Each adapted projection exists in the base with a kernel of the adapter's shape."""
  for keys, (a, b) in adapter.weights.items():
    where = "/".join(keys)
    kernel = _subtree(base_params, keys + ("kernel",))
    if kernel is None:
      raise _flag_error(
          adapter.flag, f"{where}: the base checkpoint has no such projection"
      )
    expected = (a.shape[0], b.shape[1])
    if tuple(np.shape(kernel)) != expected:
      raise _flag_error(
          adapter.flag,
          f"{where}: adapts a [{expected[0]}, {expected[1]}] kernel but the base's is "
          f"{list(np.shape(kernel))} (an adapter of another base model?)",
      )


def served_config(configs: Sequence[lora.LoraConfig]) -> lora.LoraConfig:
  """LoRA on every projection any adapter adapts, at the largest rank, with the first adapter's scale."""
  rank = max(c.rank for c in configs)
  targets = [
      t for t in lora.PROJECTIONS if any(t in c.targets for c in configs)
  ]
  stacks = [s for s in lora.STACKS if any(s in c.stacks for c in configs)]
  return lora.LoraConfig(
      rank=rank,
      alpha=configs[0].scale * rank,
      dropout_rate=0.0,
      targets=targets,
      stacks=stacks,
  )


class Adapters:
  """The served adapters, checked against the base and stacked in one layout (row 0: the base)."""

  def __init__(self, adapters: Sequence[Adapter], base_params: Mapping):
    names = [a.name for a in adapters]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
      raise errors.ConfigError(
          f"--adapter: the name {repeated[0]!r} is given more than once"
      )
    for adapter in adapters:
      check_fits(adapter, base_params)
    self.adapters = list(adapters)
    self.names = tuple(names)
    self.config = served_config([a.config for a in adapters])
    self.stacked = self._stack(base_params)

  def _stack(self, base_params) -> Dict[Path, Tuple[np.ndarray, np.ndarray]]:
    rank, rows = self.config.rank, 1 + len(self.adapters)
    stacked = {}
    for keys in self._served_paths(base_params):
      kernel = _subtree(base_params, keys + ("kernel",))
      (fan_in, fan_out), dtype = kernel.shape, kernel.dtype
      a = np.zeros((rows, fan_in, rank), dtype)
      b = np.zeros((rows, rank, fan_out), dtype)
      for row, adapter in enumerate(self.adapters, start=1):
        if keys in adapter.weights:
          own_a, own_b = adapter.weights[keys]
          fold = adapter.config.scale / self.config.scale
          a[row, :, : own_a.shape[1]] = own_a
          b[row, : own_b.shape[0], :] = own_b * np.asarray(fold, own_b.dtype)
      stacked[keys] = (a, b)
    return stacked

  def _served_paths(self, base_params) -> List[Path]:
    """Every base projection the served layout adapts (`LoraConfig.is_target`), in tree order."""
    paths = []
    for path, _ in jax.tree_util.tree_leaves_with_path(base_params):
      keys = tuple(k.key for k in path)
      if keys[-1] == "kernel" and self.config.is_target(keys[:-1]):
        paths.append(keys[:-1])
    return paths

  def index(self, name) -> int:
    """The stacked row of an adapter name; None (or absent) is the base model, row 0."""
    if name is None:
      return 0
    try:
      return 1 + self.names.index(name)
    except ValueError:
      served = ", ".join(self.names)
      raise schema.RequestError(
          "adapter", f"unknown adapter {name!r} (served: {served})"
      ) from None

  def describe(self) -> str:
    return ", ".join(
        f"{a.name} (rank {a.config.rank}, alpha {a.config.alpha:g}, "
        f"{'+'.join(a.config.targets)}) from {a.path}"
        for a in self.adapters
    )

  def model(self, base_model):
    """The base model with the served LoRA layout on its projections (same class and settings)."""
    config = check_base(base_model)
    served = copy.copy(base_model)
    served.module = base_model.module.clone(
        config=dataclasses.replace(
            config, dense_layer=lora.dense_layer_for(self.config)
        )
    )
    served._init_fns = {}  # pylint: disable=protected-access
    return served

  def rows(self, base_params, partitioner, param_shardings, batch_size):
    return RowParams(
        self, base_params, partitioner, param_shardings, batch_size
    )


def check_base(base_model):
  """The base model's T5Config if per-row adapters can adapt it (plain, per-layer); else a ConfigError."""
  config = getattr(base_model, "config", None)
  if config is None or not hasattr(base_model, "module"):
    raise errors.ConfigError(
        f"--adapter: the base model {type(base_model).__name__} has no T5 module to adapt"
    )
  if config.scan_layers:
    raise errors.ConfigError(
        "--adapter: the base checkpoint scans its layers (T5Config.scan_layers); "
        "per-row adapters need the per-layer layout"
    )
  if config.dense_layer != "dense":
    raise errors.ConfigError(
        f"--adapter: the base checkpoint's dense layer is {config.dense_layer!r}; "
        "serve adapters on a plain base (tkx export-checkpoint merges a LoRA checkpoint)"
    )
  return config


def _insert(tree: Mapping, keys: Path, leaves: Mapping) -> dict:
  """A copy of `tree` with `leaves` added under the subtree at `keys` (only that path copied)."""
  out = dict(tree)
  if len(keys) == 0:
    out.update(leaves)
    return out
  out[keys[0]] = _insert(tree[keys[0]], keys[1:], leaves)
  return out


class RowParams:
  """The parameters of one batch: the base's (placed once) plus each row's adapter, gathered on the device.

  Args:
    adapters: the `Adapters` served.
    base_params: the base checkpoint's parameters.
    partitioner: the mesh the model runs on.
    param_shardings: the served model's parameter shardings (2-D adapters).
    batch_size: rows per batch (a batch's missing rows decode with the base).
  """

  def __init__(
      self, adapters, base_params, partitioner, param_shardings, batch_size
  ):
    self.batch_size = batch_size
    self.paths = list(adapters.stacked)
    row_sharding = {}
    for keys in self.paths:
      for name in lora.ADAPTER_PARAM_NAMES:
        spec = _subtree(param_shardings, keys + (name,)).spec
        row_sharding[keys + (name,)] = jax.sharding.NamedSharding(
            partitioner.mesh, jax.sharding.PartitionSpec(None, *spec)
        )
    self.param_shardings = param_shardings
    for keys_name, sharding in row_sharding.items():
      self.param_shardings = _insert(
          self.param_shardings, keys_name[:-1], {keys_name[-1]: sharding}
      )
    self._base = jax.device_put(
        base_params, lora.without_adapters(param_shardings)
    )
    flat_sharding = [
        row_sharding[k + (n,)]
        for k in self.paths
        for n in lora.ADAPTER_PARAM_NAMES
    ]
    self._stacked = [
        jax.device_put(array, sharding)
        for array, sharding in zip(
            [x for k in self.paths for x in adapters.stacked[k]], flat_sharding
        )
    ]
    self._gather = jax.jit(
        lambda stacked, ids: [x[ids] for x in stacked],
        out_shardings=flat_sharding,
    )
    self.initial = self([])

  def __call__(self, adapter_ids: Sequence[int]):
    """The parameter tree for a batch whose first rows use these adapters (0: none); the rest none."""
    if len(adapter_ids) > self.batch_size:
      raise ValueError(
          f"{len(adapter_ids)} rows > batch size {self.batch_size}"
      )
    if not any(adapter_ids) and hasattr(self, "initial"):
      return self.initial  # every row the base model: nothing to gather
    ids = np.zeros((self.batch_size,), np.int32)
    ids[: len(adapter_ids)] = adapter_ids
    leaves = self._gather(self._stacked, ids)
    params = self._base
    for i, keys in enumerate(self.paths):
      params = _insert(
          params,
          keys,
          dict(zip(lora.ADAPTER_PARAM_NAMES, leaves[2 * i : 2 * i + 2])),
      )
    return params
