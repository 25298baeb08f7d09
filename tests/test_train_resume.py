"""A run killed (SIGKILL after checkpoint k, or SIGTERM at a random step) and resumed ends with
exactly the uninterrupted parameters."""

import json
import os
import random
import re
import signal
import socket
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


# Packed input (the default), rows of one encoder block so 4 rows split over 2 or 4 devices.
PREEMPT_STEPS = 16
PREEMPT_ARGS = ARGS + [
    "--gin.PACK=True",
    "--gin.PACKED_BATCH_SIZE=4",
    "--gin.PACKED_ENCODER_BLOCKS=1",
    "--gin.PACKED_TARGETS_LENGTH=32",
    "--gin.NUM_MICROBATCHES=1",
    f"--gin.TRAIN_STEPS={PREEMPT_STEPS}",
    "--gin.SAVE_EVERY=100",  # only the preemption and the final checkpoint
]


def _start_run(model_dir, log_prefix, num_processes):
  """`tkx train` as `num_processes` local processes (2 CPU devices each, joined through TKX_* variables)."""
  if num_processes == 1:
    return [_start(model_dir, f"{log_prefix}_0.log", args=PREEMPT_ARGS)]
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  return [
      _start(
          model_dir,
          f"{log_prefix}_{i}.log",
          args=PREEMPT_ARGS,
          env_extra=dict(
              TKX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
              TKX_NUM_PROCESSES=str(num_processes),
              TKX_PROCESS_ID=str(i),
              JAX_PLATFORMS="cpu",
          ),
      )
      for i in range(num_processes)
  ]


def _wait_all(procs, log_prefix, timeout=300):
  for i, proc in enumerate(procs):
    _wait(proc, f"{log_prefix}_{i}.log", timeout=timeout)


def _sigterm_then_resume(tmp_path, num_processes):
  """SIGTERM (twice: the second while saving) to the last process at a random step; checks the
  checkpoint, the exit status and a bit-identical resume against an uninterrupted run.
  """
  seed = random.randrange(1 << 30)
  at_step = random.Random(seed).randint(1, 8)
  reference_dir, victim_dir = tmp_path / "reference", tmp_path / "victim"
  reference = _start_run(reference_dir, tmp_path / "reference", num_processes)
  victim = _start_run(victim_dir, tmp_path / "victim", num_processes)
  primary_log = tmp_path / "victim_0.log"
  deadline = time.time() + 300
  while f"step {at_step}/" not in primary_log.read_text():
    assert all(p.poll() is None for p in victim), primary_log.read_text()[
        -3000:
    ]
    assert time.time() < deadline, "training never reached the step"
    time.sleep(0.01)
  os.kill(victim[-1].pid, signal.SIGTERM)
  # A second SIGTERM once the checkpoint is being written.
  signalled_log = tmp_path / f"victim_{num_processes - 1}.log"
  while "Saving checkpoint" not in signalled_log.read_text():
    assert victim[-1].poll() is None, signalled_log.read_text()[-3000:]
    assert time.time() < deadline, "no preemption checkpoint started"
    time.sleep(0.01)
  still_saving = "Preempted:" not in signalled_log.read_text()
  os.kill(victim[-1].pid, signal.SIGTERM)
  _wait_all(victim, tmp_path / "victim")
  log = primary_log.read_text()
  if num_processes == 1 and still_saving:
    assert "SIGTERM again: still saving the preemption checkpoint" in log
  saved = re.findall(
      rf"Preempted: saved {re.escape(str(victim_dir))}/checkpoint_(\d+) at step (\d+); "
      "exiting with status 0",
      log,
  )
  assert len(saved) == 1, f"seed {seed}: {log[-3000:]}"
  step = int(saved[0][0])
  assert saved[0][1] == saved[0][0] and at_step <= step < PREEMPT_STEPS, (
      seed,
      step,
  )
  assert [p.name for p in victim_dir.glob("checkpoint_*")] == [
      f"checkpoint_{step}"
  ]
  for i in range(
      1, num_processes
  ):  # one line per job: only the primary says it
    assert "Preempted:" not in (tmp_path / f"victim_{i}.log").read_text()

  resumed = _start_run(victim_dir, tmp_path / "resumed", num_processes)
  _wait_all(resumed, tmp_path / "resumed")
  _wait_all(reference, tmp_path / "reference")
  assert (
      f"Resumed from {victim_dir}/checkpoint_{step}"
      in (tmp_path / "resumed_0.log").read_text()
  )
  _assert_same_params(
      reference_dir / f"checkpoint_{PREEMPT_STEPS}",
      victim_dir / f"checkpoint_{PREEMPT_STEPS}",
  )


@pytest.mark.slow
def test_sigterm_one_process_saves_exits_0_and_resumes_exactly(tmp_path):
  _sigterm_then_resume(tmp_path, num_processes=1)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_two_processes_saves_at_one_step_exits_0_and_resumes_exactly(
    tmp_path,
):
  """SIGTERM reaches process 1 only; JAX's preemption notice stops both at the same step."""
  _sigterm_then_resume(tmp_path, num_processes=2)
