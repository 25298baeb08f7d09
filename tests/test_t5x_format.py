"""t5x checkpoint reader against checkpoints written in t5x's layout (msgpack + TensorStore zarr)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

from tkx.checkpoints import t5x_format
from tkx.models import config as config_lib
from tkx.models import network


def _tiny_config():
  return config_lib.T5Config(
      vocab_size=40,
      emb_dim=16,
      num_heads=2,
      head_dim=8,
      mlp_dim=32,
      num_encoder_layers=1,
      num_decoder_layers=2,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=0.0,
  )


@pytest.fixture(scope="module")
def tiny_params():
  config = _tiny_config()
  module = network.Transformer(config)
  tokens = jnp.ones((1, 4), jnp.int32)
  # jitted: the same initial values, without compiling the forward pass op by op
  params = jax.jit(
      lambda rng: module.init(rng, tokens, tokens, tokens, enable_dropout=False)
  )(jax.random.PRNGKey(0))["params"]
  params = jax.tree_util.tree_map(
      np.asarray,
      jax.tree_util.tree_map(
          lambda x: getattr(x, "value", x),
          params,
          is_leaf=lambda x: hasattr(x, "value"),
      ),
  )
  return config, module, params


def _flat(tree):
  return traverse_util.flatten_dict(dict(tree), sep="/")


def test_round_trip_exact_with_t5x_layout(tmp_path, tiny_params):
  _, _, params = tiny_params
  adafactor_state = {
      "encoder": {"encoder_norm": {"scale": {"v": np.ones((16,), np.float32)}}}
  }
  ckpt_dir = t5x_format.save_params(
      str(tmp_path),
      params,
      step=1234,
      inline=("encoder/encoder_norm/scale",),
      param_states=adafactor_state,
      target_chunk_bytes=256,
  )
  assert os.path.basename(ckpt_dir) == "checkpoint_1234"
  # The layout t5x writes: a msgpack 'checkpoint' file and one zarr dir per array, dotted names.
  assert os.path.isfile(os.path.join(ckpt_dir, "checkpoint"))
  assert os.path.isfile(
      os.path.join(
          ckpt_dir, "target.encoder.layers_0.attention.query.kernel", ".zarray"
      )
  )
  raw = serialization.msgpack_restore(
      open(os.path.join(ckpt_dir, "checkpoint"), "rb").read()
  )
  assert raw["version"] == 3 and int(raw["optimizer"]["state"]["step"]) == 1234
  query_spec = raw["optimizer"]["target"]["encoder"]["layers_0"]["attention"][
      "query"
  ]["kernel"]
  assert query_spec["driver"] == "zarr"
  assert query_spec["kvstore"] == {
      "driver": "file",
      "path": "target.encoder.layers_0.attention.query.kernel",
  }
  assert isinstance(
      raw["optimizer"]["target"]["encoder"]["encoder_norm"]["scale"], np.ndarray
  )  # inline
  # Small chunks: several chunk files per array.
  emb_dir = os.path.join(ckpt_dir, "target.token_embedder.embedding")
  assert len([n for n in os.listdir(emb_dir) if not n.startswith(".")]) > 1

  for path in (str(tmp_path), ckpt_dir, os.path.join(ckpt_dir, "checkpoint")):
    loaded = t5x_format.load_params(path)
    want, got = _flat(params), _flat(loaded)
    assert sorted(want) == sorted(got)
    for name in want:
      assert got[name].dtype == want[name].dtype
      np.testing.assert_array_equal(got[name], want[name])
  state = t5x_format.read_state_dict(str(tmp_path))
  np.testing.assert_array_equal(
      state["optimizer"]["state"]["param_states"]["encoder"]["encoder_norm"][
          "scale"
      ]["v"],
      np.ones(16),
  )


def test_loaded_params_drive_the_model(tmp_path, tiny_params):
  _, module, params = tiny_params
  t5x_format.save_params(str(tmp_path), params, step=7)
  loaded = t5x_format.load_params(str(tmp_path))
  tokens = jnp.array([[5, 6, 7, 1]], jnp.int32)
  forward = jax.jit(  # one program for both parameter sets
      lambda p: module.apply(
          {"params": p}, tokens, tokens, tokens, enable_dropout=False
      )
  )
  want = forward(params)
  got = forward(loaded)
  np.testing.assert_array_equal(np.asarray(want), np.asarray(got))


def test_newest_step_legacy_specs_and_bfloat16(tmp_path, tiny_params):
  _, _, params = tiny_params
  t5x_format.save_params(
      str(tmp_path), jax.tree_util.tree_map(lambda x: x * 0, params), step=10
  )
  bf16 = jax.tree_util.tree_map(
      lambda x: np.asarray(x).astype(jnp.bfloat16), params
  )
  t5x_format.save_params(str(tmp_path), bf16, step=20, legacy_spec_paths=True)
  raw = serialization.msgpack_restore(
      open(tmp_path / "checkpoint_20" / "checkpoint", "rb").read()
  )
  spec = raw["optimizer"]["target"]["token_embedder"]["embedding"]
  assert (
      spec["path"] == "target.token_embedder.embedding"
      and "path" not in spec["kvstore"]
  )
  loaded = t5x_format.load_params(str(tmp_path))  # newest: step 20
  emb = loaded["token_embedder"]["embedding"]
  assert emb.dtype == jnp.bfloat16
  np.testing.assert_array_equal(emb, bf16["token_embedder"]["embedding"])
  as_f32 = t5x_format.load_params(str(tmp_path), dtype=np.float32)
  assert as_f32["token_embedder"]["embedding"].dtype == np.float32


def test_errors_name_the_file_and_field(tmp_path, tiny_params):
  with pytest.raises(FileNotFoundError, match="no t5x checkpoint"):
    t5x_format.load_params(str(tmp_path))
  bad = tmp_path / "checkpoint_1"
  bad.mkdir()
  (bad / "checkpoint").write_bytes(b"\x00not msgpack")
  with pytest.raises(
      t5x_format.T5xCheckpointError, match="checkpoint_1/checkpoint"
  ):
    t5x_format.load_params(str(bad))
  (bad / "checkpoint").write_bytes(
      serialization.msgpack_serialize(
          {"version": 3, "optimizer": {"state": {}}}
      )
  )
  with pytest.raises(t5x_format.T5xCheckpointError, match="optimizer/target"):
    t5x_format.load_params(str(bad))
  # A TensorStore array that is gone.
  _, _, params = tiny_params
  ckpt = t5x_format.save_params(str(tmp_path / "x"), params, step=3)
  import shutil

  shutil.rmtree(os.path.join(ckpt, "target.token_embedder.embedding"))
  with pytest.raises(
      t5x_format.T5xCheckpointError, match="token_embedder/embedding"
  ):
    t5x_format.load_params(ckpt)


def test_orbax_era_t5x_layouts(tmp_path, tiny_params):
  """t5x's orbax CheckpointManager: train_state.state_dict() as PyTree item `state` (or flat in the step dir)."""
  import orbax.checkpoint as ocp

  _, _, params = tiny_params
  state_dict = {
      "target": params,
      "state": {"step": np.int32(42), "param_states": {}},
  }
  ocp.PyTreeCheckpointer().save(
      str(tmp_path / "sub" / "checkpoint_42" / "state"), state_dict
  )
  ocp.PyTreeCheckpointer().save(
      str(tmp_path / "flat" / "checkpoint_42"), state_dict
  )
  for path in (
      tmp_path / "sub",
      tmp_path / "sub" / "checkpoint_42",
      tmp_path / "flat",
      tmp_path / "flat" / "checkpoint_42",
  ):
    loaded = t5x_format.load_params(str(path))
    want, got = _flat(params), _flat(loaded)
    assert sorted(want) == sorted(got), path
    for name in want:
      np.testing.assert_array_equal(got[name], want[name])


def test_placeholder_leaves(tmp_path, tiny_params):
  _, _, params = tiny_params
  ckpt = t5x_format.save_params(
      str(tmp_path), params, step=1, placeholders=True
  )
  raw = serialization.msgpack_restore(
      open(os.path.join(ckpt, "checkpoint"), "rb").read()
  )
  assert (
      raw["optimizer"]["target"]["token_embedder"]["embedding"]
      == "PLACEHOLDER://target.token_embedder.embedding"
  )
  loaded = t5x_format.load_params(ckpt)
  np.testing.assert_array_equal(
      loaded["token_embedder"]["embedding"],
      params["token_embedder"]["embedding"],
  )
