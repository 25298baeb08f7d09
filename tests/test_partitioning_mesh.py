"""Meshes of real pod slices and GPU clusters, on t5x-style mock devices (pure Python).

A mock device carries what JAX's TPU devices carry (`id`, `process_index`,
`coords`, `core_on_chip`, `platform`, `device_kind`), laid out per host as on
the real slices; `jax.sharding.Mesh` accepts such objects, so the mesh, the
data layout and each host's rows are computed exactly as on a pod. The last
tests run the real data path on the 8 CPU devices in a shuffled order.
"""

import dataclasses
import itertools
import pathlib
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import mesh_utils
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from tkx import partitioning
from tkx.partitioning import Partitioner


@dataclasses.dataclass(frozen=True)
class TpuDevice:
  id: int
  process_index: int
  coords: tuple
  core_on_chip: int
  platform: str = "tpu"
  device_kind: str = "TPU v4"


@dataclasses.dataclass(frozen=True)
class SliceTpuDevice(TpuDevice):
  slice_index: int = 0


@dataclasses.dataclass(frozen=True)
class GpuDevice:
  id: int
  process_index: int
  platform: str = "gpu"
  device_kind: str = "NVIDIA H100 80GB HBM3"


def tpu_slice(bounds, host, kind, slice_index=None, first_id=0, first_host=0):
  """Devices of a (x, y, z, cores) slice, `host` (x, y, z, cores) per host.

  Ids count cores fastest, then x, y, z; hosts count x fastest, then y, z
  (t5x's mock layout).
  """
  nx, ny, nz, nc = bounds
  hx, hy, hz, _ = host
  hosts_x, hosts_y = nx // hx, ny // hy
  devices = []
  for z, y, x, c in itertools.product(*map(range, (nz, ny, nx, nc))):
    kwargs = dict(
        id=first_id + ((z * ny + y) * nx + x) * nc + c,
        process_index=first_host
        + ((z // hz) * hosts_y + y // hy) * hosts_x
        + x // hx,
        coords=(x, y, z),
        core_on_chip=c,
        device_kind=kind,
    )
    if slice_index is None:
      devices.append(TpuDevice(**kwargs))
    else:
      devices.append(SliceTpuDevice(slice_index=slice_index, **kwargs))
  return devices


def gpu_cluster(nodes, per_node=8):
  return [
      GpuDevice(id=n * per_node + i, process_index=n)
      for n in range(nodes)
      for i in range(per_node)
  ]


V3_HOST = (2, 2, 1, 2)  # 4 chips x 2 cores
MEGACORE_HOST = (2, 2, 1, 1)  # v4 / v5p: 4 chips, one device each
SLICES = {
    "v3-32": ((4, 4, 1, 2), V3_HOST, "TPU v3"),
    "v4-8": ((2, 2, 1, 1), MEGACORE_HOST, "TPU v4"),
    "v4-16": ((2, 2, 2, 1), MEGACORE_HOST, "TPU v4"),
    "v4-32": ((2, 2, 4, 1), MEGACORE_HOST, "TPU v4"),
    "v4-64": ((2, 4, 4, 1), MEGACORE_HOST, "TPU v4"),
    "v4-128": ((4, 4, 4, 1), MEGACORE_HOST, "TPU v4"),
    "v5e-8": ((2, 4, 1, 1), (2, 4, 1, 1), "TPU v5 lite"),  # one host of 8 chips
    "v5e-16": ((4, 4, 1, 1), (2, 2, 1, 1), "TPU v5 lite"),
    "v5e-16/8-chip-hosts": ((4, 4, 1, 1), (2, 4, 1, 1), "TPU v5 lite"),
    "v5e-32": ((4, 8, 1, 1), (2, 2, 1, 1), "TPU v5 lite"),
    "v5e-64": ((8, 8, 1, 1), (2, 2, 1, 1), "TPU v5 lite"),
    "v5p-64": ((2, 4, 4, 1), MEGACORE_HOST, "TPU v5"),
}


def slice_devices(name):
  bounds, host, kind = SLICES[name]
  return tpu_slice(bounds, host, kind)


def _divisors(n):
  return [d for d in range(1, n + 1) if n % d == 0]


CASES = [
    (name, model)
    for name in SLICES
    for model in _divisors(int(np.prod(SLICES[name][0])))
] + [
    (f"gpu-{nodes}x8", model)
    for nodes in (1, 2, 4)
    for model in _divisors(nodes * 8)
]


def _devices(name):
  if name.startswith("gpu-"):
    return gpu_cluster(int(name[4:].split("x")[0]))
  return slice_devices(name)


def _rows_of_devices(mesh, batch_size):
  """{process: set of rows} straight from the device grid: row i of the
  [(replica x) data, model] grid holds batch rows [i * r, (i + 1) * r), as
  P("data") (or P(("replica", "data"))) splits a batch."""
  grid = mesh.devices.reshape(-1, mesh.shape["model"])
  per_row = batch_size // grid.shape[0]
  rows = {}
  for (i, _), device in np.ndenumerate(grid):
    rows.setdefault(device.process_index, set()).update(
        range(i * per_row, (i + 1) * per_row)
    )
  return rows


def _check_layouts(partitioner, batch_size):
  """Every host's layout covers exactly its devices' rows; the shards tile the batch."""
  mesh = partitioner.mesh
  expected = _rows_of_devices(mesh, batch_size)
  ranges = partitioning.host_data_rows(partitioner, batch_size)
  assert set(ranges) == set(expected)
  layouts = {
      p: partitioner.get_data_layout(batch_size, host_index=p) for p in expected
  }
  num_shards = {layout.num_shards for layout in layouts.values()}
  assert len(num_shards) == 1
  (num_shards,) = num_shards
  by_shard = {}
  for process, layout in layouts.items():
    rows = partitioner.host_rows(batch_size, process)
    assert list(rows) == sorted(expected[process])
    assert [r for a, b in ranges[process] for r in range(a, b)] == list(rows)
    assert len(rows) == layout.per_host_batch_size == batch_size // num_shards
    assert layout.batch_size == batch_size
    by_shard.setdefault(layout.shard_id, []).append((process, tuple(rows)))
  assert sorted(by_shard) == list(range(num_shards))
  tiled = []
  for shard_id, members in by_shard.items():
    assert (
        len({rows for _, rows in members}) == 1
    )  # a replica set reads one shard
    firsts = [p for p, _ in members if layouts[p].is_first_host_in_replica_set]
    assert len(firsts) == 1
    tiled.extend(members[0][1])
  assert sorted(tiled) == list(range(batch_size))
  return ranges


@pytest.mark.parametrize("name,model", CASES, ids=lambda v: str(v))
def test_every_slice_and_cluster_builds_and_hosts_feed_their_own_rows(
    name, model
):
  devices = _devices(name)
  partitioner = Partitioner(num_partitions=model, devices=devices)
  assert dict(partitioner.mesh.shape) == {
      "data": len(devices) // model,
      "model": model,
  }
  assert sorted(d.id for d in partitioner.mesh.devices.flat) == sorted(
      d.id for d in devices
  )
  ranges = _check_layouts(partitioner, 4 * partitioner.data_axis_size)
  # tkx orders the mesh so each host feeds one block of consecutive rows.
  assert all(len(r) == 1 for r in ranges.values()), ranges
  # A model replica never straddles hosts partially: it fits in one host or
  # covers whole hosts.
  for replica in partitioner.mesh.devices:
    hosts = {d.process_index for d in replica}
    per_host = len(replica) // len(hosts)
    assert all(
        sum(d.process_index == h for d in replica) == per_host for h in hosts
    )


@pytest.mark.parametrize("name", ["v4-32", "v4-128", "v5e-32", "v5p-64"])
def test_torus_order_with_interleaved_hosts_still_maps_each_hosts_rows(name):
  """JAX's topology order (what tkx used before) gives hosts non-consecutive
  rows; the layout still follows the devices."""
  devices = slice_devices(name)
  grid = mesh_utils.create_device_mesh(
      (len(devices), 1), devices=devices, allow_split_physical_axes=True
  )
  partitioner = Partitioner(mesh=Mesh(grid, ("data", "model")))
  ranges = _check_layouts(partitioner, 2 * len(devices))
  assert any(len(r) > 1 for r in ranges.values())
  untiled = partitioning.get_mesh(
      (1, 1, 1, 1), devices, tile_by_host_if_needed=False
  )
  assert any(
      len(r) > 1 for r in partitioning.host_data_rows(untiled, 64).values()
  )
  _check_layouts(Partitioner(mesh=untiled), 64)


def test_model_parallel_submesh_is_a_tile_of_the_torus():
  devices = slice_devices("v4-32")  # 2x2x4 chips, 4 hosts of 2x2x1
  mesh = Partitioner(model_parallel_submesh=(1, 1, 2, 1), devices=devices).mesh
  assert dict(mesh.shape) == {"data": 8, "model": 2}
  for replica in mesh.devices:
    (x0, y0, z0), (x1, y1, z1) = (d.coords for d in replica)
    assert (x0, y0) == (x1, y1) and abs(
        z0 - z1
    ) == 1  # a z-pair, not 2 x-neighbours
  mesh = Partitioner(model_parallel_submesh=(2, 1, 1, 1), devices=devices).mesh
  for replica in mesh.devices:
    assert {d.coords[0] for d in replica} == {0, 1}
    assert len({d.coords[1:] for d in replica}) == 1
  _check_layouts(
      Partitioner(model_parallel_submesh=(1, 1, 2, 1), devices=devices), 32
  )
  with pytest.raises(ValueError, match=r"must divide the slice's"):
    Partitioner(model_parallel_submesh=(3, 1, 1, 1), devices=devices)
  with pytest.raises(ValueError, match="4-tuple"):
    Partitioner(model_parallel_submesh=(2, 1), devices=devices)


def test_a_full_x_line_tile_makes_z_major():
  """t5x's rule: a tile of a whole X line on a 3-D slice keeps Z major in YZ."""
  devices = slice_devices("v4-64")  # 2x4x4
  mesh = partitioning.get_mesh((2, 1, 1, 1), devices)
  for i, row in enumerate(mesh.devices):
    z, y = divmod(i, 4)
    assert [d.coords for d in row] == [(0, y, z), (1, y, z)]


def test_t5x_default_tiles_and_tkx_growth():
  v4_32 = slice_devices("v4-32")
  replica = partitioning.default_mesh(4, devices=v4_32).devices[0]
  assert {d.coords for d in replica} == {  # (2, 2, 1, 1): one host's four chips
      (x, y, 0) for x in range(2) for y in range(2)
  }
  v5e = slice_devices("v5e-32")  # no t5x default: one host's 2x2 chips first
  replica = partitioning.default_mesh(4, devices=v5e).devices[0]
  assert len({d.process_index for d in replica}) == 1
  replica = partitioning.default_mesh(8, devices=v5e).devices[0]
  assert {d.coords[:2] for d in replica} == {
      (x, y) for x in range(4) for y in range(2)
  }


def test_gpu_mesh_keeps_model_inside_a_node():
  cluster = gpu_cluster(4)
  mesh = partitioning.get_gpu_mesh(8, cluster)
  assert dict(mesh.shape) == {"data": 4, "model": 8}
  assert [{d.process_index for d in row} for row in mesh.devices] == [
      {0},
      {1},
      {2},
      {3},
  ]
  mesh = partitioning.get_gpu_mesh(16, cluster)
  assert [{d.process_index for d in row} for row in mesh.devices] == [
      {0, 1},
      {2, 3},
  ]
  with pytest.raises(ValueError, match="must divide, or be a multiple of"):
    partitioning.get_gpu_mesh(3, gpu_cluster(3, per_node=4))


def test_hybrid_mesh_keeps_model_and_fsdp_inside_a_node():
  cluster = gpu_cluster(4)
  partitioner = Partitioner(
      ici_mesh_shape=(1, 4, 2),
      dcn_mesh_shape=(4, 1, 1),
      shard_params_over_data=True,
      devices=cluster,
  )
  mesh = partitioner.mesh
  assert dict(mesh.shape) == {"replica": 4, "data": 4, "model": 2}
  assert partitioner.data_axes == ("replica", "data")
  assert partitioner.data_axis_size == 16
  for r in range(4):  # one node per replica: data x model inside it
    assert {d.process_index for d in mesh.devices[r].flat} == {r}
  assert partitioner.logical_to_mesh_axes(P("batch", "length", "embed")) == P(
      ("replica", "data"), None, None
  )
  assert partitioner.logical_to_mesh_axes(P("embed", "mlp")) == P(
      "data", "model"
  )  # FSDP over the node's data axis only
  _check_layouts(partitioner, 64)
  for kwargs, message in [
      (
          dict(ici_mesh_shape=(1, 8, 2), dcn_mesh_shape=(2, 1, 1)),
          "does not fit",
      ),
      (dict(ici_mesh_shape=(4, 2), dcn_mesh_shape=(4, 1)), "3 positive sizes"),
      (dict(ici_mesh_shape=(1, 4, 2)), "set both"),
      (
          dict(
              ici_mesh_shape=(1, 4, 2),
              dcn_mesh_shape=(4, 1, 1),
              num_partitions=4,
          ),
          "num_partitions = None",
      ),
  ]:
    with pytest.raises(ValueError, match=message):
      Partitioner(devices=cluster, **kwargs)


def test_hybrid_mesh_over_two_tpu_slices():
  bounds, host, kind = SLICES["v4-16"]
  devices = tpu_slice(bounds, host, kind, slice_index=0) + tpu_slice(
      bounds, host, kind, slice_index=1, first_id=8, first_host=2
  )
  partitioner = Partitioner(
      ici_mesh_shape=(1, 4, 2), dcn_mesh_shape=(2, 1, 1), devices=devices
  )
  for r in range(2):
    assert {d.slice_index for d in partitioner.mesh.devices[r].flat} == {r}
  _check_layouts(partitioner, 32)
  with pytest.raises(ValueError, match="several TPU slices"):
    Partitioner(devices=devices)


def test_partly_overlapping_hosts_are_refused_clearly():
  devices = gpu_cluster(2, per_node=4)
  # Host 0 holds rows {0, 1, 3}, host 1 rows {1, 2, 3}: they would have to
  # feed rows 1 and 3 identically but row 0 and 2 differently.
  order = [devices[i] for i in (0, 1, 2, 4, 5, 6, 3, 7)]
  mesh = Mesh(np.asarray(order, dtype=object).reshape(4, 2), ("data", "model"))
  with pytest.raises(ValueError, match="partly overlapping or unequal"):
    Partitioner(mesh=mesh).get_data_layout(8, host_index=0)


# ------------------------------------------------------------ t5x's own tests
# t5x/partitioning_test.py, on the public API, in tkx's words.
TPU_V3_32 = slice_devices("v3-32")


def _local_block(mesh, process_index):
  """The part of the mesh's device grid on one host (t5x's `local_mesh.devices`)."""
  mine = np.vectorize(lambda d: d.process_index == process_index)(mesh.devices)
  rows = np.flatnonzero(mine.any(axis=1))
  cols = np.flatnonzero(mine.any(axis=0))
  return mesh.devices[np.ix_(rows, cols)]


def test_t5x_bounds_from_last_device():
  last = mock.Mock(coords=(3, 3, 3), core_on_chip=1)
  assert partitioning.bounds_from_last_device(last) == (4, 4, 4, 2)
  with mock.patch.object(
      jax, "process_count", return_value=1
  ), mock.patch.object(jax, "local_device_count", return_value=4):
    assert partitioning.bounds_from_last_device(mock.Mock(spec=[])) == (1, 4)


def test_t5x_get_coords():
  device = mock.Mock(coords=(1, 0, 1), core_on_chip=1)
  assert partitioning.get_coords(device) == (1, 0, 1, 1)
  device = mock.Mock(spec=["process_index", "id"])
  device.process_index, device.id = 1, 9
  with mock.patch.object(jax, "local_device_count", return_value=8):
    assert partitioning.get_coords(device) == (1, 1)


def test_t5x_default_mesh():
  mesh = partitioning.default_mesh(4, devices=TPU_V3_32)
  assert mesh.axis_names == ("data", "model")
  assert dict(mesh.shape) == {"data": 8, "model": 4}
  assert mesh.size == 32
  for process_index in range(4):
    assert _local_block(mesh, process_index).shape == (2, 4)
  by_id = {d.id: d for d in TPU_V3_32}
  expected = [
      [by_id[i] for i in (0, 1, 2, 3)],
      [by_id[i] for i in (8, 9, 10, 11)],
  ]
  assert _local_block(mesh, 0).tolist() == expected
  assert [d.coords for d in expected[0]] == [
      (0, 0, 0),
      (0, 0, 0),
      (1, 0, 0),
      (1, 0, 0),
  ]


def test_t5x_local_chunker():
  mesh = partitioning.default_mesh(4, devices=TPU_V3_32)
  host_order = []
  for device in mesh.devices[:, 0]:
    if device.process_index not in host_order:
      host_order.append(device.process_index)
  for process_index in range(4):
    chunker = partitioning.LocalChunker(mesh, process_index=process_index)
    assert chunker.num_chunks["data"] == 4 and chunker.num_chunks["model"] == 1
    chunk = host_order.index(process_index)
    assert (
        chunker.chunk_ids["data"] == chunk and chunker.chunk_ids["model"] == 0
    )
    info = chunker.get_local_chunk_info((128, 16), ["data", "model"])
    assert info.replica_id == 0
    assert info.slice == (slice(32 * chunk, 32 * (chunk + 1)), slice(0, 16))
    info = chunker.get_local_chunk_info((128, 16), [None, "model"])
    assert info.replica_id == chunk
    assert info.slice == (slice(None), slice(0, 16))


def test_cpu_meshes_and_local_chunks_of_interleaved_hosts():
  mesh = partitioning.get_cpu_mesh()  # t5x's: processes x local devices
  assert dict(mesh.shape) == {"data": 1, "model": 8}
  mesh = partitioning.get_mesh(
      (1, 1, 1, 2), jax.devices()
  )  # no torus: a tile of 2
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  interleaved = partitioning.get_mesh(
      (1, 1, 1, 1), slice_devices("v4-32"), tile_by_host_if_needed=False
  )
  chunker = partitioning.LocalChunker(interleaved, process_index=1)
  assert chunker.num_chunks["data"] == 4
  with pytest.raises(ValueError, match="not consecutive"):
    chunker.get_local_chunk_info((64,), ["data"])
  assert chunker.get_local_chunk_info((64,), [None]).slice == (slice(None),)


def test_t5x_get_mesh_axes_of_params():
  partitioner = partitioning.PjitPartitioner(
      num_partitions=1,
      logical_axis_rules=(
          ("batch", "data"),
          ("embed", None),
          ("vocab", "model"),
          ("mlp", "model"),
      ),
  )
  axes = {
      "logits_dense": P("vocab", "embed"),
      "mlp": {"wo": {"kernel": P("embed", "mlp")}},
  }
  assert partitioner.logical_to_mesh_axes(axes) == {
      "logits_dense": P("model", None),
      "mlp": {"wo": {"kernel": P(None, "model")}},
  }


@pytest.mark.parametrize(
    "activation_dims,param_dims", [(1, 1), (1, 2), (2, 1), (2, 2)]
)
def test_t5x_standard_logical_axis_rules_take_additional_rules(
    activation_dims, param_dims
):
  default = partitioning.standard_logical_axis_rules(
      activation_dims, param_dims
  )
  custom = (
      ("my-new-axis", "data"),
      ("another-axis", None),
      ("another-one", "model"),
  )
  rules = partitioning.standard_logical_axis_rules(
      activation_dims, param_dims, additional_rules=custom
  )
  assert rules[: len(default)] == default
  assert rules[len(default) :] == list(custom)


def test_t5x_update_logical_axis_rules():
  updated = partitioning.update_logical_axis_rules(
      (("a", None), ("b", "model"), ("c", "data")),
      (("a", "model"), ("d", None), ("c", None)),
  )
  assert updated == (("a", "model"), ("b", "model"), ("c", None), ("d", None))
  fsdp = partitioning.standard_logical_axis_rules(
      2, 2
  )  # embed -> model, then data
  assert [
      t
      for n, t in partitioning.update_logical_axis_rules(
          fsdp, [("embed", None)]
      )
      if n == "embed"
  ] == [None]


def test_t5x_data_layout_contract():
  partitioner = Partitioner(num_partitions=4, devices=TPU_V3_32)
  layouts = [partitioner.get_data_layout(host_index=p) for p in range(4)]
  assert [l.batch_size for l in layouts] == [
      8
  ] * 4  # default: the data mesh size
  assert sorted(l.shard_id for l in layouts) == [0, 1, 2, 3]
  with pytest.raises(ValueError, match="not divisible by the data axis size 8"):
    partitioner.get_data_layout(12, host_index=0)


# --------------------------------------------------- the real data path on CPU
def test_shuffled_cpu_devices_get_their_own_rows_and_the_right_batch():
  devices = list(jax.devices())
  order = [
      devices[i] for i in np.random.default_rng(5).permutation(len(devices))
  ]
  mesh = Mesh(np.asarray(order, dtype=object).reshape(4, 2), ("data", "model"))
  partitioner = Partitioner(mesh=mesh)
  batch = {
      "inputs": np.arange(8 * 3, dtype=np.int32).reshape(8, 3),
      "weights": np.linspace(0, 1, 8, dtype=np.float32),
  }
  global_batch = partitioner.host_local_to_global(batch)
  for shard in global_batch["inputs"].addressable_shards:
    (data_index,) = {
        i for i, row in enumerate(mesh.devices) if shard.device in set(row)
    }
    np.testing.assert_array_equal(
        shard.data, batch["inputs"][2 * data_index : 2 * data_index + 2]
    )
  summed = partitioner.partition(
      lambda b: (b["inputs"].sum(1) * b["weights"]).sum(),
      in_shardings=(partitioner.data_sharding,),
      out_shardings=partitioner.replicated,
  )(global_batch)
  expected = (batch["inputs"].sum(1) * batch["weights"]).sum()
  np.testing.assert_allclose(float(summed), expected, rtol=1e-6)


def test_hybrid_mesh_on_cpu_runs_a_step():
  partitioner = Partitioner(
      ici_mesh_shape=(1, 4, 2),
      dcn_mesh_shape=(1, 1, 1),
      shard_params_over_data=True,
  )
  assert dict(partitioner.mesh.shape) == {"replica": 1, "data": 4, "model": 2}
  x = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)
  w = jnp.ones((4, 6), jnp.float32)
  w_sharding = partitioner.logical_to_sharding(P("embed", "mlp"))
  assert w_sharding.spec == P("data", "model")
  out = partitioner.partition(
      lambda x, w: x @ w,
      in_shardings=(partitioner.data_sharding, w_sharding),
      out_shardings=partitioner.data_sharding,
  )(partitioner.host_local_to_global(x), jax.device_put(w, w_sharding))
  np.testing.assert_allclose(np.asarray(out), x @ np.ones((4, 6)))
  t5x_style = (
      partitioning.PjitPartitioner(  # t5x: num_partitions is then ignored
          num_partitions=1,
          ici_mesh_shape=(1, 2, 4),
          dcn_mesh_shape=(1, 1, 1),
          backend="cpu",
      )
  )
  assert dict(t5x_style.mesh.shape) == {"replica": 1, "data": 2, "model": 4}
  assert t5x_style.data_partition_spec == P(("replica", "data"))


# ------------------------------------------ docs/partitioning.md's layout table
DOCS_PAGE = (
    pathlib.Path(__file__).resolve().parents[1] / "docs" / "partitioning.md"
)
TABLE_PLATFORMS = {
    "v4-8": lambda: slice_devices("v4-8"),
    "v4-32": lambda: slice_devices("v4-32"),
    "v5e-32": lambda: slice_devices("v5e-32"),
    "8x8 GPUs": lambda: gpu_cluster(8),
}


def _recipe_settings(path) -> dict:
  """A recipe's mesh and batch settings, as gin binds them (unknown configurables skipped)."""
  import gin

  def query(name, default=None):
    try:
      return gin.query_parameter(name)
    except ValueError:
      return default

  gin.clear_config()
  try:
    gin.add_config_file_search_path(str(DOCS_PAGE.parents[1]))
    gin.parse_config_file(str(path), skip_unknown=True)
    pack = query("%PACK", True)
    return dict(
        num_partitions=query("partitioning.Partitioner.num_partitions"),
        shard_params_over_data=bool(
            query("partitioning.Partitioner.shard_params_over_data", False)
        ),
        rows=query("%PACKED_BATCH_SIZE") if pack else query("%BATCH_SIZE"),
        rows_name="PACKED_BATCH_SIZE" if pack else "BATCH_SIZE",
        microbatches=max(query("%NUM_MICROBATCHES", 1) or 1, 1),
    )
  finally:
    gin.clear_config()


def _host_rows_text(partitioner, rows) -> str:
  """Each host's rows in words: one block each (hosts sharing a replica share it)."""
  ranges = partitioning.host_data_rows(partitioner, rows)
  blocks = sorted(set(ranges.values()))
  if len(blocks) == 1:
    return f"rows 0-{rows - 1} (all {len(ranges)} hosts)"
  assert all(len(block) == 1 for block in blocks)
  size = rows // len(blocks)
  order = [
      "+".join(str(p) for p, r in ranges.items() if r == block)
      for block in blocks
  ]
  return f"{size} rows each, block by block: hosts {', '.join(order)}"


def recipe_layout_table() -> str:
  """The markdown table of docs/partitioning.md: each recipe's mesh and host rows per platform."""
  lines = [
      "| recipe | platform | mesh (data x model) | FSDP | rows per step | each host feeds |",
      "|---|---|---|---|---|---|",
  ]
  recipes = sorted(
      (DOCS_PAGE.parents[1] / "gin_configs" / "experiments").glob("*.gin")
  )
  for recipe in recipes:
    settings = _recipe_settings(recipe)
    for platform, make in TABLE_PLATFORMS.items():
      devices = make()
      if len(devices) % settings["num_partitions"]:
        lines.append(
            f"| {recipe.stem} | {platform} | - | - | - | refused: num_partitions="
            f"{settings['num_partitions']} does not divide {len(devices)} devices |"
        )
        continue
      partitioner = Partitioner(
          num_partitions=settings["num_partitions"],
          shard_params_over_data=settings["shard_params_over_data"],
          devices=devices,
      )
      need = partitioner.data_axis_size * settings["microbatches"]
      rows = settings["rows"]
      step = f"{settings['rows_name']}={rows}"
      if settings["microbatches"] > 1:
        step += f" ({settings['microbatches']} micro-batches)"
      if rows == "auto":  # tkx chooses a multiple of `need` (docs/packing.md)
        step = f"{settings['rows_name']}='auto' (a multiple of {need})"
        fed = f"at {need}: " + _host_rows_text(partitioner, need)
      elif rows % need:
        fed = (
            f"needs {settings['rows_name']} a multiple of {need}; at {need}: "
            + _host_rows_text(partitioner, need)
        )
      else:
        fed = _host_rows_text(partitioner, rows)
      lines.append(
          f"| {recipe.stem} | {platform} | {partitioner.data_axis_size} x "
          f"{partitioner.model_axis_size} | {'yes' if partitioner.shard_params_over_data else 'no'} "
          f"| {step} | {fed} |"
      )
  return "\n".join(lines) + "\n"


HYBRID_EXAMPLES = [
    # (what, Partitioner arguments, rows per step) on 8 nodes x 8 GPUs
    (
        "3B, FSDP in a node",
        dict(ici_mesh_shape=(1, 8, 1), dcn_mesh_shape=(8, 1, 1)),
        64,
    ),
    (
        "11B, model 8 in a node",
        dict(ici_mesh_shape=(1, 1, 8), dcn_mesh_shape=(8, 1, 1)),
        16,
    ),
    (
        "11B, model 4 x FSDP 2 in a node",
        dict(ici_mesh_shape=(1, 2, 4), dcn_mesh_shape=(8, 1, 1)),
        16,
    ),
]


def hybrid_layout_table() -> str:
  """docs/partitioning.md's hybrid examples on 8x8 GPUs, with FSDP ("embed" -> "data")."""
  lines = [
      "| example | ici_mesh_shape | dcn_mesh_shape | mesh (replica x data x model) | rows per step | each host feeds |",
      "|---|---|---|---|---|---|",
  ]
  for what, kwargs, rows in HYBRID_EXAMPLES:
    partitioner = Partitioner(
        shard_params_over_data=True, devices=gpu_cluster(8), **kwargs
    )
    shape = " x ".join(str(v) for v in partitioner.mesh.devices.shape)
    lines.append(
        f"| {what} | {kwargs['ici_mesh_shape']} | {kwargs['dcn_mesh_shape']} | {shape} "
        f"| {rows} | {_host_rows_text(partitioner, rows)} |"
    )
  return "\n".join(lines) + "\n"


def test_docs_layout_table_is_what_the_code_computes():
  page = DOCS_PAGE.read_text()
  table = recipe_layout_table() + "\n" + hybrid_layout_table()
  assert all(part in page for part in table.split("\n\n")), (
      "docs/partitioning.md's recipe table is out of date; "
      "`python tests/test_partitioning_mesh.py` prints the current one:\n"
      + table
  )


if __name__ == "__main__":
  print(recipe_layout_table() + "\n" + hybrid_layout_table())
