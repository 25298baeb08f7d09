"""INITIAL_CHECKPOINT_PATH: start from an imported tkx checkpoint or a t5x checkpoint."""

import gin
import jax
import numpy as np
import pytest

from tkx import cli, gin_utils
from tkx.checkpoints import directory, orbax_io, t5x_format

SMALL = [
    "network.T5Config.emb_dim = 64",
    "network.T5Config.num_heads = 2",
    "network.T5Config.head_dim = 32",
    "network.T5Config.mlp_dim = 128",
    "network.T5Config.num_encoder_layers = 1",
    "network.T5Config.num_decoder_layers = 1",
]
ARGS = ["--gin." + b.replace(" = ", "=") for b in SMALL] + [
    '--gin.TASK_FEATURE_LENGTHS={"inputs": 64, "targets": 16}',
    "--gin.BATCH_SIZE=8",
    "--gin.EVAL_EVERY=None",
    "--gin.TRAIN_STEPS=1",
    "--gin.LEARNING_RATE=0.0",
    "--gin.optimizers.create_learning_rate_scheduler.min_learning_rate=0.0",
]


def _params(seed):
  gin.clear_config()
  try:
    model = gin_utils.get_model_from_gin(
        ["gin_configs/models/t5_1_1/tiny.gin"], SMALL
    )
    shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 4)}
    return model, jax.device_get(
        model.get_initial_variables(jax.random.PRNGKey(seed), shapes)["params"]
    )
  finally:
    gin.clear_config()


def _train(model_dir, init_path, extra=()):
  gin.clear_config()
  try:
    return cli.run(
        [
            "train",
            "--gin_file=gin_configs/experiments/embedded_tiny.gin",
            f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.INITIAL_CHECKPOINT_PATH='{init_path}'",
            *ARGS,
            *extra,
        ]
    )
  finally:
    gin.clear_config()


def _assert_same(a, b):
  flat_b = {
      jax.tree_util.keystr(p): v
      for p, v in jax.tree_util.tree_leaves_with_path(b)
  }
  for path, value in jax.tree_util.tree_leaves_with_path(a):
    np.testing.assert_array_equal(
        np.asarray(value), np.asarray(flat_b[jax.tree_util.keystr(path)])
    )


@pytest.mark.parametrize("kind", ["tkx", "t5x"])
def test_initial_checkpoint_is_loaded(tmp_path, kind):
  model, params = _params(seed=123)
  init = tmp_path / "init"
  if kind == "tkx":  # what `tkx import-checkpoint` writes
    directory.write_checkpoint(
        model.config, params, str(init), comment="test init"
    )
  else:
    t5x_format.save_params(str(init), params, step=5000)
  assert _train(tmp_path / "run", init) == 0
  # Learning rate 0: after one step the parameters are still the initial ones.
  _assert_same(orbax_io.load_params(str(tmp_path / "run")), params)
  assert directory.read_config(str(tmp_path / "run")) == model.config


@pytest.mark.slow  # a short training run: ~60 s on a loaded 2-core CPU
def test_model_gin_describes_the_trained_model_not_the_initial_checkpoint(
    tmp_path,
):
  model, params = _params(seed=1)
  init = tmp_path / "init"
  directory.write_checkpoint(model.config, params, str(init))
  assert model.config.dtype == "float32" and model.config.dropout_rate == 0.0
  run = tmp_path / "run"
  extra = ["--gin.network.T5Config.dtype='bfloat16'", "--gin.DROPOUT_RATE=0.25"]
  assert _train(run, init, extra) == 0
  trained = directory.read_config(str(run))
  assert trained == model.config.replace(dtype="bfloat16", dropout_rate=0.25)


def test_mismatched_initial_checkpoint_names_the_parameter(tmp_path):
  _, params = _params(seed=0)
  params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"] = np.zeros(
      (7, 64), np.float32
  )
  orbax_io.save_params(str(tmp_path / "bad"), params)
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct((128, 64), np.float32)
      if x.shape == (7, 64)
      else jax.ShapeDtypeStruct(x.shape, x.dtype),
      params,
  )
  with pytest.raises(
      ValueError,
      match=r"INITIAL_CHECKPOINT_PATH=.*bad.*'wo'.*\(7, 64\).*\(128, 64\)",
  ):
    directory._check_and_cast(
        orbax_io.load_params(str(tmp_path / "bad")),
        abstract,
        str(tmp_path / "bad"),
    )
  del params["decoder"]
  with pytest.raises(ValueError, match="missing .*decoder"):
    directory._check_and_cast(params, abstract, "somewhere")
