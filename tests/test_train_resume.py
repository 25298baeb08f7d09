"""A run killed (SIGKILL after checkpoint k, then SIGTERM at a random step) and resumed ends with
exactly the uninterrupted parameters. The 2-process form (SIGTERM to one process) is in
test_multihost_resume.py."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import jax
import pytest

from tkx.checkpoints import orbax_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_STEPS, SAVE_EVERY = 12, 4

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
    "--gin.train_configs.LoggingConfig.log_every=1",
]


def _start(model_dir, log_path, *extra, args=ARGS, env_extra=None):
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
      TF_CPP_MIN_LOG_LEVEL="3",
      PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
      **(env_extra or {}),
  )
  log = open(log_path, "w")
  return subprocess.Popen(
      [
          sys.executable,
          "-m",
          "tkx.cli",
          "train",
          *args,
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


def _assert_same_params(expected_dir, got_dir):
  expected = orbax_io.load_params(str(expected_dir))
  got = dict(
      (jax.tree_util.keystr(p), v)
      for p, v in jax.tree_util.tree_leaves_with_path(
          orbax_io.load_params(str(got_dir))
      )
  )
  flat_expected = jax.tree_util.tree_leaves_with_path(expected)
  assert len(flat_expected) == len(got)
  for path, value in flat_expected:
    np.testing.assert_array_equal(
        got[jax.tree_util.keystr(path)],
        value,
        err_msg=jax.tree_util.keystr(path),
    )


# Packed input (the default), rows of one encoder block so 4 rows split over 2 devices, and two
# micro-batches (the accumulation is resumed too).
KILL_STEPS, KILL_SAVE_EVERY = 16, 4
KILL_ARGS = ARGS + [
    "--gin.PACK=True",
    "--gin.PACKED_BATCH_SIZE=4",
    "--gin.PACKED_ENCODER_BLOCKS=1",
    "--gin.PACKED_TARGETS_LENGTH=32",
    f"--gin.TRAIN_STEPS={KILL_STEPS}",
    f"--gin.SAVE_EVERY={KILL_SAVE_EVERY}",
    "--gin.KEEP_CHECKPOINTS=None",
]


def _wait_for(predicate, proc, log_path, what, deadline):
  while not predicate():
    assert proc.poll() is None, open(log_path).read()[-3000:]
    assert time.time() < deadline, what
    time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_then_sigterm_then_resume_is_exact(tmp_path):
  """One run SIGKILLed after a checkpoint (no cleanup, no final save), resumed, then preempted
  (SIGTERM at a random step, again while saving: saved at the step reached, status 0), resumed:
  its parameters equal an uninterrupted run's, byte for byte."""
  seed = random.randrange(1 << 30)
  at_step = random.Random(seed).randint(KILL_SAVE_EVERY + 2, 11)
  reference_dir, victim_dir = tmp_path / "reference", tmp_path / "victim"
  logs = {name: tmp_path / f"{name}.log" for name in ("reference", "killed")}
  reference = _start(reference_dir, logs["reference"], args=KILL_ARGS)
  deadline = time.time() + 600
  # The victim starts once the reference compiled (one compile: the victim reads XLA's cache).
  _wait_for(
      lambda: "step 1/" in logs["reference"].read_text(),
      reference,
      logs["reference"],
      "the reference never trained",
      deadline,
  )
  victim = _start(victim_dir, logs["killed"], args=KILL_ARGS)
  _wait_for(
      (victim_dir / f"checkpoint_{KILL_SAVE_EVERY}").exists,
      victim,
      logs["killed"],
      "checkpoint never appeared",
      deadline,
  )
  os.kill(victim.pid, signal.SIGKILL)
  assert victim.wait(timeout=60) == -signal.SIGKILL
  assert not (victim_dir / f"checkpoint_{KILL_STEPS}").exists()

  preempted_log = tmp_path / "preempted.log"
  preempted = _start(victim_dir, preempted_log, args=KILL_ARGS)
  _wait_for(
      lambda: f"step {at_step}/" in preempted_log.read_text(),
      preempted,
      preempted_log,
      "training never reached the step",
      deadline,
  )
  said_before = preempted_log.read_text().count("Saving checkpoint")
  os.kill(preempted.pid, signal.SIGTERM)
  _wait_for(
      lambda: preempted_log.read_text().count("Saving checkpoint")
      > said_before,
      preempted,
      preempted_log,
      "no preemption checkpoint started",
      deadline,
  )
  still_saving = "Preempted:" not in preempted_log.read_text()
  os.kill(preempted.pid, signal.SIGTERM)  # a second SIGTERM while it saves
  _wait(preempted, preempted_log)
  log = preempted_log.read_text()
  assert f"Resumed from {victim_dir}/checkpoint_{KILL_SAVE_EVERY}" in log
  assert f"steps {KILL_SAVE_EVERY + 1}..{KILL_STEPS}" in log
  if still_saving:
    assert "SIGTERM again: still saving the preemption checkpoint" in log
  saved = re.findall(
      rf"Preempted: saved {re.escape(str(victim_dir))}/checkpoint_(\d+) at step (\d+); "
      "exiting with status 0",
      log,
  )
  assert len(saved) == 1, f"seed {seed}: {log[-3000:]}"
  step = int(saved[0][0])
  assert saved[0][1] == saved[0][0] and at_step <= step < KILL_STEPS, (
      seed,
      step,
  )
  assert (
      max(int(p.name.split("_")[1]) for p in victim_dir.glob("checkpoint_*"))
      == step
  )

  resumed_log = tmp_path / "resumed.log"
  _wait(_start(victim_dir, resumed_log, args=KILL_ARGS), resumed_log)
  _wait(reference, logs["reference"])
  assert (
      f"Resumed from {victim_dir}/checkpoint_{step}" in resumed_log.read_text()
  )
  _assert_same_params(
      reference_dir / f"checkpoint_{KILL_STEPS}",
      victim_dir / f"checkpoint_{KILL_STEPS}",
  )
  # The parameters did move after the checkpoints resumed from (the comparison means something).
  assert not np.array_equal(
      jax.tree_util.tree_leaves(
          orbax_io.load_params(str(victim_dir / f"checkpoint_{step}"))
      )[0],
      jax.tree_util.tree_leaves(
          orbax_io.load_params(str(victim_dir / f"checkpoint_{KILL_STEPS}"))
      )[0],
  )
