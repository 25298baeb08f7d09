"""Initial checkpoints are read shard-wise: each device's slice, cast as it is read.

`directory.load_initial_params` reads a t5x (msgpack + TensorStore) checkpoint by
the slices the local devices hold, and a tkx (orbax) one through orbax's restore
into the target shardings and dtypes. Peak memory per process is measured by
bench/shard_loading.py; here: which slices are read, and the result.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tkx.checkpoints import directory, orbax_io, t5x_format

PARAMS = {
    "encoder": {
        "layers_0": {
            "mlp": {
                "wi": {
                    "kernel": np.arange(64 * 8, dtype=np.float32).reshape(64, 8)
                }
            }
        }
    },
    "token_embedder": {
        "embedding": np.linspace(-1, 1, 16 * 8, dtype=np.float32).reshape(16, 8)
    },
}


def _target():
  devices = np.array(jax.devices()[:8]).reshape(8)
  mesh = jax.sharding.Mesh(devices, ("model",))
  spec = jax.sharding.PartitionSpec
  abstract = {
      "encoder": {
          "layers_0": {
              "mlp": {
                  "wi": {"kernel": jax.ShapeDtypeStruct((64, 8), jnp.bfloat16)}
              }
          }
      },
      "token_embedder": {
          "embedding": jax.ShapeDtypeStruct((16, 8), jnp.float32)
      },
  }
  shardings = {
      "encoder": {
          "layers_0": {
              "mlp": {
                  "wi": {
                      "kernel": jax.sharding.NamedSharding(
                          mesh, spec("model", None)
                      )
                  }
              }
          }
      },
      "token_embedder": {
          "embedding": jax.sharding.NamedSharding(mesh, spec(None, None))
      },
  }
  return abstract, shardings


def _check(loaded, abstract, shardings):
  kernel = loaded["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]
  assert kernel.dtype == jnp.bfloat16
  assert (
      kernel.sharding == shardings["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]
  )
  np.testing.assert_array_equal(
      np.asarray(kernel, np.float32),
      PARAMS["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]
      .astype(jnp.bfloat16)
      .astype(np.float32),
  )
  np.testing.assert_array_equal(
      np.asarray(loaded["token_embedder"]["embedding"]),
      PARAMS["token_embedder"]["embedding"],
  )


def test_t5x_checkpoint_is_read_by_device_slices(tmp_path, monkeypatch):
  if len(jax.devices()) < 8:
    pytest.skip("needs the 8 host CPU devices of tests/conftest.py")
  t5x_format.save_params(
      str(tmp_path / "t5x"),
      PARAMS,
      step=10,
      inline=("token_embedder/embedding",),
  )
  reads = []
  real_getitem = t5x_format._TensorStoreSlices.__getitem__  # pylint: disable=protected-access

  def spy(self, index):
    out = real_getitem(self, index)
    reads.append(out.shape)
    return out

  monkeypatch.setattr(t5x_format._TensorStoreSlices, "__getitem__", spy)  # pylint: disable=protected-access
  abstract, shardings = _target()
  loaded = directory.load_initial_params(
      str(tmp_path / "t5x"), abstract, shardings
  )
  _check(loaded, abstract, shardings)
  # The 64-row kernel sharded 8 ways: eight reads of 8 rows, never the whole array.
  assert reads == [(8, 8)] * 8


def test_tkx_checkpoint_is_restored_into_the_target_shardings(tmp_path):
  if len(jax.devices()) < 8:
    pytest.skip("needs the 8 host CPU devices of tests/conftest.py")
  orbax_io.save_params(str(tmp_path / "tkx"), PARAMS)
  abstract, shardings = _target()
  loaded = directory.load_initial_params(
      str(tmp_path / "tkx"), abstract, shardings
  )
  _check(loaded, abstract, shardings)
  # A name the model lacks is refused before any array is read.
  abstract["encoder"]["layers_0"]["mlp"]["wo"] = jax.ShapeDtypeStruct(
      (8, 64), jnp.float32
  )
  shardings["encoder"]["layers_0"]["mlp"]["wo"] = shardings["token_embedder"][
      "embedding"
  ]
  with pytest.raises(directory.CheckpointError, match="missing .*wo"):
    directory.load_initial_params(str(tmp_path / "tkx"), abstract, shardings)


def test_hf_safetensors_are_read_by_slice_as_the_import_reads_them(tmp_path):
  """An HF dir as INITIAL_CHECKPOINT_PATH: each device's slice of each safetensors tensor, cast as read."""
  if len(jax.devices()) < 8:
    pytest.skip("needs the 8 host CPU devices of tests/conftest.py")
  from tkx import gin_utils, partitioning
  from tkx.checkpoints import hf
  from tkx.models import models, network

  config = gin_utils.load_config_from_gin(
      ["gin_configs/models/t5_1_1/tiny.gin"], ()
  )
  model = models.EncoderDecoderModel(network.Transformer(config))
  shapes = models.init_input_shapes()
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(  # random values without compiling the init
      lambda a: rng.standard_normal(a.shape).astype(np.float32),
      model.params_shapes(shapes),
  )
  hf.export_hf(config, params, str(tmp_path / "hf"))
  # Each param sharded 8 ways over its 'embed' axis: the transposed HF kernels are
  # then read by column ranges, the embedding by rows.
  partitioner = partitioning.Partitioner(
      num_partitions=1, shard_params_over_data=True
  )
  shardings = partitioner.logical_to_sharding(model.params_logical_axes(shapes))
  abstract = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, jnp.bfloat16), params
  )
  files = []
  real_init = hf.SafetensorsFile.__init__

  def spy(self, path):
    real_init(self, path)
    files.append(self)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(hf.SafetensorsFile, "__init__", spy)
    loaded = directory.load_initial_params(
        str(tmp_path / "hf"), abstract, shardings
    )
  _, imported, _ = hf.import_hf(str(tmp_path / "hf"))
  for path, leaf in jax.tree_util.tree_flatten_with_path(loaded)[0]:
    want = imported
    for key in path:
      want = want[key.key]
    assert leaf.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(leaf, np.float32),
        want.astype(jnp.bfloat16).astype(np.float32),
    )
  # Every byte read once in all (each device's slice, a replicated array once):
  # no device reads a whole tensor to keep its slice.
  (file,) = files
  assert file.bytes_read == sum(
      x.nbytes for x in jax.tree_util.tree_leaves(params)
  )
