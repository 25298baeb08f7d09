"""Partitioning over a `jax.sharding.Mesh` with axes ("data", "model"), in t5x's style.

Model code names array dimensions logically ("batch", "embed", "mlp", ...); the
rules here map those names onto the two mesh axes. `Partitioner` owns the mesh
and the rules, turns logical specs into `NamedSharding`s, jits step functions
with explicit in/out shardings, and turns host-local numpy batches into global
arrays (one host or many).

Data layout across hosts: every host feeds the rows of the global batch that
its own devices hold along "data". When the "model" axis spans several hosts,
those hosts hold the same rows and must read the same data shard;
`Partitioner.get_data_layout()` works this out from the mesh (t5x's
`get_data_layout` idea).
"""

import dataclasses
import functools
import logging
from typing import Any, Callable, Optional, Sequence

import flax
import flax.linen as nn
import gin
import jax
import numpy as np
from flax.linen import partitioning as nn_partitioning
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODEL_AXIS = "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)

LogicalRules = Sequence[tuple[str, Optional[str]]]


@gin.configurable(module="partitioning")
def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1,
    parameter_partitioning_dims: int = 1,
    additional_rules: Optional[LogicalRules] = None,
) -> list:
  """t5x's standard logical-axis rules (same signature, same rules, same order).

  activation_partitioning_dims=2 also splits the "embed" dimension of activations over
  "model" (2-D activation partitioning); parameter_partitioning_dims=2 also splits the
  "embed" dimension of parameters (and optimizer states) over "data" (ZeRO-3/FSDP-like;
  tkx's `shard_params_over_data`). A mesh axis goes to the first rule that claims it, so
  [batch, length, embed] keeps "data" for batch, and [embed, mlp] keeps "model" for mlp.
  `additional_rules` are appended (e.g. a rule for scanned layers).
  """
  base = [
      ("batch", DATA_AXIS),
      ("vocab", MODEL_AXIS),
      ("mlp", MODEL_AXIS),
      ("heads", MODEL_AXIS),
      ("kv", None),
      ("joined_kv", MODEL_AXIS),
  ]
  dims = (activation_partitioning_dims, parameter_partitioning_dims)
  if dims == (1, 1):
    rules = base[:2] + [("embed", None)] + base[2:]
  elif dims == (2, 1):
    rules = base + [("embed", MODEL_AXIS)]
  elif dims == (1, 2):
    rules = base + [("embed", DATA_AXIS)]
  elif dims == (2, 2):
    rules = base + [("embed", MODEL_AXIS), ("embed", DATA_AXIS)]
  else:
    raise ValueError(
        "standard_logical_axis_rules: activation_partitioning_dims="
        f"{activation_partitioning_dims}, parameter_partitioning_dims="
        f"{parameter_partitioning_dims} is not supported (each must be 1 or 2)"
    )
  rules += [
      ("relpos_buckets", None),
      ("abspos_buckets", None),
      ("length", None),
      ("layers", None),
      ("stack", None),
      ("mlp_activations", None),
  ]
  rules.extend(additional_rules or ())
  return rules


def _mesh_shape(
    num_devices: int, num_partitions, data_axis_size, model_axis_size
) -> tuple[int, int]:
  """(data, model) sizes from whichever of the three settings were given."""
  if (
      num_partitions is not None
      and model_axis_size is not None
      and num_partitions != model_axis_size
  ):
    raise ValueError(
        f"Partitioner: num_partitions={num_partitions} and model_axis_size={model_axis_size} "
        "disagree; set only one of them"
    )
  model = model_axis_size if model_axis_size is not None else num_partitions
  data = data_axis_size
  for name, value in (
      ("model_axis_size/num_partitions", model),
      ("data_axis_size", data),
  ):
    if value is not None and (
        not isinstance(value, (int, np.integer)) or value < 1
    ):
      raise ValueError(
          f"Partitioner: {name} must be a positive integer, got {value!r}"
      )
  if model is None and data is None:
    model = 1
  if model is None:
    if num_devices % data:
      raise ValueError(
          f"Partitioner: data_axis_size={data} does not divide the {num_devices} devices"
      )
    model = num_devices // data
  if data is None:
    if num_devices % model:
      raise ValueError(
          f"Partitioner: model_axis_size/num_partitions={model} does not divide the "
          f"{num_devices} devices"
      )
    data = num_devices // model
  if data * model != num_devices:
    raise ValueError(
        f"Partitioner: data_axis_size={data} x model_axis_size={model} = {data * model}, "
        f"but there are {num_devices} devices"
    )
  return int(data), int(model)


