"""Partitioning over a `jax.sharding.Mesh`, in t5x's style.

Model code names array dimensions logically ("batch", "embed", "mlp", ...); the
rules here map those names onto the mesh axes "data" and "model" (plus
"replica" on a hybrid mesh). `Partitioner` owns the mesh and the rules, turns
logical specs into `NamedSharding`s, jits step functions with explicit in/out
shardings, and turns host-local numpy batches into global arrays.

Meshes: t5x's public functions (`bounds_from_last_device`, `get_coords`,
`get_mesh`, `get_cpu_mesh`, `get_gpu_mesh`, `default_mesh`) with t5x's meaning:
on a TPU slice a model replica is an (x, y, z, cores) tile of the torus, ordered
host by host where needed; on GPUs it stays inside a node; `ici_mesh_shape` /
`dcn_mesh_shape` give t5x's ("replica", "data", "model") hybrid mesh. They also
take mock devices, so every pod shape can be tested on a laptop.

Data layout across hosts: every host feeds the rows of the global batch that
its own devices hold, read off the mesh for any device order
(`host_data_rows`, `Partitioner.host_rows`, t5x's `get_data_layout` contract,
`LocalChunker`). Hosts holding the same rows (a model replica spanning hosts)
form a replica set and read the same data shard. See docs/partitioning.md.

Contract (the names other modules rely on; change one only together with its users):
- `Partitioner(num_partitions=None, data_axis_size=None, model_axis_size=None, logical_axis_rules=None, shard_params_over_data=False,
  devices=None, model_parallel_submesh=None, ici_mesh_shape=None, dcn_mesh_shape=None, backend=None, mesh=None)`
  - `.mesh` (axes `("data", "model")`, or `("replica", "data", "model")` with ici/dcn shapes; built by `default_mesh`, or
    the `mesh` given), `.data_axes` (mesh axes of the batch: `("data",)` or `("replica", "data")`),
    `.logical_to_sharding(logical_axes_tree)`,
  - `.partition(fn, in_shardings, out_shardings, static_argnums=(), donate_argnums=())`,
  - `.host_local_to_global(batch)` (host-local numpy batch = the rows `.host_rows(batch_size)` names, in order ->
    global `jax.Array` split over `.data_axes`; each device gets its rows for any device order),
  - `.data_sharding` (batch dim over `.data_axes`), `.replicated`, `.data_axis_size` (= t5x's `data_mesh_size`: parts
    the batch splits into), `.model_axis_size`,
  - `.get_logical_axes(variables)` / `.get_shardings(variables)` (boxed or `params_axes` annotations; arrays or eval_shape),
  - `.optimizer_state_shardings(opt_state, params, params_shardings)` (state leaves follow their param; factored dims dropped),
  - `.get_data_layout(batch_size=None, host_index=None) -> DataLayout(batch_size, shard_id, num_shards,
    is_first_host_in_replica_set)` (t5x's contract; `.per_host_batch_size`, `.shard_info`), read off the mesh;
    `.get_data_shard_info() -> seqio.ShardInfo`; hosts holding the same rows share a shard; partly overlapping
    hosts are a ValueError,
  - `.host_rows(batch_size, process_index=None) -> np.ndarray` the global rows a host feeds, ascending,
  - `.global_to_host(tree)` (global arrays -> full numpy on every host).
- `host_data_rows(partitioner_or_mesh, batch_size) -> {process_index: ((start, stop), ...)}` every host's rows
  (one range per host on meshes tkx builds); for `python -m tkx.multihost`. `data_layout(mesh, batch_size,
  process_index, data_axes)` the layout of any mesh.
- t5x's mesh functions, same meaning, also on mock devices: `bounds_from_last_device`, `get_coords`,
  `get_mesh(model_parallel_submesh, input_devices=(), input_local_devices=(), tile_by_host_if_needed=True, backend=None)`
  (tile over the torus, Z-major rule, repetitions ordered by host where a host's rows would not be one block),
  `get_cpu_mesh()`, `get_gpu_mesh(num_partitions, devices=None)` (model inside a node first),
  `default_mesh(num_partitions, model_parallel_submesh=None, backend=None, ici_mesh_shape=None, dcn_mesh_shape=None,
  *, devices=None)` (t5x's TPU default tiles, else host-first tiles; GPU/CPU placement honours `num_partitions`),
  `hybrid_mesh(ici_mesh_shape, dcn_mesh_shape, devices=None)`, `LocalChunker(mesh, process_index=None)`
  (`num_chunks`, `chunk_ids`, `get_local_chunk_info`, `get_shard_id`, `get_replica_id`), `LocalChunkInfo`.
- `standard_logical_axis_rules(activation_partitioning_dims=1, parameter_partitioning_dims=1, additional_rules=None)` —
  t5x's rules, same order ((2, x) adds `embed→model`, (x, 2) adds `embed→data`); `Partitioner(shard_params_over_data=True)`
  uses `parameter_partitioning_dims=2`. A scanned-layers rule goes in `additional_rules` (or replaces `("layers", None)`).
  On a hybrid mesh `batch→data` becomes `batch→("replica", "data")`. `update_logical_axis_rules(rules, overrides)`
  (t5x's) re-points names in place and appends new ones.
- `PjitPartitioner(num_partitions=None, model_parallel_submesh=None, params_on_devices=True, backend=None,
  ici_mesh_shape=None, dcn_mesh_shape=None, logical_axis_rules=None, use_cpu_pjit=False)` — t5x's constructor over
  `Partitioner` (gin `partitioning.PjitPartitioner.*`); `model_parallel_submesh` is a torus tile, ici/dcn shapes give the
  hybrid mesh (num_partitions then ignored, as in t5x); `params_on_devices=False` raises.
"""

