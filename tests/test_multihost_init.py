"""`tkx.multihost.initialize`: settings from arguments / environment, single-process no-op, clear errors.

These never start `jax.distributed` in the test process: every case either is a
no-op or fails before joining (the real joining is in test_multihost_training.py).
"""

import jax
import pytest

from tkx import multihost

CLUSTER_VARS = (
    "TKX_COORDINATOR_ADDRESS",
    "TKX_NUM_PROCESSES",
    "TKX_PROCESS_ID",
    "TKX_LOCAL_DEVICE_IDS",
    "JAX_COORDINATOR_ADDRESS",
    "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
)


@pytest.fixture
def clean_env(monkeypatch):
  for name in CLUSTER_VARS:
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(
      jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs)
  )
  return calls


def test_single_process_is_a_no_op(clean_env):
  assert multihost.initialize() is False
  assert multihost.initialize(num_processes=1) is False
  assert clean_env == []
  assert multihost.is_primary_host()
  multihost.sync("nothing_to_wait_for")


def test_environment_variables_are_read(clean_env, monkeypatch):
  monkeypatch.setenv("TKX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("TKX_NUM_PROCESSES", "4")
  monkeypatch.setenv("TKX_PROCESS_ID", "3")
  monkeypatch.setenv("TKX_LOCAL_DEVICE_IDS", "0,1")
  assert multihost.initialize() is True
  assert clean_env[0]["coordinator_address"] == "10.0.0.1:1234"
  assert (clean_env[0]["num_processes"], clean_env[0]["process_id"]) == (4, 3)
  assert clean_env[0]["local_device_ids"] == [0, 1]


def test_arguments_override_environment(clean_env, monkeypatch):
  monkeypatch.setenv("TKX_PROCESS_ID", "3")
  multihost.initialize("host:1", num_processes=2, process_id=1)
  assert (clean_env[0]["coordinator_address"], clean_env[0]["process_id"]) == (
      "host:1",
      1,
  )


def test_cluster_auto_detection_only_on_clusters(clean_env, monkeypatch):
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert multihost.initialize() is False
  monkeypatch.setenv("SLURM_NTASKS", "2")
  assert multihost.initialize() is True
  assert (
      clean_env[0].get("coordinator_address") is None
  )  # left to JAX's SLURM detection


@pytest.mark.parametrize(
    "env,kwargs,message",
    [
        (
            {"TKX_NUM_PROCESSES": "two"},
            {},
            "TKX_NUM_PROCESSES='two' is not an integer",
        ),
        (
            {"TKX_LOCAL_DEVICE_IDS": "0;1"},
            {"num_processes": 2},
            "TKX_LOCAL_DEVICE_IDS",
        ),
        (
            {},
            {"num_processes": 2, "process_id": 0},
            "coordinator_address not set",
        ),
        (
            {},
            {"coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
            r"outside \[0, 2\)",
        ),
    ],
)
def test_bad_settings_name_the_setting(
    clean_env, monkeypatch, env, kwargs, message
):
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(ValueError, match=message):
    multihost.initialize(**kwargs)
  assert clean_env == []