def _ordered_devices(
    devices: Sequence[Any], shape: tuple[int, int]
) -> np.ndarray:
  """Devices laid out as [data, model]; "model" varies fastest so it stays within a host."""
  if devices[0].platform == "tpu" and len(devices) == jax.device_count():
    from jax.experimental import mesh_utils  # topology-aware placement on TPU slices

    return mesh_utils.create_device_mesh(
        shape, devices=devices, allow_split_physical_axes=True
    )
  ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
  return np.asarray(ordered, dtype=object).reshape(shape)


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """Which slice of the global batch this host feeds.

  Hosts whose devices hold the same rows along "data" (model parallelism that
  spans hosts) form a replica set; they share `shard_id` and must read the same
  data. `per_host_batch_size` is known once a global batch size is given.
  """

  shard_id: int
  num_shards: int
  is_first_host_in_replica_set: bool
  per_host_batch_size: Optional[int] = None

  @property
  def shard_info(self):
    import seqio  # imported here so partitioning stays usable without the data stack

    return seqio.ShardInfo(index=self.shard_id, num_shards=self.num_shards)


def _path_keys(path) -> tuple:
  """Plain names of a pytree key path (dict keys, attribute names, indices)."""
  keys = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        keys.append(getattr(entry, attr))
        break
    else:
      keys.append(str(entry))
  return tuple(keys)


def _is_spec_leaf(x) -> bool:
  return x is None or isinstance(x, PartitionSpec)


def divisible_spec(shape, spec, mesh_shape) -> PartitionSpec:
  """Drops mesh axes from the dimensions they do not divide evenly (spec padded to the rank)."""
  spec = tuple(spec) + (None,) * (len(shape) - len(tuple(spec)))
  out = []
  for size, axes in zip(shape, spec):
    names = (
        axes if isinstance(axes, tuple) else (axes,) if axes is not None else ()
    )
    ways = int(np.prod([mesh_shape.get(a, 1) for a in names])) if names else 1
    out.append(axes if size % ways == 0 else None)
  return PartitionSpec(*out)


def state_spec_from_param(state_shape, param_shape, param_spec):
  """The mesh spec of an optimizer-state leaf that mirrors a parameter, or None.

  Same shape (Adam's mu/nu): the parameter's spec. One dimension fewer (factored
  Adafactor v_row/v_col): the spec without the dropped dimension. Otherwise None.
  """
  state_shape, param_shape = tuple(state_shape), tuple(param_shape)
  param_spec = tuple(param_spec) + (None,) * (
      len(param_shape) - len(tuple(param_spec))
  )
  if state_shape == param_shape:
    return param_spec
  if len(state_shape) == len(param_shape) - 1:
    for dropped in range(len(param_shape)):
      if param_shape[:dropped] + param_shape[dropped + 1 :] == state_shape:
        return param_spec[:dropped] + param_spec[dropped + 1 :]
  return None


