"""A 2-process `tkx train` (jax.distributed on localhost, 2 CPU devices each), killed and resumed, is exact.

Each process packs its own data shard, so the hosts' input positions differ; a
checkpoint holds both (`TrainInput.checkpoint_data_state`). The run is SIGKILLed
(both processes, as when a host dies and the job restarts) at a random moment and
resumed; the packed run is then preempted (SIGTERM to process 1 only, twice: JAX's
notice stops both at one step, they save it and exit 0) and resumed again. Each
run must end with parameters byte-identical to an uninterrupted 2-process run;
resuming it on one process is refused with one line naming the shard counts. The
moments are drawn from a seed printed in failures (TKX_TEST_SEED sets it).
"""

import functools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import pytest

from test_multihost_training import _free_port
from tkx.checkpoints import layout, orbax_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
    "--gin_file=gin_configs/experiments/embedded_tiny.gin",
    "--gin.network.T5Config.emb_dim=32",
    "--gin.network.T5Config.num_heads=2",
    "--gin.network.T5Config.head_dim=16",
    "--gin.network.T5Config.mlp_dim=64",
    "--gin.network.T5Config.num_encoder_layers=1",
    "--gin.network.T5Config.num_decoder_layers=1",
    '--gin.TASK_FEATURE_LENGTHS={"inputs": 256, "targets": 16}',
    # Dropout on: a resumed run must also restore the RNG stream.
    "--gin.DROPOUT_RATE=0.1",
    "--gin.BATCH_SIZE=8",
    "--gin.PACKED_BATCH_SIZE=4",
    "--gin.PACKED_ENCODER_BLOCKS=1",
    "--gin.PACKED_TARGETS_LENGTH=32",
    # Small windows: the hosts' positions cross windows at different steps.
    "--gin.PACKING_WINDOW=12",
    "--gin.SAVE_EVERY=1",
    "--gin.KEEP_CHECKPOINTS=None",
    "--gin.EVAL_EVERY=None",
    "--gin.train_configs.LoggingConfig.log_every=1",
    "--gin.partitioning.Partitioner.num_partitions=1",
]


def _start(model_dir, log_prefix, pack, num_processes=2, steps=5):
  """Starts the processes of one `tkx train` job; returns [(Popen, log path)]."""
  address = f"127.0.0.1:{_free_port()}"
  jobs = []
  for process_id in range(num_processes):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    if num_processes > 1:
      env.update(
          TKX_COORDINATOR_ADDRESS=address,
          TKX_NUM_PROCESSES=str(num_processes),
          TKX_PROCESS_ID=str(process_id),
      )
    log_path = f"{log_prefix}_{process_id}.log"
    with open(log_path, "w") as log:
      proc = subprocess.Popen(
          [sys.executable, "-m", "tkx.cli", "train", *ARGS]
          + [
              f"--gin.MODEL_DIR='{model_dir}'",
              f"--gin.PACK={pack}",
              f"--gin.TRAIN_STEPS={steps}",
          ],
          cwd=REPO,
          env=env,
          stdout=log,
          stderr=subprocess.STDOUT,
      )
    jobs.append((proc, log_path))
  return jobs


def _read(path):
  with open(path) as f:
    return f.read()


def _wait(jobs, timeout=600, expect_rc=0):
  deadline = time.time() + timeout
  for proc, log_path in jobs:
    try:
      rc = proc.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for p, _ in jobs:
        p.kill()
      raise AssertionError(f"timed out; log:\n{_read(log_path)[-3000:]}")
    assert rc == expect_rc, f"rc {rc}; log:\n{_read(log_path)[-3000:]}"


def _checkpoint_exists(model_dir, step):
  return os.path.exists(os.path.join(model_dir, f"checkpoint_{step}"))


def _kill_between(jobs, model_dir, step, delay, why):
  """SIGKILLs every process `delay` s after checkpoint_<step> is complete, at the latest
  when checkpoint_<step + 1> is: a moment inside step + 1 (its compute, input or save).
  """
  deadline = time.time() + 600
  while not _checkpoint_exists(model_dir, step):
    for proc, log_path in jobs:
      assert (
          proc.poll() is None
      ), f"{why}: exited early:\n{_read(log_path)[-3000:]}"
    assert time.time() < deadline, f"{why}: checkpoint_{step} never appeared"
    time.sleep(0.01)
  kill_at = time.time() + delay
  while time.time() < kill_at and not _checkpoint_exists(model_dir, step + 1):
    time.sleep(0.005)
  for proc, _ in jobs:  # a host dies: the whole job restarts
    os.kill(proc.pid, signal.SIGKILL)
  for proc, _ in jobs:
    proc.wait(timeout=60)


def _wait_for_step(jobs, log_path, step, why):
  deadline = time.time() + 600
  while f"step {step}/" not in _read(log_path):
    assert all(p.poll() is None for p, _ in jobs), f"{why}: exited early"
    assert time.time() < deadline, f"{why}: step {step} never ran"
    time.sleep(0.01)


