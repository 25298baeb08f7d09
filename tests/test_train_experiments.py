"""The experiment gin files parse and bind the published Tk-Instruct recipe."""

import gin
import pytest

from tkx.commands import train as train_command


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _parse(name, *bindings):
  train_command.parse_gin(
      [f"gin_configs/experiments/{name}.gin"],
      [
          "NI_DIR = '/data/ni'",
          "INITIAL_CHECKPOINT_PATH = '/ckpt/init'",
          "MODEL_DIR = '/tmp/unused'",
          *bindings,
      ],
  )


def _macro(name):
  return gin.query_parameter(f"{name}/macro.value")


@pytest.mark.parametrize(
    "name,emb_dim,vocab_size,partitions",
    [
        ("tk_instruct_3b_def_pos", 2048, 32128, 1),
        ("tk_instruct_11b_def_pos", 4096, 32128, 8),
        ("mtk_instruct_3b_def_pos", 2048, 250112, 1),
    ],
)
def test_tk_instruct_recipes(name, emb_dim, vocab_size, partitions):
  from tkx import optimizers
  from tkx.models import config as config_lib

  _parse(name)
  config = config_lib.T5Config()
  assert (
      config.emb_dim,
      config.vocab_size,
      config.dtype,
      config.param_dtype,
  ) == (emb_dim, vocab_size, "bfloat16", "float32")
  # What XLA's memory analysis recommends (docs/memory.md): scanned layers everywhere.
  assert config.scan_layers is True
  assert config.remat_policy == ("full" if partitions == 8 else "none")
  assert config.dropout_rate == 0.1 and config.mlp_activations == (
      "gelu",
      "linear",
  )
  assert _macro("TASK_FEATURE_LENGTHS") == {"inputs": 1024, "targets": 128}
  assert _macro("BATCH_SIZE") == 16 and _macro("Z_LOSS") == 0.0
  assert gin.query_parameter("register_ni.max_num_instances_per_task") == 100
  schedule = optimizers.create_learning_rate_scheduler()
  assert float(schedule(0)) == float(schedule(5000)) == pytest.approx(5e-5)
  assert gin.query_parameter("trainer.train.optimizer_fn").selector.endswith(
      "adamw"
  )
  assert gin.query_parameter("trainer.train.grad_clip_norm") == 1.0
  assert (
      gin.query_parameter("partitioning.Partitioner.num_partitions")
      == partitions
  )
  # Packed by default, the row layout chosen from the run's examples ('auto':
  # ~16 examples per step, rows divisible by the data-parallel devices), exactly 2 epochs.
  assert _macro("PACK") is True
  assert {
      _macro(name)
      for name in (
          "PACKED_BATCH_SIZE",
          "PACKED_ENCODER_BLOCKS",
          "PACKED_TARGETS_LENGTH",
      )
  } == {"auto"}
  assert (
      _macro("TRAIN_STEPS") is None
      and gin.query_parameter("trainer.train.train_epochs") == 2
  )
  assert _macro("MIXTURE_OR_TASK_NAME") == (
      "ni_xlingual_train_def_pos2"
      if name.startswith("mtk")
      else "ni_default_train_def_pos2"
  )


def test_embedded_tiny_and_required_macros():
  _parse("embedded_tiny")
  assert _macro("MIXTURE_OR_TASK_NAME") == "ni_default_train_def_pos2"
  from tkx.models import config as config_lib

  assert config_lib.T5Config().emb_dim == 128
  gin.clear_config()
  train_command.parse_gin(
      ["gin_configs/runs/finetune.gin", "gin_configs/models/t5_1_1/tiny.gin"],
      [],
  )
  from tkx import trainer

  with pytest.raises(Exception, match="set MODEL_DIR, MIXTURE_OR_TASK_NAME"):
    trainer.train()


def test_train_epochs_counts_mixture_instances():
  from tkx.data import pipeline
  from tkx.data import vocab

  pipeline.register_ni_for(
      "ni_default_train_def_pos2", None, vocab.get_vocabulary(), 256
  )
  import seqio

  count = sum(
      sum(
          1
          for _ in task.get_dataset(
              None, split="train", shuffle=False, num_epochs=1
          )
      )
      for task in seqio.get_mixture_or_task("ni_default_train_def_pos2").tasks
  )
  assert count > 500
  assert (
      pipeline.steps_for_epochs("ni_default_train_def_pos2", 2, 16)
      == 2 * count // 16
  )