@gin.configurable(module="partitioning")
class Partitioner:
  """A ("data", "model") mesh plus logical-axis rules; jits functions with explicit shardings.

  Args:
    num_partitions: size of the "model" axis (t5x's name); "data" takes the rest.
    data_axis_size / model_axis_size: explicit axis sizes instead; their product
      must equal the number of devices.
    logical_axis_rules: (logical name, mesh axis or None) pairs; default
      `standard_logical_axis_rules()`, t5x's 1-D rules.
    shard_params_over_data: also shard parameters and optimizer state over
      "data" (ZeRO-3/FSDP-like): the default rules become
      `standard_logical_axis_rules(parameter_partitioning_dims=2)`. With explicit
      rules, existing "embed" rules are replaced by ("embed", "data").
    devices: devices to use (default: all devices of all processes).
  """

  def __init__(
      self,
      num_partitions: Optional[int] = None,
      data_axis_size: Optional[int] = None,
      model_axis_size: Optional[int] = None,
      logical_axis_rules: Optional[LogicalRules] = None,
      shard_params_over_data: bool = False,
      devices: Optional[Sequence[Any]] = None,
  ):
    devices = list(devices) if devices is not None else jax.devices()
    shape = _mesh_shape(
        len(devices), num_partitions, data_axis_size, model_axis_size
    )
    self.mesh = Mesh(
        _ordered_devices(devices, shape),
        MESH_AXES,
        axis_types=(AxisType.Auto,) * 2,
    )
    if logical_axis_rules is None:
      rules = standard_logical_axis_rules(
          parameter_partitioning_dims=2 if shard_params_over_data else 1
      )
    else:
      rules = [tuple(rule) for rule in logical_axis_rules]
      if shard_params_over_data:
        rules = [rule for rule in rules if rule[0] != "embed"] + [
            ("embed", DATA_AXIS)
        ]
    for rule in rules:
      if len(rule) != 2 or not isinstance(rule[0], str):
        raise ValueError(
            f"Partitioner: logical axis rule {rule!r} is not a "
            "(logical name, mesh axis) pair"
        )
      targets = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
      for target in targets:
        if target is not None and target not in MESH_AXES:
          raise ValueError(
              f"Partitioner: rule {rule!r} names mesh axis {target!r}; "
              f"the mesh axes are {MESH_AXES}"
          )
    self.logical_axis_rules = tuple(rules)
    self.shard_params_over_data = shard_params_over_data
    logging.info(
        "Partitioner: mesh data=%d x model=%d over %d devices (%d processes)",
        shape[0],
        shape[1],
        len(devices),
        jax.process_count(),
    )

  # ---------------------------------------------------------------- mesh facts
  @property
  def data_axis_size(self) -> int:
    return self.mesh.shape[DATA_AXIS]

  @property
  def model_axis_size(self) -> int:
    return self.mesh.shape[MODEL_AXIS]

  @property
  def num_partitions(self) -> int:
    return self.model_axis_size

  @property
  def data_sharding(self) -> NamedSharding:
    """Leading (batch) dimension over "data", the rest replicated."""
    return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  # ------------------------------------------------------- logical -> physical
  def logical_to_mesh_axes(self, logical_axes_tree):
    """Tree of logical PartitionSpecs (None = replicated) -> tree of mesh PartitionSpecs."""

    def convert(spec):
      if spec is None:
        return PartitionSpec()
      mesh_spec = nn.logical_to_mesh_axes(tuple(spec), self.logical_axis_rules)
      _check_no_repeated_mesh_axis(mesh_spec, spec)
      return mesh_spec

    return jax.tree_util.tree_map(
        convert, logical_axes_tree, is_leaf=_is_spec_leaf
    )

  def logical_to_sharding(self, logical_axes_tree):
    """Tree of logical PartitionSpecs -> tree of `NamedSharding`s on this mesh."""
    return jax.tree_util.tree_map(
        lambda spec: NamedSharding(self.mesh, spec),
        self.logical_to_mesh_axes(logical_axes_tree),
        is_leaf=_is_spec_leaf,
    )

  def get_logical_axes(self, variables):
    """Logical PartitionSpecs of a Flax variables tree (arrays or `jax.eval_shape` output).

    Understands both annotation styles: t5x's `param_with_axes` (names in a
    `params_axes` collection) and boxed `nn.with_logical_partitioning` params.
    Unannotated leaves get `PartitionSpec()` (replicated). The result mirrors the
    unboxed variables without the `*_axes` collections.
    """
    variables = flax.core.unfreeze(variables)
    axes_collections = {
        k
        for k in variables
        if k.endswith("_axes") and k[: -len("_axes")] in variables
    }
    result = {}
    for name, collection in variables.items():
      if name in axes_collections:
        continue
      specs = nn.get_partition_spec(collection)
      if name + "_axes" in axes_collections:
        named = flax.core.unfreeze(
            nn_partitioning.get_axis_names(variables[name + "_axes"])
        )
        specs = _overlay_axis_names(specs, named, collection_name=name)
      result[name] = specs
    return result

  def get_shardings(self, variables):
    """NamedShardings for a Flax variables tree, from its logical annotations.

    A dimension the mesh axis does not divide evenly is left unsharded (logged).
    """
    shardings = self.logical_to_sharding(self.get_logical_axes(variables))
    leaves = dict(
        jax.tree_util.tree_flatten_with_path(
            nn.unbox(flax.core.unfreeze(variables))
        )[0]
    )

    def fit(path, sharding):
      leaf = leaves.get(path)
      if leaf is None or not hasattr(leaf, "shape"):
        return sharding
      spec = self._divisible_spec(
          leaf.shape,
          tuple(sharding.spec)
          + (None,) * (len(leaf.shape) - len(sharding.spec)),
      )
      if tuple(spec) != tuple(sharding.spec) + (None,) * (
          len(spec) - len(sharding.spec)
      ):
        logging.warning(
            "Partitioner: %s of shape %s cannot be split as %s on mesh %s; "
            "leaving the uneven dimensions unsharded",
            jax.tree_util.keystr(path),
            leaf.shape,
            sharding.spec,
            dict(self.mesh.shape),
        )
        return NamedSharding(self.mesh, spec)
      return sharding

    return jax.tree_util.tree_map_with_path(
        fit, shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
    )

  def optimizer_state_shardings(self, opt_state, params, params_shardings):
    """Shardings for an optax state from the params' shardings.

    optax states mirror the params (Adam's mu/nu), so a state leaf is matched to
    the param whose key path it contains (longest match). Same shape: the
    param's sharding. One dimension fewer (factored Adafactor v_row/v_col): the
    param's spec with the dropped dimension removed. Anything else (counts,
    placeholders) is replicated, as is any dimension the mesh does not divide.
    """
    by_path = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      by_path[_path_keys(path)] = leaf
    sharding_by_path = {
        _path_keys(path): s
        for path, s in jax.tree_util.tree_flatten_with_path(
            params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
        )[0]
    }

    def shard_leaf(path, leaf):
      shape = tuple(getattr(leaf, "shape", ()))
      if not shape:
        return self.replicated
      keys = _path_keys(path)
      match = None
      for length in range(len(keys), 0, -1):
        for start in range(0, len(keys) - length + 1):
          if keys[start : start + length] in by_path:
            match = keys[start : start + length]
            break
        if match:
          break
      if match is None:
        return self.replicated
      spec = state_spec_from_param(
          shape, tuple(by_path[match].shape), sharding_by_path[match].spec
      )
      if spec is None:
        return self.replicated
      return NamedSharding(self.mesh, self._divisible_spec(shape, spec))

    return jax.tree_util.tree_map_with_path(shard_leaf, opt_state)

  def _divisible_spec(self, shape, spec) -> PartitionSpec:
    return divisible_spec(shape, spec, dict(self.mesh.shape))

  # ---------------------------------------------------------------- jitting
  def _as_shardings(self, tree):
    """PartitionSpec leaves (mesh axes) -> NamedSharding on this mesh; others as given."""
    if tree is None:
      return None
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(self.mesh, x)
        if isinstance(x, PartitionSpec)
        else x,
        tree,
        is_leaf=lambda x: x is None
        or isinstance(x, (PartitionSpec, NamedSharding)),
    )

  def partition(
      self,
      fn: Callable,
      in_shardings,
      out_shardings,
      static_argnums=(),
      donate_argnums=(),
  ) -> "PartitionedCallable":
    """`jax.jit(fn)` with explicit shardings, traced under this mesh and these rules.

    Shardings may be NamedShardings or mesh-axis PartitionSpecs (made
    NamedShardings on this mesh); None leaves are left to XLA. The rules and the
    mesh are active while `fn` is traced, so `with_sharding_constraint` on
    logical names inside the model takes effect.
    """
    rules = self.logical_axis_rules

    @functools.wraps(fn)
    def fn_under_rules(*args, **kwargs):
      with nn_partitioning.axis_rules(rules):
        return fn(*args, **kwargs)

    jitted = jax.jit(
        fn_under_rules,
        in_shardings=self._as_shardings(in_shardings),
        out_shardings=self._as_shardings(out_shardings),
        static_argnums=static_argnums,
        donate_argnums=donate_argnums,
    )
    return PartitionedCallable(jitted, self.mesh)

  # ------------------------------------------------------------ host <-> global
  def get_data_layout(
      self, global_batch_size: Optional[int] = None
  ) -> DataLayout:
    """This host's data shard, from which "data" rows its devices hold (see module doc)."""
    rows_by_process = {}
    for (data_index, _), device in np.ndenumerate(self.mesh.devices):
      rows_by_process.setdefault(device.process_index, set()).add(data_index)
    groups = sorted(
        {frozenset(rows) for rows in rows_by_process.values()}, key=min
    )
    for i, group in enumerate(groups):
      if max(group) - min(group) + 1 != len(group):
        raise ValueError(
            f"Partitioner: a host holds non-contiguous data rows {sorted(group)}; "
            "this device layout cannot feed host-local batches"
        )
      for other in groups[i + 1 :]:
        if group & other:
          raise ValueError(
              "Partitioner: hosts hold partly overlapping data rows; "
              "use a mesh whose model axis stays within or spans whole hosts"
          )
    if jax.process_index() not in rows_by_process:
      raise ValueError(
          f"Partitioner: process {jax.process_index()} has no device in this mesh "
          "and cannot feed data"
      )
    mine = frozenset(rows_by_process[jax.process_index()])
    shard_id = groups.index(mine)
    same_replica = [
        p for p, rows in rows_by_process.items() if frozenset(rows) == mine
    ]
    per_host = None
    if global_batch_size is not None:
      if global_batch_size % self.data_axis_size:
        raise ValueError(
            f"Partitioner: global batch size {global_batch_size} is not divisible by the "
            f"data axis size {self.data_axis_size}"
        )
      per_host = global_batch_size // len(groups)
    return DataLayout(
        shard_id=shard_id,
        num_shards=len(groups),
        is_first_host_in_replica_set=jax.process_index() == min(same_replica),
        per_host_batch_size=per_host,
    )

  def get_data_shard_info(self):
    """`seqio.ShardInfo` for this host's input pipeline."""
    return self.get_data_layout().shard_info

  def host_local_to_global(self, batch):
    """Host-local numpy batch (this host's rows) -> global `jax.Array`s sharded on "data".

    Each leaf's first dimension is the host-local batch; the global batch is
    that times the number of data shards. Arrays that are already global
    `jax.Array`s pass through.
    """
    num_shards = self.get_data_layout().num_shards

    def to_global(x):
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x
      x = np.asarray(x)
      if x.ndim == 0:
        raise ValueError(
            "Partitioner.host_local_to_global: batch leaves need a batch dimension, "
            "got a scalar"
        )
      global_shape = (x.shape[0] * num_shards,) + x.shape[1:]
      if global_shape[0] % self.data_axis_size:
        raise ValueError(
            f"Partitioner.host_local_to_global: global batch {global_shape[0]} "
            f"({x.shape[0]} per host x {num_shards} shards) is not divisible by the "
            f"data axis size {self.data_axis_size}"
        )
      return jax.make_array_from_process_local_data(
          self.data_sharding, x, global_shape
      )

    return jax.tree_util.tree_map(to_global, batch)

  def global_to_host(self, tree):
    """Global arrays -> full numpy arrays on every host (e.g. decoded predictions)."""
    if jax.process_count() == 1:
      return jax.tree_util.tree_map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


