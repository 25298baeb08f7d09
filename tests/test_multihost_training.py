"""Two local `jax.distributed` processes x 4 CPU devices train like one process x 8 devices.

Each worker (tests/multihost_worker.py) feeds only its own rows of every global
batch through `Partitioner.host_local_to_global`; a wrong data layout would feed
different rows and change the losses.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import multihost_worker
from tkx import partitioning

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO_ROOT, "tests", "multihost_worker.py")
NUM_PROCESSES = 2


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _child_env() -> dict:
  env = dict(os.environ)
  env.update(
      XLA_FLAGS="--xla_force_host_platform_device_count=4",
      JAX_PLATFORMS="cpu",
      PYTHONPATH=REPO_ROOT + os.pathsep + env.get("PYTHONPATH", ""),
  )
  for name in (
      "TKX_COORDINATOR_ADDRESS",
      "TKX_NUM_PROCESSES",
      "TKX_PROCESS_ID",
      "JAX_COORDINATOR_ADDRESS",
  ):
    env.pop(name, None)
  return env


def launch(args_for_process, tmp_path, timeout_s):
  """Starts NUM_PROCESSES children, waits (killing all on timeout), returns their logs."""
  address = f"127.0.0.1:{_free_port()}"
  procs = []
  for process_id in range(NUM_PROCESSES):
    cmd = (
        [sys.executable]
        + args_for_process(process_id)
        + [
            "--coordinator_address",
            address,
            "--num_processes",
            str(NUM_PROCESSES),
            "--process_id",
            str(process_id),
        ]
    )
    log = open(tmp_path / f"log_{process_id}.txt", "w")
    procs.append(
        (
            subprocess.Popen(
                cmd,
                env=_child_env(),
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            log,
        )
    )
  try:
    for proc, _ in procs:
      proc.wait(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    pass
  finally:
    for proc, log in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      log.close()
  logs = [(tmp_path / f"log_{i}.txt").read_text() for i in range(NUM_PROCESSES)]
  for (proc, _), log in zip(procs, logs):
    assert (
        proc.returncode == 0
    ), f"worker failed (rc={proc.returncode}); its log:\n{log[-4000:]}"
  return logs


def _run_workers(problem, meshes, tmp_path, timeout_s, step="plain"):
  launch(
      lambda i: [
          WORKER,
          "--problem",
          problem,
          "--step",
          step,
          "--meshes",
          ",".join(meshes),
          "--out",
          str(tmp_path / f"result_{i}.json"),
      ],
      tmp_path,
      timeout_s,
  )
  return [
      json.loads((tmp_path / f"result_{i}.json").read_text())
      for i in range(NUM_PROCESSES)
  ]


def _check_against_one_process(results, problem, meshes, step="plain"):
  assert [r["process_count"] for r in results] == [
      NUM_PROCESSES
  ] * NUM_PROCESSES
  assert [r["local_devices"] for r in results] == [4] * NUM_PROCESSES
  references = {}
  for mesh in meshes:
    # One process has nothing to interleave: "4x2i" is "4x2" there.
    plain = mesh.rstrip("i")
    if plain not in references:
      references[plain] = multihost_worker.train_losses(
          partitioning.Partitioner(**multihost_worker.parse_mesh(plain)),
          multihost_worker.make_problem(problem),
          step=step,
      )
    reference = references[plain]
    for result in results:
      np.testing.assert_allclose(
          result["losses"][mesh],
          reference,
          rtol=1e-5,
          atol=1e-5,
          err_msg=f"mesh {mesh}, process {result['process_index']}",
      )
    assert reference[-1] < reference[0]


@pytest.mark.multiprocess
def test_two_processes_match_one_process_mlp(tmp_path):
  meshes = ["4x2", "1x8", "4x2i"]
  results = _run_workers("mlp", meshes, tmp_path, timeout_s=240)
  # Data layout: "data" spans both hosts (shards 0 and 1) until the model axis spans them (one shared shard).
  assert [r["layouts"]["4x2"] for r in results] == [[0, 2, True], [1, 2, True]]
  assert [r["layouts"]["1x8"] for r in results] == [[0, 1, True], [0, 1, False]]
  # Hosts interleaved along "data": each feeds the rows its devices hold, in two blocks.
  assert [r["rows"]["4x2"] for r in results] == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert [r["rows"]["4x2i"] for r in results] == [[0, 1, 4, 5], [2, 3, 6, 7]]
  _check_against_one_process(results, "mlp", meshes)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_process_t5(tmp_path):
  """The tiny T5 with tkx.trainer's step (Adafactor, 2 micro-batches), data-parallel and 2x4."""
  meshes = ["8x1", "2x4"]
  results = _run_workers("t5", meshes, tmp_path, timeout_s=420, step="trainer")
  assert [r["layouts"]["2x4"] for r in results] == [[0, 2, True], [1, 2, True]]
  _check_against_one_process(results, "t5", meshes, step="trainer")


@pytest.mark.multiprocess
def test_multihost_check_command(tmp_path):
  """`python -m tkx.multihost`: the environment, the mesh and each host's rows, once; quiet logs."""
  logs = launch(
      lambda i: ["-m", "tkx.multihost", "--num_partitions", "2"],
      tmp_path,
      timeout_s=180,
  )
  assert (
      "environment: arguments: process 0 of 2, coordinator 127.0.0.1:"
      in logs[0]
  )
  assert "mesh: data=4 model=2 over 8 devices, 2 processes" in logs[0]
  assert (
      "  host 0: data rows 0..1 of 4\n  host 1: data rows 2..3 of 4" in logs[0]
  )
  assert "mesh:" not in logs[1]  # said once per job
  for process_id, log in enumerate(logs):
    assert (
        f"process {process_id}/2: 4 local devices, data shard {process_id}/2, "
        f"rows {2 * process_id}..{2 * process_id + 1}, global sum 10.0 (expected 10.0)"
    ) in log
    # Quiet at the default level: no INFO lines (ours, root's or a library's).
    assert "INFO" not in log and "I1" not in log, log
