"""Multi-process (multi-host) start-up: `jax.distributed` from arguments, gin or the environment.

Call `initialize()` first thing in a command, before anything touches a JAX
device. Settings come, in order of precedence, from the arguments (or gin:
`multihost.initialize.coordinator_address = "10.0.0.1:1234"`), then from
`TKX_COORDINATOR_ADDRESS`, `TKX_NUM_PROCESSES`, `TKX_PROCESS_ID`,
`TKX_LOCAL_DEVICE_IDS` (comma separated); with none of them, JAX's own cluster
auto-detection runs when the environment looks like a multi-process cluster
(Cloud TPU pod, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS); otherwise it is a
no-op and the run is a single process.

`python -m tkx.multihost` prints what a process sees (process index, devices,
the mesh's data layout) and checks a cross-process sum: a quick way to test a
cluster set-up.
"""

import argparse
import logging
import os
from typing import Optional, Sequence, Union

import gin
import jax
import numpy as np

ENV_COORDINATOR_ADDRESS = "TKX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "TKX_NUM_PROCESSES"
ENV_PROCESS_ID = "TKX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "TKX_LOCAL_DEVICE_IDS"


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(
        f"multihost: environment variable {name}={value!r} is not an integer"
    ) from None


def _env_device_ids() -> Optional[list]:
  value = os.environ.get(ENV_LOCAL_DEVICE_IDS)
  if not value:
    return None
  try:
    return [int(v) for v in value.split(",") if v.strip()]
  except ValueError:
    raise ValueError(
        f"multihost: {ENV_LOCAL_DEVICE_IDS}={value!r} is not a comma-separated list "
        "of integers"
    ) from None


def _looks_like_cluster() -> bool:
  """True where JAX's cluster auto-detection has something to detect (several processes)."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if (
      int(env.get("SLURM_NTASKS", env.get("SLURM_STEP_NUM_TASKS", "1")) or 1)
      > 1
  ):
    return True
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return True
  # Cloud TPU pods list their workers; a single-host TPU VM lists one or none.
  return (
      len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
  )


def is_initialized() -> bool:
  return jax.distributed.is_initialized()


@gin.configurable(module="multihost")
def initialize(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    local_device_ids: Optional[Union[int, Sequence[int]]] = None,
    initialization_timeout: int = 300,
) -> bool:
  """Joins the processes of a multi-host run; returns True if `jax.distributed` is now up.

  A no-op (False) for a single process. Safe to call twice.
  """
  if jax.distributed.is_initialized():
    return True
  coordinator_address = (
      coordinator_address or os.environ.get(ENV_COORDINATOR_ADDRESS) or None
  )
  num_processes = (
      num_processes
      if num_processes is not None
      else _env_int(ENV_NUM_PROCESSES)
  )
  process_id = (
      process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  )
  local_device_ids = (
      local_device_ids if local_device_ids is not None else _env_device_ids()
  )

  explicit = (
      coordinator_address is not None
      or num_processes is not None
      or process_id is not None
  )
  if not explicit:
    if not _looks_like_cluster():
      logging.info(
          "multihost: single process (no coordinator configured, no cluster detected)"
      )
      return False
    logging.info(
        "multihost: cluster environment detected; using JAX auto-detection"
    )
    jax.distributed.initialize(
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
    )
    _log_started()
    return True

  if num_processes == 1:
    logging.info("multihost: num_processes=1, nothing to initialise")
    return False
  missing = [
      name
      for name, value in (
          ("coordinator_address", coordinator_address),
          ("num_processes", num_processes),
          ("process_id", process_id),
      )
      if value is None
  ]
  # JAX can fill in what is missing on clusters it knows; elsewhere say clearly what is needed.
  if missing and not _looks_like_cluster():
    raise ValueError(
        f"multihost.initialize: {', '.join(missing)} not set (arguments, gin or "
        f"{ENV_COORDINATOR_ADDRESS}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}); a multi-process "
        "run outside a detected cluster needs all three"
    )
  if (
      num_processes is not None
      and process_id is not None
      and not 0 <= process_id < num_processes
  ):
    raise ValueError(
        f"multihost.initialize: process_id={process_id} is outside [0, {num_processes})"
    )
  logging.info(
      "multihost: joining %s as process %s of %s",
      coordinator_address,
      process_id,
      num_processes,
  )
  jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      local_device_ids=local_device_ids,
      initialization_timeout=initialization_timeout,
  )
  _log_started()
  return True


def _log_started():
  logging.info(
      "multihost: process %d of %d, %d local / %d global devices",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )


def is_primary_host() -> bool:
  """Process 0 writes shared files (summaries, predictions, gin config)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Barrier across processes (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _check_main(argv=None) -> int:
  """`python -m tkx.multihost`: joins the cluster, prints the layout, checks a global sum."""
  parser = argparse.ArgumentParser(
      prog="python -m tkx.multihost", description=_check_main.__doc__
  )
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  parser.add_argument(
      "--num_partitions",
      type=int,
      default=1,
      help="model axis size of the test mesh",
  )
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  initialize(args.coordinator_address, args.num_processes, args.process_id)
  from tkx import partitioning

  partitioner = partitioning.Partitioner(num_partitions=args.num_partitions)
  layout = partitioner.get_data_layout()
  local_rows = np.full(
      (partitioner.data_axis_size // layout.num_shards, 1),
      layout.shard_id + 1.0,
      np.float32,
  )
  total = partitioner.partition(
      lambda x: x.sum(),
      in_shardings=partitioner.data_sharding,
      out_shardings=partitioner.replicated,
  )(partitioner.host_local_to_global(local_rows))
  expected = (
      sum(range(1, layout.num_shards + 1))
      * partitioner.data_axis_size
      // layout.num_shards
  )
  print(
      f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local devices, "
      f"mesh data={partitioner.data_axis_size} model={partitioner.model_axis_size}, "
      f"data shard {layout.shard_id}/{layout.num_shards}, global sum {float(total)} (expected {expected})"
  )
  return 0 if float(total) == expected else 1


if __name__ == "__main__":
  raise SystemExit(_check_main())