def _sigterm_second_process(jobs, log_prefix, at_step, why):
  """Preemption as a spot VM sees it: SIGTERM to process 1 once step `at_step` ran, again while
  it saves; returns the step the job saved (said once, by process 0) after both exited 0.
  """
  primary_log, signalled_log = f"{log_prefix}_0.log", f"{log_prefix}_1.log"
  _wait_for_step(jobs, primary_log, at_step, why)
  deadline = time.time() + 600
  signalled = jobs[1][0]
  said_before = _read(signalled_log).count("Saving checkpoint")
  os.kill(signalled.pid, signal.SIGTERM)
  while _read(signalled_log).count("Saving checkpoint") == said_before:
    assert signalled.poll() is None, f"{why}: {_read(signalled_log)[-3000:]}"
    assert time.time() < deadline, f"{why}: no preemption checkpoint started"
    time.sleep(0.01)
  os.kill(signalled.pid, signal.SIGTERM)
  _wait(jobs)
  saved = re.findall(
      r"Preempted: saved \S+/checkpoint_(\d+) at step (\d+); exiting with status 0",
      _read(primary_log),
  )
  assert (
      len(saved) == 1 and saved[0][0] == saved[0][1]
  ), f"{why}: {_read(primary_log)[-3000:]}"
  assert "Preempted:" not in _read(signalled_log)  # said once per job
  return int(saved[0][0])


def _assert_same_params(expected_dir, got_dir, step):
  expected = orbax_io.load_params(f"{expected_dir}/checkpoint_{step}")
  got = orbax_io.load_params(f"{got_dir}/checkpoint_{step}")
  flat_got = {
      jax.tree_util.keystr(p): v
      for p, v in jax.tree_util.tree_leaves_with_path(got)
  }
  leaves = jax.tree_util.tree_leaves_with_path(expected)
  assert len(leaves) == len(flat_got)
  for path, value in leaves:
    got_value = flat_got[jax.tree_util.keystr(path)]
    assert got_value.tobytes() == value.tobytes(), jax.tree_util.keystr(path)


def _input_by_shard(model_dir, step):
  with open(
      os.path.join(model_dir, f"checkpoint_{step}", "data_state", "metadata")
  ) as f:
    return json.load(f)["input_by_shard"]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "pack, train_steps, preempt",
    # Packed: SIGKILLed, then preempted; unpacked (the cheaper variant): SIGKILLed.
    [(True, 8, True), (False, 5, False)],
    ids=["packed", "unpacked"],
)
def test_two_process_run_killed_and_resumed_is_exact(
    tmp_path, pack, train_steps, preempt
):
  seed = int(os.environ.get("TKX_TEST_SEED", random.randrange(10**6)))
  rng = random.Random(seed)
  why = f"TKX_TEST_SEED={seed}"
  reference, victim = str(tmp_path / "reference"), str(tmp_path / "victim")
  start = functools.partial(_start, pack=pack, steps=train_steps)
  reference_jobs = start(reference, tmp_path / "reference")
  # The victim starts once the reference compiled (one compile: the victim reads XLA's cache).
  _wait_for_step(reference_jobs, tmp_path / "reference_0.log", 1, why)
  jobs = start(victim, tmp_path / "victim")
  _kill_between(jobs, victim, rng.choice((1, 2)), rng.uniform(0.0, 0.5), why)
  newest = max(layout.list_steps(victim))
  assert newest < train_steps, f"{why}: the run finished before the kill"
  jobs = start(victim, tmp_path / "resumed0")
  resumes = 1
  if preempt:
    at_step = newest + rng.choice((1, 2))
    saved = _sigterm_second_process(jobs, tmp_path / "resumed0", at_step, why)
    assert at_step <= saved < train_steps, f"{why}: saved {saved}"
    assert max(layout.list_steps(victim)) == saved
    jobs = start(victim, tmp_path / "resumed1")
    resumes = 2
  _wait(jobs)
  _wait(reference_jobs)
  for i in range(resumes):
    log = _read(tmp_path / f"resumed{i}_0.log")
    assert "Resumed from" in log, f"{why}: resume {i}:\n{log[-3000:]}"
  _assert_same_params(reference, victim, train_steps)
  positions = _input_by_shard(reference, train_steps)
  assert len(positions) == 2
  if pack:
    # Each host's own position, not the primary's for both.
    assert any(
        a != b
        for s in range(1, train_steps + 1)
        for a, b in [_input_by_shard(reference, s)]
    ), f"the hosts' packed positions never differed: {positions}"
    # One process (1 data shard) cannot continue the 2-shard packed input exactly.
    one = _start(victim, tmp_path / "one_process", pack, 1, train_steps + 2)
    _wait(one, expect_rc=2)
    err = _read(tmp_path / "one_process_0.log").strip().splitlines()[-1]
    assert err.startswith(
        f"tkx train: error: checkpoint_{train_steps} was written with 2 data "
        "shard(s) (hosts), this run has 1"
    ), err
    assert not _checkpoint_exists(victim, train_steps + 1)
  else:
    assert positions[0] == positions[1] == {"next_index": train_steps * 8}