import collections
import dataclasses
import functools
import logging
import math
from typing import Any, Callable, Optional, Sequence, Union

import flax
import flax.linen as nn
import gin
import jax
import numpy as np
from flax.linen import partitioning as nn_partitioning
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from tkx import errors

log = logging.getLogger(__name__)

DATA_AXIS = "data"
MODEL_AXIS = "model"
REPLICA_AXIS = "replica"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)
HYBRID_MESH_AXES = (REPLICA_AXIS, DATA_AXIS, MODEL_AXIS)

TpuMesh = tuple[int, int, int, int]  # (x, y, z, cores per chip)
OtherMesh = tuple[int, int]  # (processes, devices per process)
HardwareMesh = Union[TpuMesh, OtherMesh]

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
    raise errors.ConfigError(
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


def update_logical_axis_rules(
    rules: LogicalRules, overrides: LogicalRules
) -> tuple:
  """t5x's: `rules` with each override's logical name re-pointed, new names appended.

  An overridden name keeps the place of its first rule (its other rules go);
  names the rules lack are appended in the overrides' order.
  """
  overrides = {name: target for name, target in overrides}
  updated, seen = [], set()
  for name, target in rules:
    if name in overrides:
      if name in seen:
        continue
      target = overrides[name]
    seen.add(name)
    updated.append((name, target))
  updated += [(n, t) for n, t in overrides.items() if n not in seen]
  return tuple(updated)


def _mesh_shape(
    num_devices: int, num_partitions, data_axis_size, model_axis_size
) -> tuple[int, int]:
  """(data, model) sizes from whichever of the three settings were given."""
  if (
      num_partitions is not None
      and model_axis_size is not None
      and num_partitions != model_axis_size
  ):
    raise errors.ConfigError(
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
      raise errors.ConfigError(
          f"Partitioner: {name} must be a positive integer, got {value!r}"
      )
  if model is None and data is None:
    model = 1
  if model is None:
    if num_devices % data:
      raise errors.ConfigError(
          f"Partitioner: data_axis_size={data} does not divide the {num_devices} devices"
      )
    model = num_devices // data
  if data is None:
    if num_devices % model:
      raise errors.ConfigError(
          f"Partitioner: model_axis_size/num_partitions={model} does not divide the "
          f"{num_devices} devices"
      )
    data = num_devices // model
  if data * model != num_devices:
    raise errors.ConfigError(
        f"Partitioner: data_axis_size={data} x model_axis_size={model} = {data * model}, "
        f"but there are {num_devices} devices"
    )
  return int(data), int(model)


# ------------------------------------------------------------ mesh creation
# t5x's public mesh functions (same names, signatures and meaning). A TPU
# device has `coords` (x, y, z) and `core_on_chip`; its "hardware mesh" is
# (x, y, z, cores). Elsewhere the hardware mesh is (hosts, devices per host).


def _has_tpu_coords(device) -> bool:
  return len(tuple(getattr(device, "coords", ()) or ())) == 3


def bounds_from_last_device(last_device) -> HardwareMesh:
  """The hardware mesh's size, read off the device at its highest corner.

  TPU: (x, y, z, cores per chip); otherwise (processes, devices per process).
  """
  if _has_tpu_coords(last_device):
    x, y, z = last_device.coords
    return x + 1, y + 1, z + 1, last_device.core_on_chip + 1
  return jax.process_count(), jax.local_device_count()


def get_coords(device) -> HardwareMesh:
  """A device's place in the hardware mesh (see `bounds_from_last_device`)."""
  if hasattr(device, "coords"):
    return (*device.coords, device.core_on_chip)
  return (device.process_index, device.id % jax.local_device_count())


def _tpu_bounds(devices) -> tuple[int, ...]:
  """(x, y, z, cores) extent of TPU devices (max - min + 1 per dimension)."""
  coords = np.asarray([get_coords(d) for d in devices])
  return tuple(int(v) for v in coords.max(0) - coords.min(0) + 1)


def _host_tile(global_shape, model_shape, host_shape):
  """Per dimension (data hosts, data devices, model hosts, model devices), or None.

  A model tile larger than a host spans whole hosts; a smaller one fits a
  host a whole number of times. None: the tile neither divides nor is a
  multiple of the host's extent, so tiling by host is impossible.
  """
  parts = []
  for g, m, h in zip(global_shape, model_shape, host_shape):
    if m >= h:
      if m % h:
        return None
      parts.append((g // m, 1, m // h, h))
    else:
      if h % m:
        return None
      parts.append((g // h, h // m, 1, m))
  return parts


def _rows_contiguous_per_host(devices: np.ndarray) -> bool:
  """Whether every host's devices in a [data, model] array hold consecutive data rows."""
  rows = {}
  for (row, _), device in np.ndenumerate(devices):
    rows.setdefault(device.process_index, set()).add(row)
  return all(max(r) - min(r) + 1 == len(r) for r in rows.values())


def get_mesh(
    model_parallel_submesh: HardwareMesh,
    input_devices: Sequence[Any] = (),
    input_local_devices: Sequence[Any] = (),
    tile_by_host_if_needed: bool = True,
    backend: Optional[str] = None,
) -> Mesh:
  """A ("data", "model") mesh whose "model" axis is one `model_parallel_submesh` tile.

  t5x's `get_mesh`. The tile (x, y, z, cores) is laid over the TPU torus and
  repeated; "data" runs over the repetitions. Each tile dimension must divide
  the slice's. A tile that spans a whole X (or Y) line puts Z major in that
  plane, as t5x does. When the plain torus order would give a host
  non-consecutive data rows and `tile_by_host_if_needed`, the repetitions are
  ordered host by host (each host then feeds one block of rows); otherwise
  the torus order is kept and tkx maps each host's rows as they fall
  (`host_data_rows`).

  Args:
    model_parallel_submesh: (x, y, z, cores) of one model replica.
    input_devices: the devices (default `jax.devices(backend)`).
    input_local_devices: one host's devices, giving the host's extent
      (default: those of the first process among `input_devices`).
    tile_by_host_if_needed: order the repetitions by host when needed.
    backend: JAX backend for the default devices.

  Devices without a torus (GPU, CPU) get a tile of the same size, placed as
  `get_gpu_mesh` places it.
  """
  devices = list(input_devices) or jax.devices(backend)
  if not all(_has_tpu_coords(d) for d in devices):
    return get_gpu_mesh(int(np.prod(model_parallel_submesh)), devices)
  first = min(d.process_index for d in devices)
  local = list(input_local_devices) or [
      d for d in devices if d.process_index == first
  ]
  submesh = tuple(int(v) for v in model_parallel_submesh)
  bounds = _tpu_bounds(devices)
  if len(submesh) != len(bounds) or any(
      m < 1 or g % m for g, m in zip(bounds, submesh)
  ):
    raise errors.ConfigError(
        f"get_mesh: each dimension of model_parallel_submesh {submesh} must divide "
        f"the slice's (x, y, z, cores) = {bounds}"
    )
  if len(devices) != int(np.prod(bounds)):
    raise errors.ConfigError(
        f"get_mesh: {len(devices)} devices do not fill the (x, y, z, cores) box "
        f"{bounds} (several slices? set ici_mesh_shape and dcn_mesh_shape)"
    )
  grid = np.empty(bounds, dtype=object)
  origin = np.asarray([get_coords(d) for d in devices]).min(0)
  for device in devices:
    grid[tuple(np.asarray(get_coords(device)) - origin)] = device
  host = _tpu_bounds(local)
  grid, bounds, submesh, host = _z_major(grid, bounds, submesh, host)
  ordered = _tile_over(grid, [(g // m, m) for g, m in zip(bounds, submesh)])
  if tile_by_host_if_needed and not _rows_contiguous_per_host(ordered):
    parts = _host_tile(bounds, submesh, host)
    if parts is not None:
      log = logging.info if jax.process_index() == 0 else logging.debug
      log(
          "get_mesh: ordering the data axis host by host (tile %s, host %s)",
          submesh,
          host,
      )
      ordered = _tile_over(grid, parts)
  return Mesh(ordered, MESH_AXES)


def _z_major(grid, bounds, submesh, host):
  """t5x's rule: a tile that is a full X (Y) line, or a full Y-Z (X-Z) plane, puts
  Z major in that plane (the grid's axes swapped), so hosts still hold whole tiles.
  """
  gx, gy, gz, _ = bounds
  mx, my, mz, _ = submesh
  if (mx == gx > 1 and my == mz == 1) or (
      mx == 1 and my == gy > 1 and mz == gz > 1
  ):
    i, j = 1, 2
  elif (my == gy > 1 and mx == mz == 1) or (
      my == 1 and mx == gx > 1 and mz == gz > 1
  ):
    i, j = 0, 2
  else:
    return grid, bounds, submesh, host

  def swap(values):
    values = list(values)
    values[i], values[j] = values[j], values[i]
    return tuple(values)

  return grid.swapaxes(i, j), swap(bounds), swap(submesh), swap(host)


def _tile_over(grid: np.ndarray, parts) -> np.ndarray:
  """[data, model] devices from a hardware grid whose dimensions split into `parts`.

  parts[d] splits dimension d into k factors, the first k/2 for "data", the
  rest for "model": (data, model) or (data hosts, data devices, model hosts,
  model devices). Each axis takes its factors major to minor, factor by
  factor, dimension by dimension (x major).
  """
  k = len(parts[0])
  split = grid.reshape([f for p in parts for f in p])
  order = [d * k + j for j in range(k) for d in range(len(parts))]
  model_size = int(np.prod([p[j] for p in parts for j in range(k // 2, k)]))
  return split.transpose(order).reshape(-1, model_size)


def get_cpu_mesh() -> Mesh:
  """t5x's CPU test mesh: "data" over processes, "model" over each process's devices."""
  return Mesh(_devices_by_host(jax.devices()), MESH_AXES)


def _devices_by_host(devices) -> np.ndarray:
  """[processes, devices per process], each row sorted by device id."""
  by_host = {}
  for device in devices:
    by_host.setdefault(device.process_index, []).append(device)
  sizes = {len(v) for v in by_host.values()}
  if len(sizes) != 1:
    raise errors.ConfigError(
        f"Partitioner: processes hold different numbers of devices {sorted(sizes)}"
    )
  return np.asarray(
      [sorted(by_host[p], key=lambda d: d.id) for p in sorted(by_host)],
      dtype=object,
  )


def _host_grouped(devices, num_partitions: int) -> np.ndarray:
  """[data, model] with "model" inside a process (or over whole processes).

  A model replica of at most one process's devices stays inside a process
  (NVLink / host memory); a larger one spans consecutive whole processes.
  "data" runs process-major, so each process holds consecutive rows.
  """
  hosts = _devices_by_host(devices)
  num_hosts, per_host = hosts.shape
  if num_partitions <= per_host and per_host % num_partitions == 0:
    return hosts.reshape(-1, num_partitions)
  if num_partitions > per_host and num_partitions % per_host == 0:
    span = num_partitions // per_host
    if num_hosts % span == 0:
      return hosts.reshape(num_hosts // span, num_partitions)
  raise errors.ConfigError(
      f"Partitioner: model axis size {num_partitions} must divide, or be a "
      f"multiple of, the {per_host} devices of each process "
      f"({num_hosts} processes)"
  )


def get_gpu_mesh(
    num_partitions: int, devices: Optional[Sequence[Any]] = None
) -> Mesh:
  """t5x's GPU mesh: "model" on NVLink (inside a node) first, "data" across nodes.

  `devices` (default `jax.devices()`) is a tkx addition, e.g. for mock devices.
  """
  return Mesh(
      _host_grouped(
          list(devices) if devices else jax.devices(), num_partitions
      ),
      MESH_AXES,
  )


def _t5x_submesh(device_kind: str, bounds, num_partitions: int):
  """t5x's default (x, y, z, cores) tiles for TPU v2/v3/v4 (megacore), or None."""
  if device_kind in ("TPU v2", "TPU v3"):
    return {
        1: (1, 1, 1, 1),
        2: (1, 1, 1, 2),
        4: (2, 1, 1, 2),
        8: (2, 2, 1, 2),
        16: (4, 2, 1, 2),
    }.get(num_partitions)
  if device_kind in ("TPU v4", "TPU v4 lite") and bounds[3] == 1:
    x, _, z, _ = bounds
    table = {1: (1, 1, 1, 1), 2: (1, 2, 1, 1)}
    table[4] = (4, 1, 1, 1) if x >= 4 else (2, 2, 1, 1)
    table[8] = (1, 1, 8, 1) if z >= 8 else (4, 2, 1, 1)
    if z >= 16:
      table[16] = (1, 1, 16, 1)
    elif x >= 8:
      table[16] = (8, 2, 1, 1)
    elif x >= 4:
      table[16] = (4, 4, 1, 1)
    else:
      table[16] = (2, 2, 4, 1)
    return table.get(num_partitions)
  return None


def _grown_submesh(bounds, host, num_partitions: int):
  """A tile of `num_partitions` devices: one host's cores, x, y, z first, then the slice's.

  Used where t5x has no default (newer TPUs, other sizes). None if no tile of
  that size divides the slice.
  """
  tile = [1, 1, 1, 1]
  left = num_partitions
  for limits in (host, bounds):
    for d in (3, 0, 1, 2):  # cores, then x, y, z
      room = limits[d] // tile[d]
      take = math.gcd(left, room)
      tile[d] *= take
      left //= take
  return tuple(tile) if left == 1 else None


def _tpu_mesh(devices, num_partitions: int, model_parallel_submesh) -> Mesh:
  first = min(d.process_index for d in devices)
  local = [d for d in devices if d.process_index == first]
  submesh = model_parallel_submesh
  if not submesh:
    bounds = _tpu_bounds(devices)
    submesh = _t5x_submesh(devices[-1].device_kind, bounds, num_partitions)
    if submesh is None or any(g % m for g, m in zip(bounds, submesh)):
      submesh = _grown_submesh(bounds, _tpu_bounds(local), num_partitions)
    if submesh is None or any(g % m for g, m in zip(bounds, submesh)):
      raise errors.ConfigError(
          f"Partitioner: no (x, y, z, cores) tile of {num_partitions} devices fits the "
          f"{devices[-1].device_kind} slice {bounds}; set model_parallel_submesh"
      )
  return get_mesh(submesh, devices, local)


def _is_full_tpu_box(devices) -> bool:
  if not all(d.platform == "tpu" and _has_tpu_coords(d) for d in devices):
    return False
  if len({getattr(d, "slice_index", 0) for d in devices}) > 1:
    return False
  return len(devices) == int(np.prod(_tpu_bounds(devices)))


def hybrid_mesh(ici_mesh_shape, dcn_mesh_shape, devices=None) -> Mesh:
  """("replica", "data", "model") mesh: `ici_mesh_shape` inside a slice (or GPU node),
  `dcn_mesh_shape` across them (t5x's multi-slice mesh; the overall shape is
  their product). Slices are told apart by `slice_index`, or by process where
  devices have none (GPUs).
  """
  devices = list(devices) if devices else jax.devices()
  for name, shape in (
      ("ici_mesh_shape", ici_mesh_shape),
      ("dcn_mesh_shape", dcn_mesh_shape),
  ):
    if len(tuple(shape)) != 3 or any(int(v) < 1 for v in shape):
      raise errors.ConfigError(
          f"Partitioner: {name} must be 3 positive sizes (replica, data, model), "
          f"got {tuple(shape)!r}"
      )
  from jax.experimental import mesh_utils

  # TPU slices are told apart by slice_index; GPU nodes (and CPU hosts) by process.
  by_process = devices[0].platform != "tpu" or not hasattr(
      devices[0], "slice_index"
  )
  try:
    grid = mesh_utils.create_hybrid_device_mesh(
        [int(v) for v in ici_mesh_shape],
        [int(v) for v in dcn_mesh_shape],
        devices=devices,
        process_is_granule=by_process,
        allow_split_physical_axes=True,
    )
  except (ValueError, AssertionError, NotImplementedError) as e:
    granule = "process" if by_process else "slice"
    raise errors.ConfigError(
        f"Partitioner: ici_mesh_shape={tuple(ici_mesh_shape)} (devices per {granule}) x "
        f"dcn_mesh_shape={tuple(dcn_mesh_shape)} ({granule}s) does not fit the "
        f"{len(devices)} devices: {e}"
    ) from None
  return Mesh(grid, HYBRID_MESH_AXES)


def default_mesh(
    num_partitions: int,
    model_parallel_submesh: Optional[HardwareMesh] = None,
    backend: Optional[str] = None,
    ici_mesh_shape: Optional[HardwareMesh] = None,
    dcn_mesh_shape: Optional[HardwareMesh] = None,
    *,
    devices: Optional[Sequence[Any]] = None,
) -> Mesh:
  """t5x's `default_mesh`: the mesh for `num_partitions`-way model parallelism.

  ici and dcn shapes given: `hybrid_mesh` (axes replica, data, model). A
  `model_parallel_submesh`, or a TPU slice: `get_mesh` with that tile, or
  t5x's default tile for the chip and `num_partitions` (TPU v2-v4); where t5x
  has none, the tile fills one host's chips (cores, x, y, z) before growing
  over the slice. GPU, CPU and anything else: `get_gpu_mesh` placement
  ("model" inside a process first). Unlike t5x's CPU mesh, `num_partitions`
  counts on CPU too. `devices` (default `jax.devices(backend)`) is a tkx
  addition.
  """
  devices = list(devices) if devices else jax.devices(backend)
  if ici_mesh_shape is not None or dcn_mesh_shape is not None:
    if ici_mesh_shape is None or dcn_mesh_shape is None:
      raise errors.ConfigError(
          "Partitioner: set both ici_mesh_shape and dcn_mesh_shape, or neither"
      )
    return hybrid_mesh(ici_mesh_shape, dcn_mesh_shape, devices)
  if _is_full_tpu_box(devices):
    return _tpu_mesh(devices, num_partitions, model_parallel_submesh)
  if model_parallel_submesh:
    num_partitions = int(np.prod(model_parallel_submesh))
  if len({getattr(d, "slice_index", 0) for d in devices}) > 1:
    raise errors.ConfigError(
        "Partitioner: the devices span several TPU slices; set ici_mesh_shape and "
        "dcn_mesh_shape (data parallelism across slices)"
    )
  try:
    return Mesh(_host_grouped(devices, num_partitions), MESH_AXES)
  except ValueError:
    # Uneven processes (e.g. a hand-picked device subset): plain id order.
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(
        np.asarray(ordered, dtype=object).reshape(-1, num_partitions), MESH_AXES
    )


# ------------------------------------------------------------ data rows
def _batch_axes(mesh: Mesh, data_axes=None) -> tuple[str, ...]:
  """Mesh axes the batch dimension is split over (major first)."""
  if data_axes is None:
    return tuple(a for a in (REPLICA_AXIS, DATA_AXIS) if a in mesh.axis_names)
  if isinstance(data_axes, str):
    return (data_axes,)
  return tuple(data_axes)


def _row_blocks(mesh: Mesh, data_axes) -> tuple[dict, int]:
  """{process_index: set of batch blocks its devices hold}, number of blocks.

  A device's block is its position along the batch axes, the first axis
  major: how `NamedSharding(mesh, P(data_axes))` splits a batch.
  """
  axes = _batch_axes(mesh, data_axes)
  positions = [mesh.axis_names.index(a) for a in axes]
  num_blocks = int(np.prod([mesh.devices.shape[p] for p in positions]))
  blocks = {}
  for index, device in np.ndenumerate(mesh.devices):
    block = 0
    for p in positions:
      block = block * mesh.devices.shape[p] + index[p]
    blocks.setdefault(device.process_index, set()).add(block)
  return blocks, num_blocks


def _merge_ranges(rows) -> tuple[tuple[int, int], ...]:
  ranges = []
  for row in sorted(rows):
    if ranges and ranges[-1][1] == row:
      ranges[-1][1] = row + 1
    else:
      ranges.append([row, row + 1])
  return tuple((a, b) for a, b in ranges)


def host_data_rows(
    partitioner_or_mesh, batch_size: int, data_axes=None
) -> dict:
  """{process_index: ((start, stop), ...)}: the global batch rows each host feeds.

  Read off the mesh (the devices each process owns and where they sit along
  the batch axes), so it holds for any device order. One range when a host's
  rows are consecutive (every mesh tkx builds on a TPU slice or a cluster of
  equal nodes). For `python -m tkx.multihost` and the docs.
  """
  mesh, axes = _mesh_and_batch_axes(partitioner_or_mesh, data_axes)
  blocks, num_blocks = _row_blocks(mesh, axes)
  if batch_size % num_blocks:
    raise errors.ConfigError(
        f"batch size {batch_size} is not divisible by the {num_blocks} data-parallel "
        "devices (the data axis size)"
    )
  rows_per_block = batch_size // num_blocks
  return {
      process: _merge_ranges(
          row
          for block in sorted(held)
          for row in range(block * rows_per_block, (block + 1) * rows_per_block)
      )
      for process, held in sorted(blocks.items())
  }


def _mesh_and_batch_axes(partitioner_or_mesh, data_axes):
  if isinstance(partitioner_or_mesh, Mesh):
    return partitioner_or_mesh, _batch_axes(partitioner_or_mesh, data_axes)
  partitioner = partitioner_or_mesh
  return partitioner.mesh, (
      partitioner.data_axes
      if data_axes is None
      else _batch_axes(partitioner.mesh, data_axes)
  )


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """Which part of the global batch one host feeds (t5x's `DataLayout`).

  `batch_size` is global. Hosts whose devices hold the same rows (a model
  replica that spans hosts) form a replica set: they share `shard_id` and read
  the same data; `num_shards` counts the distinct sets.
  """

  batch_size: int
  shard_id: int
  num_shards: int
  is_first_host_in_replica_set: bool

  @property
  def per_host_batch_size(self) -> int:
    return self.batch_size // self.num_shards

  @property
  def shard_info(self):
    import seqio  # imported here so partitioning stays usable without the data stack

    return seqio.ShardInfo(index=self.shard_id, num_shards=self.num_shards)


def data_layout(
    mesh: Mesh, batch_size=None, process_index=None, data_axes=None
) -> DataLayout:
  """t5x's `get_data_layout` for any device order, read off the mesh.

  Shards are the distinct sets of batch blocks hosts hold, numbered by their
  first block. Raises when hosts hold partly overlapping or unequal sets: no
  host-local input can feed such a mesh.
  """
  blocks, num_blocks = _row_blocks(mesh, _batch_axes(mesh, data_axes))
  process_index = (
      jax.process_index() if process_index is None else process_index
  )
  if process_index not in blocks:
    raise errors.ConfigError(
        f"Partitioner: process {process_index} has no device in this mesh and "
        "cannot feed data"
    )
  groups = sorted({frozenset(b) for b in blocks.values()}, key=min)
  held = set()
  for group in groups:
    if held & group or len(group) != len(groups[0]):
      raise errors.ConfigError(
          "Partitioner: hosts hold partly overlapping or unequal sets of data rows "
          f"({sorted(sorted(g) for g in groups)}); use a mesh whose model axis stays "
          "within a host or spans whole hosts"
      )
    held |= group
  batch_size = num_blocks if batch_size is None else int(batch_size)
  if batch_size % num_blocks:
    raise errors.ConfigError(
        f"Partitioner: global batch size {batch_size} is not divisible by the data "
        f"axis size {num_blocks}"
    )
  mine = frozenset(blocks[process_index])
  replicas = [p for p, b in blocks.items() if frozenset(b) == mine]
  return DataLayout(
      batch_size=batch_size,
      shard_id=groups.index(mine),
      num_shards=len(groups),
      is_first_host_in_replica_set=process_index == min(replicas),
  )


@dataclasses.dataclass
class LocalChunkInfo:
  """The part of a global array on one host: `slice` per dimension, and
  `replica_id`, unique among hosts holding the same part."""

  slice: tuple
  replica_id: int


class LocalChunker:
  """Which chunk of a sharded array one host holds (t5x's `LocalChunker`).

  For each mesh axis, `num_chunks[axis]` is how many distinct sets of
  positions hosts hold along it and `chunk_ids[axis]` this host's set, ordered
  by first position; for meshes whose hosts hold consecutive positions this
  is t5x's (position // positions per host). `process_index` (default this
  process) is a tkx addition, e.g. for mock devices.
  """

  def __init__(self, global_mesh: Mesh, process_index: Optional[int] = None):
    self.global_mesh = global_mesh
    self.process_index = (
        jax.process_index() if process_index is None else process_index
    )
    self.mesh_axes = list(global_mesh.axis_names)
    self.num_chunks = collections.OrderedDict()
    self.chunk_ids = collections.OrderedDict()
    self._positions = {}
    for axis_index, axis in enumerate(self.mesh_axes):
      held = {}
      for index, device in np.ndenumerate(global_mesh.devices):
        held.setdefault(device.process_index, set()).add(index[axis_index])
      groups = sorted({frozenset(p) for p in held.values()}, key=min)
      mine = held.get(self.process_index)
      if mine is None:
        raise ValueError(
            f"LocalChunker: process {self.process_index} has no device in the mesh"
        )
      self.num_chunks[axis] = len(groups)
      self.chunk_ids[axis] = groups.index(frozenset(mine))
      self._positions[axis] = sorted(mine)

  def get_local_chunk_info(self, global_shape, mesh_axes) -> LocalChunkInfo:
    """This host's slice of an array of `global_shape` sharded as `mesh_axes`.

    Raises if this host's positions along a sharded axis are not consecutive
    (its part is then no single slice; see `host_data_rows`).
    """
    local_slice = [slice(None)] * len(global_shape)
    sharded = set()
    for dim, (axis, size) in enumerate(zip(mesh_axes, global_shape)):
      if not axis:
        continue
      if not isinstance(axis, str):
        raise NotImplementedError(
            "LocalChunker: a dimension sharded over several mesh axes"
        )
      sharded.add(axis)
      positions = self._positions[axis]
      if positions[-1] - positions[0] + 1 != len(positions):
        raise ValueError(
            f"LocalChunker: this host holds positions {positions} along {axis!r}, "
            "which are not consecutive"
        )
      step = size // self.global_mesh.shape[axis]
      local_slice[dim] = slice(positions[0] * step, (positions[-1] + 1) * step)
    return LocalChunkInfo(tuple(local_slice), self.get_replica_id(sharded))

  def get_shard_id(self, sharded_mesh_axes) -> int:
    """This host's index along `sharded_mesh_axes` (first axis major)."""
    if isinstance(sharded_mesh_axes, str):
      sharded_mesh_axes = (sharded_mesh_axes,)
    shard_id = 0
    for axis in sharded_mesh_axes:
      shard_id = shard_id * self.num_chunks[axis] + self.chunk_ids[axis]
    return shard_id

  def get_replica_id(self, sharded_mesh_axes) -> int:
    """This host's index along the mesh axes not in `sharded_mesh_axes`."""
    if isinstance(sharded_mesh_axes, str):
      sharded_mesh_axes = (sharded_mesh_axes,)
    return self.get_shard_id(
        [a for a in self.mesh_axes if a not in set(sharded_mesh_axes)]
    )


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


def _model_size(
    num_devices,
    num_partitions,
    data_axis_size,
    model_axis_size,
    model_parallel_submesh,
    ici_mesh_shape,
    dcn_mesh_shape,
) -> int:
  """The "model" axis size from whichever mesh settings were given (one way each)."""
  if model_parallel_submesh is not None:
    submesh = tuple(model_parallel_submesh)
    if len(submesh) != 4:
      raise errors.ConfigError(
          "Partitioner: model_parallel_submesh must be an (x, y, z, cores) 4-tuple, "
          f"got {model_parallel_submesh!r}"
      )
    if num_partitions or model_axis_size or data_axis_size:
      raise errors.ConfigError(
          "Partitioner: set num_partitions (or the axis sizes) or "
          "model_parallel_submesh, not both"
      )
    return int(np.prod(submesh))
  if ici_mesh_shape is not None and dcn_mesh_shape is not None:
    model = int(tuple(ici_mesh_shape)[-1]) * int(tuple(dcn_mesh_shape)[-1])
    given = model_axis_size if model_axis_size is not None else num_partitions
    if given not in (None, model) or data_axis_size is not None:
      raise errors.ConfigError(
          f"Partitioner: ici_mesh_shape={tuple(ici_mesh_shape)} x dcn_mesh_shape="
          f"{tuple(dcn_mesh_shape)} give a model axis of {model}, but num_partitions / "
          f"model_axis_size={given}, data_axis_size={data_axis_size}: set "
          "partitioning.Partitioner.num_partitions = None (and no axis sizes)"
      )
    return model
  return _mesh_shape(
      num_devices, num_partitions, data_axis_size, model_axis_size
  )[1]


def _checked_rules(
    logical_axis_rules, shard_params_over_data, mesh_axes
) -> tuple:
  """The rules to use, each a (logical name, mesh axis of this mesh or None) pair.

  On a hybrid mesh the batch rule's "data" becomes ("replica", "data"), as in t5x.
  """
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
      raise errors.ConfigError(
          f"Partitioner: logical axis rule {rule!r} is not a "
          "(logical name, mesh axis) pair"
      )
    targets = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
    for target in targets:
      if target is not None and target not in mesh_axes:
        raise errors.ConfigError(
            f"Partitioner: rule {rule!r} names mesh axis {target!r}; "
            f"the mesh axes are {tuple(mesh_axes)}"
        )
  if REPLICA_AXIS in mesh_axes:
    rules = [
        (name, (REPLICA_AXIS, DATA_AXIS))
        if name == "batch" and target == DATA_AXIS
        else (name, target)
        for name, target in rules
    ]
  return tuple(rules)


@gin.configurable(module="partitioning")
class Partitioner:
  """A device mesh plus logical-axis rules; jits functions with explicit shardings.

  The mesh is ("data", "model"), or ("replica", "data", "model") with
  `ici_mesh_shape` / `dcn_mesh_shape`; `default_mesh` places the devices.

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
    devices: devices to use (default: all devices of all processes, or of
      `backend`).
    model_parallel_submesh: t5x's (x, y, z, cores) TPU tile of one model
      replica, laid over the torus by `get_mesh` (instead of num_partitions).
    ici_mesh_shape / dcn_mesh_shape: t5x's hybrid mesh, (replica, data, model)
      sizes inside a slice (GPU node) and across slices (nodes); the batch is
      split over ("replica", "data"), so with dcn (n, 1, 1) the model and FSDP
      ("embed" -> "data") collectives stay inside a slice and only data
      parallelism crosses the slower network.
    backend: take the devices of this JAX backend ("cpu", "gpu", "tpu").
    mesh: a ready mesh with "data" and "model" axes (e.g. from `get_mesh`)
      instead of the settings above.
  """

  def __init__(
      self,
      num_partitions: Optional[int] = None,
      data_axis_size: Optional[int] = None,
      model_axis_size: Optional[int] = None,
      logical_axis_rules: Optional[LogicalRules] = None,
      shard_params_over_data: bool = False,
      devices: Optional[Sequence[Any]] = None,
      model_parallel_submesh: Optional[HardwareMesh] = None,
      ici_mesh_shape: Optional[Sequence[int]] = None,
      dcn_mesh_shape: Optional[Sequence[int]] = None,
      backend: Optional[str] = None,
      mesh: Optional[Mesh] = None,
  ):
    if mesh is not None:
      mesh_settings = (num_partitions, data_axis_size, model_axis_size, devices)
      mesh_settings += (model_parallel_submesh, ici_mesh_shape, dcn_mesh_shape)
      if any(v is not None for v in mesh_settings) or backend:
        raise errors.ConfigError(
            "Partitioner: a ready mesh was given; leave the other mesh settings unset"
        )
      if MODEL_AXIS not in mesh.axis_names or DATA_AXIS not in mesh.axis_names:
        raise errors.ConfigError(
            f"Partitioner: the mesh's axes {mesh.axis_names} need 'data' and 'model'"
        )
      devices = list(mesh.devices.flat)
    else:
      devices = list(devices) if devices is not None else jax.devices(backend)
      model = _model_size(
          len(devices),
          num_partitions,
          data_axis_size,
          model_axis_size,
          model_parallel_submesh,
          ici_mesh_shape,
          dcn_mesh_shape,
      )
      mesh = default_mesh(
          model,
          model_parallel_submesh,
          ici_mesh_shape=ici_mesh_shape,
          dcn_mesh_shape=dcn_mesh_shape,
          devices=devices,
      )
    self.mesh = Mesh(
        mesh.devices,
        mesh.axis_names,
        axis_types=(AxisType.Auto,) * len(mesh.axis_names),
    )
    self.logical_axis_rules = _checked_rules(
        logical_axis_rules, shard_params_over_data, self.mesh.axis_names
    )
    self.shard_params_over_data = shard_params_over_data
    batch_axes = nn.logical_to_mesh_axes(("batch",), self.logical_axis_rules)[0]
    self.data_axes = _batch_axes(self.mesh, batch_axes or ())
    self._layouts, self._host_rows = {}, {}
    if jax.process_index() == 0:
      log.info(
          "Partitioner: mesh %s over %d devices (%d processes), batch split over %s",
          dict(self.mesh.shape),
          len(devices),
          len({d.process_index for d in devices}),
          self.data_axes,
      )

  # ---------------------------------------------------------------- mesh facts
  @property
  def data_axis_size(self) -> int:
    """How many parts the batch is split into (t5x's `data_mesh_size`)."""
    return int(np.prod([self.mesh.shape[a] for a in self.data_axes]))

  data_mesh_size = data_axis_size

  @property
  def model_axis_size(self) -> int:
    return self.mesh.shape[MODEL_AXIS]

  @property
  def num_partitions(self) -> int:
    return self.model_axis_size

  @property
  def data_partition_spec(self) -> PartitionSpec:
    return PartitionSpec(self.data_axes or None)

  @property
  def data_sharding(self) -> NamedSharding:
    """Leading (batch) dimension over the batch axes, the rest replicated."""
    return NamedSharding(self.mesh, self.data_partition_spec)

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
        log.warning(
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
      self, batch_size: Optional[int] = None, host_index: Optional[int] = None
  ) -> DataLayout:
    """t5x's `get_data_layout`: which rows of a global `batch_size` this host feeds.

    Read off the mesh, so any device order works (see `data_layout`).
    `host_index` (default this process) computes another host's layout.
    """
    key = (batch_size, host_index)
    if key not in self._layouts:  # every step asks; the mesh never changes
      self._layouts[key] = data_layout(
          self.mesh, batch_size, host_index, self.data_axes
      )
    return self._layouts[key]

  def get_data_shard_info(self):
    """`seqio.ShardInfo` for this host's input pipeline."""
    return self.get_data_layout().shard_info

  def get_local_chunk_info(self, global_shape, mesh_axes) -> LocalChunkInfo:
    """t5x's: this host's slice of an array of `global_shape` sharded as `mesh_axes`."""
    return LocalChunker(self.mesh).get_local_chunk_info(global_shape, mesh_axes)

  def host_rows(
      self, batch_size: int, process_index: Optional[int] = None
  ) -> np.ndarray:
    """Global batch rows this host feeds, ascending: its host-local batch, row by row."""
    process_index = (
        jax.process_index() if process_index is None else process_index
    )
    key = (batch_size, process_index)
    if key not in self._host_rows:  # every step asks; the mesh never changes
      self.get_data_layout(batch_size, process_index)  # checks the layout
      ranges = host_data_rows(self, batch_size)[process_index]
      rows = np.concatenate([np.arange(a, b) for a, b in ranges])
      rows.flags.writeable = False
      self._host_rows[key] = rows
    return self._host_rows[key]

  def host_local_to_global(self, batch):
    """Host-local numpy batch (this host's rows) -> global `jax.Array`s split over the batch axes.

    Each leaf's first dimension is the host-local batch, which holds the rows
    `host_rows` names, in order; the global batch is that times the number
    of data shards. Each device gets its rows wherever the mesh puts it.
    Arrays that are already global `jax.Array`s pass through.
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
      return self._place_rows(x, global_shape)

    return jax.tree_util.tree_map(to_global, batch)

  def _place_rows(self, x: np.ndarray, global_shape) -> jax.Array:
    """Puts each addressable device's global rows, found in the host-local `x`, on it."""
    rows = self.host_rows(global_shape[0])
    local_of = {int(row): k for k, row in enumerate(rows)}
    sharding = self.data_sharding
    devices, pieces = [], []
    for device, index in sharding.addressable_devices_indices_map(
        global_shape
    ).items():
      start, stop, _ = index[0].indices(global_shape[0])
      first = local_of[start]
      devices.append(device)
      pieces.append(x[first : first + (stop - start)])
    arrays = jax.device_put(pieces, devices)
    return jax.make_array_from_single_device_arrays(
        global_shape, sharding, arrays
    )

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
    model_parallel_submesh: t5x's (x, y, z, cores) TPU tile of one model replica,
      laid over the torus by `get_mesh`. Set one of the two.
    params_on_devices: must be True (tkx keeps parameters on the devices).
    backend: take the devices of this JAX backend ("cpu", "gpu", "tpu").
    ici_mesh_shape, dcn_mesh_shape: t5x's hybrid (replica, data, model) mesh;
      num_partitions is then ignored, as in t5x.
    logical_axis_rules: default `standard_logical_axis_rules()`.
    use_cpu_pjit: accepted; tkx partitions on CPU as on any backend.
  """

  def __init__(
      self,
      num_partitions: Optional[int] = None,
      model_parallel_submesh: Optional[HardwareMesh] = None,
      params_on_devices: bool = True,
      backend: Optional[str] = None,
      ici_mesh_shape: Optional[Sequence[int]] = None,
      dcn_mesh_shape: Optional[Sequence[int]] = None,
      logical_axis_rules: Optional[LogicalRules] = None,
      use_cpu_pjit: Optional[bool] = False,
  ):
    del use_cpu_pjit
    hybrid = ici_mesh_shape is not None and dcn_mesh_shape is not None
    if not num_partitions and not model_parallel_submesh and not hybrid:
      raise errors.ConfigError(
          "PjitPartitioner: set num_partitions or model_parallel_submesh"
      )
    if num_partitions and model_parallel_submesh:
      raise errors.ConfigError(
          "PjitPartitioner: set num_partitions or model_parallel_submesh, not both"
      )
    if not params_on_devices:
      raise errors.ConfigError(
          "PjitPartitioner: params_on_devices=False is not supported; tkx keeps "
          "parameters on the devices"
      )
    super().__init__(
        num_partitions=None if hybrid else num_partitions,
        logical_axis_rules=logical_axis_rules,
        model_parallel_submesh=model_parallel_submesh,
        ici_mesh_shape=ici_mesh_shape,
        dcn_mesh_shape=dcn_mesh_shape,
        backend=backend,
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
        raise errors.ConfigError(
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