@gin.configurable(module="partitioning")
class PjitPartitioner(Partitioner):
  """t5x's `PjitPartitioner` constructor over tkx's `Partitioner`, so t5x gin bindings
  (`partitioning.PjitPartitioner.num_partitions = 2`, ...) configure tkx.

  Args (t5x's):
    num_partitions: size of the "model" axis.
    model_parallel_submesh: t5x's (x, y, z, c) device tile for model parallelism; tkx
      uses its product as the "model" axis size and lays devices out itself
      (topology-aware on TPU). Set at most one of the two.
    params_on_devices: must be True (tkx keeps parameters on the devices).
    backend: take the devices of this JAX backend ("cpu", "gpu", "tpu").
    ici_mesh_shape, dcn_mesh_shape: not supported (tkx's mesh is ("data", "model")).
    logical_axis_rules: default `standard_logical_axis_rules()`.
    use_cpu_pjit: accepted; tkx partitions on CPU as on any backend.
  """

  def __init__(
      self,
      num_partitions: Optional[int] = None,
      model_parallel_submesh: Optional[Sequence[int]] = None,
      params_on_devices: bool = True,
      backend: Optional[str] = None,
      ici_mesh_shape: Optional[Sequence[int]] = None,
      dcn_mesh_shape: Optional[Sequence[int]] = None,
      logical_axis_rules: Optional[LogicalRules] = None,
      use_cpu_pjit: Optional[bool] = False,
  ):
    del use_cpu_pjit
    if not num_partitions and not model_parallel_submesh:
      raise ValueError(
          "PjitPartitioner: set num_partitions or model_parallel_submesh"
      )
    if num_partitions and model_parallel_submesh:
      raise ValueError(
          "PjitPartitioner: set num_partitions or model_parallel_submesh, not both"
      )
    if model_parallel_submesh is not None:
      if len(tuple(model_parallel_submesh)) != 4:
        raise ValueError(
            "PjitPartitioner: model_parallel_submesh must be an (x, y, z, c) "
            f"4-tuple, got {model_parallel_submesh!r}"
        )
      num_partitions = int(np.prod(model_parallel_submesh))
    if not params_on_devices:
      raise ValueError(
          "PjitPartitioner: params_on_devices=False is not supported; tkx keeps "
          "parameters on the devices"
      )
    if ici_mesh_shape is not None or dcn_mesh_shape is not None:
      raise ValueError(
          "PjitPartitioner: ici_mesh_shape / dcn_mesh_shape are not supported; tkx's "
          "mesh is (data, model): set num_partitions"
      )
    super().__init__(
        num_partitions=num_partitions,
        logical_axis_rules=logical_axis_rules,
        devices=jax.devices(backend) if backend else None,
    )


