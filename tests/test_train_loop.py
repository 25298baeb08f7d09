"""`tkx train` end to end on the embedded sample with a very small T5 (in-process, fast)."""

import glob
import json
import os

import gin
import jax
import jax.numpy as jnp
import toy_train_action  # noqa: F401  (registers @toy_train_action.LossLog)

from tkx import cli, gin_utils, train_actions
from tkx.checkpoints import orbax_io

# A smaller-than-tiny model and short sequences keep each run to a few seconds of compute.
SMALL_MODEL = [
    "--gin.network.T5Config.emb_dim=64",
    "--gin.network.T5Config.num_heads=2",
    "--gin.network.T5Config.head_dim=32",
    "--gin.network.T5Config.mlp_dim=128",
    "--gin.network.T5Config.num_encoder_layers=1",
    "--gin.network.T5Config.num_decoder_layers=1",
    '--gin.TASK_FEATURE_LENGTHS={"inputs": 128, "targets": 16}',
    "--gin.BATCH_SIZE=8",
]


@gin.configurable(module="test_train_loop")
class PoisonParamsAfter(train_actions.BaseAction):
  """Fault injection (this file's action): NaN parameters after step `step`, so step+1 is non-finite."""

  def __init__(self, step: int = gin.REQUIRED):
    self.step = step

  def due(self, step):
    return train_actions.Due.RUN if step == self.step else train_actions.Due.NO

  def run(self, trainer, step):
    trainer.state = trainer.state.replace(
        params=jax.tree_util.tree_map(
            lambda p: p * jnp.nan, trainer.state.params
        )
    )
    return False


def _run(model_dir, *extra):
  gin.clear_config()
  try:
    return cli.main(
        [
            "train",
            "--gin_file=gin_configs/experiments/embedded_tiny.gin",
            f"--gin.MODEL_DIR='{model_dir}'",
            "--gin.EVAL_EVERY=None",
            *SMALL_MODEL,
            *extra,
        ]
    )
  finally:
    gin.clear_config()


def _scalars(event_dir, tag):
  import tensorflow as tf

  values = {}
  for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == tag:
          values[event.step] = float(tf.make_ndarray(v.tensor))
  return values


def _record_dispatch_and_fetch(monkeypatch):
  """Counts train-step dispatches; notes, for each step whose metrics are fetched, how many were dispatched then."""
  from tkx import partitioning, trainer

  dispatched, fetched = [], []
  partition = partitioning.Partitioner.partition

  def recording_partition(self, fn, *args, **kwargs):
    compiled = partition(self, fn, *args, **kwargs)
    if getattr(fn, "__name__", "") != "train_step":
      return compiled

    def dispatch(*call_args):
      out = compiled(*call_args)  # returns once the step is enqueued
      dispatched.append(True)
      return out

    return dispatch

  fetch = trainer.PendingMetrics._fetch

  def recording_fetch(held):
    if held is not None:
      fetched.append((held[0], len(dispatched)))
    return fetch(held)

  monkeypatch.setattr(
      partitioning.Partitioner, "partition", recording_partition
  )
  monkeypatch.setattr(
      trainer.PendingMetrics, "_fetch", staticmethod(recording_fetch)
  )
  return fetched


