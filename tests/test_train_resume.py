"""A run killed with SIGKILL after checkpoint k and resumed ends with exactly the uninterrupted parameters."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import jax
import pytest

from tkx.checkpoints import orbax_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_STEPS, SAVE_EVERY, KILL_AFTER_CHECKPOINT = 12, 4, 8

ARGS = [
    "--gin_file=gin_configs/experiments/embedded_tiny.gin",
    "--gin.network.T5Config.emb_dim=64",
    "--gin.network.T5Config.num_heads=2",
    "--gin.network.T5Config.head_dim=32",
    "--gin.network.T5Config.mlp_dim=128",
    "--gin.network.T5Config.num_encoder_layers=1",
    "--gin.network.T5Config.num_decoder_layers=1",
    '--gin.TASK_FEATURE_LENGTHS={"inputs": 128, "targets": 16}',
    "--gin.BATCH_SIZE=8",
    # Dropout on: the resumed run must also restore the RNG stream.
    "--gin.DROPOUT_RATE=0.1",
    "--gin.NUM_MICROBATCHES=2",
    f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
    f"--gin.SAVE_EVERY={SAVE_EVERY}",
    "--gin.EVAL_EVERY=None",
    "--gin.trainer.train.log_every=1",
]


def _start(model_dir, log_path, *extra):
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
      TF_CPP_MIN_LOG_LEVEL="3",
      PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  log = open(log_path, "w")
  return subprocess.Popen(
      [
          sys.executable,
          "-m",
          "tkx.cli",
          "train",
          *ARGS,
          f"--gin.MODEL_DIR='{model_dir}'",
          "--gin.partitioning.Partitioner.num_partitions=1",
          *extra,
      ],
      cwd=REPO,
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
  )


def _wait(proc, log_path, timeout=240):
  try:
    rc = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise AssertionError(
        f"training subprocess timed out; log:\n{open(log_path).read()[-3000:]}"
    )
  assert (
      rc == 0
  ), f"training failed ({rc}); log:\n{open(log_path).read()[-3000:]}"


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume_is_exact(tmp_path):
  reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
  reference = _start(reference_dir, tmp_path / "reference.log")
  victim = _start(killed_dir, tmp_path / "killed.log")
  # Kill the victim (SIGKILL: no cleanup, no final save) as soon as checkpoint 8 is complete.
  deadline = time.time() + 240
  while not (killed_dir / f"checkpoint_{KILL_AFTER_CHECKPOINT}").exists():
    assert victim.poll() is None, open(tmp_path / "killed.log").read()[-3000:]
    assert time.time() < deadline, "checkpoint never appeared"
    time.sleep(0.02)
  os.kill(victim.pid, signal.SIGKILL)
  assert victim.wait(timeout=60) == -signal.SIGKILL
  assert not (
      killed_dir / f"checkpoint_{TRAIN_STEPS}"
  ).exists(), "the victim finished before the kill"

  resumed = _start(killed_dir, tmp_path / "resumed.log")
  _wait(resumed, tmp_path / "resumed.log")
  _wait(reference, tmp_path / "reference.log")
  resumed_log = open(tmp_path / "resumed.log").read()
  assert (
      f"Resumed from {killed_dir}/checkpoint_{KILL_AFTER_CHECKPOINT}"
      in resumed_log
  )
  assert f"steps {KILL_AFTER_CHECKPOINT + 1}..{TRAIN_STEPS}" in resumed_log

  expected = orbax_io.load_params(
      str(reference_dir / f"checkpoint_{TRAIN_STEPS}")
  )
  got = orbax_io.load_params(str(killed_dir / f"checkpoint_{TRAIN_STEPS}"))
  flat_expected = jax.tree_util.tree_leaves_with_path(expected)
  flat_got = dict(
      (jax.tree_util.keystr(p), v)
      for p, v in jax.tree_util.tree_leaves_with_path(got)
  )
  assert len(flat_expected) == len(flat_got)
  for path, value in flat_expected:
    np.testing.assert_array_equal(
        flat_got[jax.tree_util.keystr(path)],
        value,
        err_msg=jax.tree_util.keystr(path),
    )
  # The parameters did move away from the checkpoint we resumed from (the comparison means something).
  at_kill = orbax_io.load_params(
      str(killed_dir / f"checkpoint_{KILL_AFTER_CHECKPOINT}")
  )
  assert not np.array_equal(
      jax.tree_util.tree_leaves(at_kill)[0], jax.tree_util.tree_leaves(got)[0]
  )


PACKED_AUTO = [  # finetune.gin's 'auto' PACKED_* settings
    "--gin.PACK=True",
    "--gin.PACKING_WINDOW=64",
    "--gin.NUM_MICROBATCHES=1",
    "--gin.TRAIN_STEPS=4",
    "--gin.SAVE_EVERY=2",
    "--gin.partitioning.Partitioner.num_partitions=1",
]


def _train_in_process(model_dir, *extra):
  import gin

  from tkx import cli

  gin.clear_config()
  try:
    argv = ["train", *ARGS, f"--gin.MODEL_DIR='{model_dir}'", *PACKED_AUTO]
    assert cli.main(argv + list(extra)) == 0
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_auto_packed_layout_is_recorded_and_reused_on_resume(tmp_path, caplog):
  """A resumed run trains with the layout recorded at its start, not one chosen again: bit-exact."""
  import shutil

  from tkx.data import packing_plan

  caplog.set_level("INFO", logger="tkx")
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  _train_in_process(reference)
  assert "PACK auto:" in caplog.text
  record = json.loads((reference / packing_plan.RECORD_FILE).read_text())
  assert record["chosen"] == "auto"
  # The run as preempted after checkpoint 2: its files, without what came later.
  shutil.copytree(reference, resumed)
  shutil.rmtree(resumed / "checkpoint_4")
  caplog.clear()
  # Another BATCH_SIZE would choose another layout; the resumed run keeps the recorded one.
  _train_in_process(resumed, "--gin.BATCH_SIZE=64")
  assert "resuming with the recorded layout" in caplog.text
  assert "PACK auto:" not in caplog.text
  assert f"Resumed from {resumed}/checkpoint_2" in caplog.text
  assert json.loads((resumed / packing_plan.RECORD_FILE).read_text()) == record
  expected = jax.tree_util.tree_leaves(
      orbax_io.load_params(str(reference / "checkpoint_4"))
  )
  got = jax.tree_util.tree_leaves(
      orbax_io.load_params(str(resumed / "checkpoint_4"))
  )
  assert len(expected) == len(got)
  for want, have in zip(expected, got):
    np.testing.assert_array_equal(have, want)