class PartitionedCallable:
  """A jitted function that runs (and traces) with its mesh set as the current mesh."""

  def __init__(self, jitted, mesh):
    self._jitted = jitted
    self.mesh = mesh

  def __call__(self, *args, **kwargs):
    with jax.set_mesh(self.mesh):
      return self._jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with jax.set_mesh(self.mesh):
      return self._jitted.lower(*args, **kwargs)


def _check_no_repeated_mesh_axis(
    mesh_spec: PartitionSpec, logical_spec
) -> None:
  seen = set()
  for axes in mesh_spec:
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is None or axis is PartitionSpec.UNCONSTRAINED:
        continue
      if axis in seen:
        raise ValueError(
            f"Partitioner: logical axes {tuple(logical_spec)} map mesh axis {axis!r} "
            f"twice ({mesh_spec})"
        )
      seen.add(axis)


def _overlay_axis_names(specs, named, collection_name, path=()):
  """Puts `param_with_axes` names (from a `*_axes` collection) onto matching leaves of `specs`."""
  if isinstance(named, PartitionSpec):
    if not isinstance(specs, PartitionSpec):
      raise ValueError(
          f"Partitioner: {collection_name}_axes names {'/'.join(path)} as an array, "
          f"but {collection_name} holds a subtree there"
      )
    return named
  if not isinstance(specs, dict):
    raise ValueError(
        f"Partitioner: {collection_name}_axes has a subtree at {'/'.join(path)}, "
        f"but {collection_name} holds an array there"
    )
  out = dict(specs)
  for key, value in named.items():
    if key not in specs:
      raise ValueError(
          f"Partitioner: {collection_name}_axes names {'/'.join(path + (key,))}, "
          f"which is not in {collection_name}"
      )
    out[key] = _overlay_axis_names(
        specs[key], value, collection_name, path + (key,)
    )
  return out