def test_train_learns_saves_and_logs(tmp_path, caplog, monkeypatch):
  model_dir = tmp_path / "run"
  caplog.set_level("INFO", logger="tkx.trainer")
  fetched = _record_dispatch_and_fetch(monkeypatch)
  rc = _run(
      model_dir,
      "--gin.TRAIN_STEPS=40",
      "--gin.SAVE_EVERY=20",
      "--gin.KEEP_CHECKPOINTS=1",
      "--gin.train_configs.LoggingConfig.log_every=5",
      "--gin.LEARNING_RATE=0.02",
      # A toy action is one class (tests/toy_train_action.py) and this one line.
      "--gin.trainer.train.actions=[@toy_train_action.LossLog()]",
  )
  assert rc == 0
  # No per-step host wait: step n's metrics are read with step n+1 already dispatched,
  # except at the saved steps (20, 40), which are read before they are saved.
  assert [step for step, _ in fetched] == list(range(1, 41))
  assert all(
      in_flight == (step if step in (20, 40) else step + 1)
      for step, in_flight in fetched
  ), fetched
  losses = _scalars(model_dir / "train", "loss")
  assert sorted(losses) == list(range(5, 41, 5))
  assert losses[40] < losses[5] - 1.0, losses  # learning, not noise
  # The toy action saw every step's loss, in order (the logged steps' equal TensorBoard's).
  toy_log = [
      json.loads(line)
      for line in (model_dir / "loss_log.jsonl").read_text().splitlines()
  ]
  assert [row["step"] for row in toy_log] == list(range(1, 41))
  for row in toy_log:
    if row["step"] in losses:
      assert abs(row["loss"] - losses[row["step"]]) < 1e-6, row
  for tag in (
      "learning_rate",
      "grad_norm",
      "timing/tokens_per_second",
      "timing/input_wait_seconds",
  ):
    assert _scalars(model_dir / "train", tag), tag
  # keep=1: only the final checkpoint remains; config.gin and model.gin are written, as t5x does.
  assert (model_dir / "checkpoint_40" / "state").is_dir()
  assert not (model_dir / "checkpoint_20").exists()
  config = (model_dir / "config.gin").read_text()
  assert "train.model_dir" in config and "T5Config.emb_dim" in config
  assert (
      "DatasetConfig.mixture_or_task_name"
      in (model_dir / "operative_config.gin").read_text()
  )
  model_gin = (model_dir / "model.gin").read_text()
  assert "emb_dim = 64" in model_gin and "train." not in model_gin

  assert (
      gin_utils.load_config_from_gin([str(model_dir / "model.gin")]).emb_dim
      == 64
  )
  params = orbax_io.load_params(str(model_dir))
  assert params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].shape == (
      64,
      128,
  )
  lines = [
      r.getMessage()
      for r in caplog.records
      if r.getMessage().startswith("step ")
  ]
  assert any(
      "tokens/s" in line
      and "examples/s" in line
      and "ETA" in line
      and "lr " in line
      for line in lines
  ), lines
  # Running again with the same TRAIN_STEPS resumes at 40 and has nothing to do.
  assert (
      _run(model_dir, "--gin.TRAIN_STEPS=40", "--gin.KEEP_CHECKPOINTS=1") == 0
  )
  assert any("nothing to do" in r.getMessage() for r in caplog.records)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, caplog):
  model_dir = tmp_path / "nan"
  rc = _run(
      model_dir,
      "--gin.TRAIN_STEPS=10",
      "--gin.SAVE_EVERY=2",
      # NaN parameters after step 4 (saved): step 5 is non-finite.
      "--gin.trainer.train.actions=[@test_train_loop.PoisonParamsAfter()]",
      "--gin.test_train_loop.PoisonParamsAfter.step=4",
  )
  assert rc == 3
  message = " ".join(
      r.getMessage() for r in caplog.records if r.levelname == "ERROR"
  )
  assert "step 5" in message and "checkpoint_4" in message
  assert sorted(p.name for p in model_dir.glob("checkpoint_*")) == [
      "checkpoint_2",
      "checkpoint_4",
  ]
  # (An infinite learning rate, whose loss stays finite while the update is not, is covered
  # at the step level in test_train_step.py.)


def test_sigterm_saves_the_step_reached_and_exits_0_unpacked(
    tmp_path, caplog, monkeypatch
):
  """Unpacked input (this file's runs), one process: a SIGTERM arriving during step 4 saves step 4."""
  import signal

  from tkx import trainer

  fetch = trainer.PendingMetrics._fetch

  def fetch_then_preempt(held):
    if held is not None and held[0] == 3:  # read while step 4 runs
      os.kill(os.getpid(), signal.SIGTERM)
    return fetch(held)

  monkeypatch.setattr(
      trainer.PendingMetrics, "_fetch", staticmethod(fetch_then_preempt)
  )
  previous = signal.getsignal(signal.SIGTERM)
  model_dir = tmp_path / "preempted"
  try:
    assert _run(model_dir, "--gin.TRAIN_STEPS=10", "--gin.SAVE_EVERY=100") == 0
  finally:
    signal.signal(
        signal.SIGTERM, previous
    )  # the watch keeps it after a preemption
  assert [p.name for p in model_dir.glob("checkpoint_*")] == ["checkpoint_4"]
  said = [
      r.getMessage() for r in caplog.records if "Preempted" in r.getMessage()
  ]
  assert said == [
      f"Preempted: saved {model_dir}/checkpoint_4 at step 4; exiting with status 0 "
      "(tkx train with the same MODEL_DIR resumes from it)"
  ]
  # The input position after step 4: 4 batches of 8 examples.
  data_state = json.loads(
      (model_dir / "checkpoint_4" / "data_state" / "metadata").read_text()
  )
  assert data_state["input"] == {"next_index": 32}, data_state
