"""Training adapters (LoRA, prompt tuning) over a frozen base: only the adapters train and are
saved, the checkpoint names its base, a resumed adapter run is bit-exact, readers load base +
adapters, and a prompt-tuned model decodes."""

import os
import shutil

import flax
import gin
import jax
import numpy as np
import pytest

from tkx import cli, errors, train_configs
from tkx.checkpoints import directory, orbax_io
from tkx.models import adapters, network
from tkx.models import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    vocab_size=1024,
    emb_dim=32,
    num_heads=2,
    head_dim=16,
    mlp_dim=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
    mlp_activations=("gelu", "linear"),
    logits_via_embedding=False,
    dropout_rate=0.0,
)
SHAPE = [f"--gin.network.T5Config.{k}={v!r}" for k, v in TINY.items()][:7]
RUN = [
    *SHAPE,
    '--gin.TASK_FEATURE_LENGTHS={"inputs": 64, "targets": 8}',
    "--gin.BATCH_SIZE=8",
    "--gin.TRAIN_STEPS=4",
    "--gin.SAVE_EVERY=2",
    "--gin.EVAL_EVERY=None",
    "--gin.partitioning.Partitioner.num_partitions=1",
]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  """A plain (dense) tiny checkpoint of random weights: the frozen base."""
  config = config_lib.T5Config(**TINY)
  tokens = np.ones((1, 4), np.int32)
  params = flax.linen.meta.unbox(
      jax.jit(
          lambda r: network.Transformer(config).init(
              r, tokens, tokens, tokens, enable_dropout=False
          )
      )(jax.random.PRNGKey(1))["params"]
  )
  return directory.write_checkpoint(
      config, params, str(tmp_path_factory.mktemp("base"))
  )


def _train(gin_file, model_dir, base, *extra, status=0):
  gin.clear_config()
  try:
    argv = [
        "train",
        f"--gin_file={gin_file}",
        *RUN,
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.INITIAL_CHECKPOINT_PATH={repr(str(base)) if base else None}",
        *extra,
    ]
    assert cli.main(argv) == status
  finally:
    gin.clear_config()


def _state(step_dir):
  return orbax_io.load_params(step_dir), orbax_io._tree_metadata(  # pylint: disable=protected-access
      orbax_io._state_dir(step_dir)  # pylint: disable=protected-access
  )


def _flat(tree):
  return flax.traverse_util.flatten_dict(dict(tree), sep="/")


def test_lora_run_trains_and_saves_only_adapters_names_its_base_and_resumes_exactly(
    tmp_path, base_dir
):
  lora_gin = "gin_configs/experiments/embedded_tiny_lora.gin"
  reference = tmp_path / "reference"
  _train(lora_gin, reference, base_dir)
  saved, metadata = _state(str(reference / "checkpoint_4"))
  # Only adapters in the checkpoint: params and optimizer state.
  assert saved and all(
      k.split("/")[-1] in ("lora_a", "lora_b") for k in _flat(saved)
  )
  opt_leaves = [
      "/".join(str(getattr(p, "key", p)) for p in path)
      for path, _ in jax.tree_util.tree_leaves_with_path(metadata["opt_state"])
  ]
  opt_leaves = [leaf for leaf in opt_leaves if not leaf.endswith("count")]
  assert opt_leaves and all("lora_" in leaf for leaf in opt_leaves), opt_leaves[
      :5
  ]
  assert any(
      np.abs(v).max() > 0
      for k, v in _flat(saved).items()
      if k.endswith("lora_b")
  )
  model_gin = (reference / "model.gin").read_text()
  assert f"adapters.base_checkpoint.path = {str(base_dir)!r}" in model_gin
  assert "lora.LoraConfig.rank = 8\nlora.LoraConfig.alpha = 16.0" in model_gin

  # A reader builds base + adapters from model.gin alone; the base is unchanged.
  gin.clear_config()
  loaded = directory.load(str(reference))
  trained, frozen = adapters.split(loaded.params)
  base_params = orbax_io.load_params(os.path.join(base_dir, "checkpoint_0"))
  for key, value in _flat(base_params).items():
    np.testing.assert_array_equal(np.asarray(_flat(frozen)[key]), value)
  for key, value in _flat(saved).items():
    np.testing.assert_array_equal(np.asarray(_flat(trained)[key]), value)

  # Killed after checkpoint 2, resumed: bit-identical adapters at step 4.
  resumed = tmp_path / "resumed"
  shutil.copytree(reference, resumed)
  shutil.rmtree(resumed / "checkpoint_4")
  _train(lora_gin, resumed, base_dir)
  again, _ = _state(str(resumed / "checkpoint_4"))
  for key, value in _flat(saved).items():
    np.testing.assert_array_equal(_flat(again)[key], value, err_msg=key)


def test_prompt_tuned_run_trains_the_prompt_alone_and_decodes(
    tmp_path, base_dir
):
  from tkx import infer

  model_dir = tmp_path / "prompt"
  _train(
      "gin_configs/experiments/embedded_tiny_prompt.gin",
      model_dir,
      base_dir,
      "--gin.PROMPT_LENGTH=4",
      "--gin.TRAIN_STEPS=2",
  )
  saved, _ = _state(str(model_dir / "checkpoint_2"))
  assert list(_flat(saved)) == ["encoder/prompt/prompt"]
  assert _flat(saved)["encoder/prompt/prompt"].shape == (4, 32)
  gin.clear_config()
  loaded = directory.load(str(model_dir))
  assert loaded.config.prompt_length == 4
  # Greedy decoding of a prompt-tuned model: the encoder mask grows by the prompt.
  predictor = infer.make_predictor(
      loaded.model, loaded.params, batch_size=8, max_input_length=16
  )
  answers = predictor.predict_ids([[5, 9, 3, 1], [7, 2, 1]], progress=False)
  assert len(answers) == 2


def test_adapters_mode_needs_adapters_and_a_base(tmp_path, base_dir, capsys):
  _train(
      "gin_configs/experiments/embedded_tiny.gin",
      tmp_path / "none",
      base_dir,
      "--gin.TRAINABLE='adapters'",
      status=2,
  )
  assert "TRAINABLE='adapters' but the model has no adapter parameters" in (
      capsys.readouterr().err
  )
  _train(
      "gin_configs/experiments/embedded_tiny_lora.gin",
      tmp_path / "nobase",
      None,
      status=2,
  )
  assert "set INITIAL_CHECKPOINT_PATH" in capsys.readouterr().err
  with pytest.raises(errors.ConfigError, match="TRAINABLE"):
    train_configs.Trainable.parse("lora")
