"""Multi-process (multi-host) start-up: which cluster this is, and `jax.distributed` from it.

`tkx.cli` calls `initialize()` once for every command that runs a model
(train, eval, infer, generate, model-info), after gin is parsed (so
`multihost.initialize.*` bindings count) and before anything touches a JAX
device. Each setting (coordinator address, number of processes, process id,
local device ids) comes from the first source that has it:

1. the arguments, i.e. gin (`multihost.initialize.coordinator_address = "10.0.0.1:1234"`);
2. `TKX_COORDINATOR_ADDRESS`, `TKX_NUM_PROCESSES`, `TKX_PROCESS_ID`, `TKX_LOCAL_DEVICE_IDS`;
3. `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, `JAX_LOCAL_DEVICE_IDS`;
4. the cluster, detected from its variables (first match): Open MPI 4 and 5
   (`mpirun`), SLURM (`srun`), GKE TPU, Kubernetes Indexed Job / JobSet, Cloud
   TPU VM (the metadata server, as JAX reads it). See `DETECTORS` and docs/clusters.md.

tkx resolves every setting itself and passes all of them to
`jax.distributed.initialize` with JAX's own detection off, so what runs is what
`describe()` / `python -m tkx.multihost` print. Nothing found: one process, no-op.
A half-configured cluster (a process id without a count, a count without a
coordinator, ...) is a `ClusterConfigError` naming the variables.

`python -m tkx.multihost` joins the processes and prints the environment, the
mesh, each host's data rows and a cross-process sum: a quick cluster check.

Contract (the names other modules rely on; change one only together with its users):
- `initialize(coordinator_address=None, num_processes=None, process_id=None, local_device_ids=None,
  initialization_timeout=300)` (gin `multihost.initialize`) — `tkx.cli` calls it once for every command with
  `Command.joins_processes` (train, eval, infer, generate, model-info), after the command's `configure(args)` parsed
  gin and before any JAX device is touched. Each setting from the first of: arguments/gin, `TKX_*`, `JAX_*`
  (`_COORDINATOR_ADDRESS`, `_NUM_PROCESSES`, `_PROCESS_ID`, `_LOCAL_DEVICE_IDS`), the first detected cluster
  (`DETECTORS`: Open MPI 4/5, SLURM, GKE TPU, Kubernetes Indexed Job/JobSet, Cloud TPU VM metadata). All settings
  are passed to `jax.distributed.initialize(..., cluster_detection_method="deactivate")`. No-op for one process.
- `resolve(...) -> ClusterSettings(environment, coordinator_address, num_processes, process_id, local_device_ids)`
  (reads, starts nothing; `tkx serve` uses it to refuse clusters); `settings()` what `initialize` used.
  Half-configured environments raise `ClusterConfigError(errors.ConfigError)` naming the variables.
- `local_devices_for_task(local_rank, tasks_on_node, visible_devices)`: one task per node -> all GPUs (None).
- `is_primary_host()` (process 0 writes shared files and says job-wide log lines), `sync(name)`.
"""

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import socket
import urllib.request
import zlib
from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

import gin
import jax
import numpy as np

from tkx import errors

log = logging.getLogger(__name__)

ENV_COORDINATOR_ADDRESS = "TKX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "TKX_NUM_PROCESSES"
ENV_PROCESS_ID = "TKX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "TKX_LOCAL_DEVICE_IDS"
# A port for clusters that name the coordinator's host but no port (JAX's variable).
ENV_COORDINATOR_PORT = "JAX_COORDINATOR_PORT"
# Cloud TPU: the port JAX's TPU cluster uses; Kubernetes: the one JAX's k8s cluster uses.
TPU_COORDINATOR_PORT = 8482
K8S_COORDINATOR_PORT = 55527


class ClusterConfigError(errors.ConfigError):
  """A cluster set-up tkx cannot start from; the message names the variables."""


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
  """What `jax.distributed.initialize` gets, and where it came from (`environment`)."""

  environment: str
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_ids: Optional[Tuple[int, ...]] = None

  @property
  def is_multi_process(self) -> bool:
    return (self.num_processes or 1) > 1

  def describe(self) -> str:
    if not self.is_multi_process:
      return f"{self.environment}: one process"
    devices = (
        ""
        if self.local_device_ids is None
        else f", local devices {','.join(map(str, self.local_device_ids))}"
    )
    return (
        f"{self.environment}: process {self.process_id} of {self.num_processes}, "
        f"coordinator {self.coordinator_address}{devices}"
    )


# ------------------------------------------------------------------------------
# Reading variables
# ------------------------------------------------------------------------------
def _int(env: Mapping[str, str], name: str) -> Optional[int]:
  value = env.get(name)
  if value is None or value.strip() == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ClusterConfigError(
        f"multihost: environment variable {name}={value!r} is not an integer"
    ) from None


def _int_list(env: Mapping[str, str], name: str) -> Optional[Tuple[int, ...]]:
  value = env.get(name)
  if not value:
    return None
  try:
    return tuple(int(v) for v in value.split(",") if v.strip())
  except ValueError:
    raise ClusterConfigError(
        f"multihost: {name}={value!r} is not a comma-separated list of integers"
    ) from None


def _port(env: Mapping[str, str], default: int) -> int:
  return _int(env, ENV_COORDINATOR_PORT) or default


def _variables(prefix: str, env: Mapping[str, str]) -> ClusterSettings:
  """`<prefix>_COORDINATOR_ADDRESS`, `_NUM_PROCESSES`, `_PROCESS_ID`, `_LOCAL_DEVICE_IDS`."""
  return ClusterSettings(
      environment=f"{prefix}_* variables",
      coordinator_address=env.get(f"{prefix}_COORDINATOR_ADDRESS") or None,
      num_processes=_int(env, f"{prefix}_NUM_PROCESSES"),
      process_id=_int(env, f"{prefix}_PROCESS_ID"),
      local_device_ids=_int_list(env, f"{prefix}_LOCAL_DEVICE_IDS"),
  )


def _require(environment: str, env: Mapping[str, str], *names: str) -> None:
  """A half-configured cluster: some of its variables set, `names` not."""
  missing = [n for n in names if not env.get(n)]
  if missing:
    raise ClusterConfigError(
        f"multihost: {environment} environment without {', '.join(missing)} "
        f"(set them, or give {ENV_COORDINATOR_ADDRESS}, {ENV_NUM_PROCESSES} and "
        f"{ENV_PROCESS_ID})"
    )


def local_devices_for_task(
    local_rank: int,
    tasks_on_node: Optional[int],
    visible_devices: Optional[int],
) -> Optional[Tuple[int, ...]]:
  """GPUs a launcher task should use: all of them (None) for one task per node, else its share.

  `visible_devices` is how many GPUs the task sees (None: unknown). One task
  per node, or a launcher that already gave each task its own GPU (it sees
  one), uses what it sees; k tasks sharing n visible GPUs take n/k each, in
  local-rank order (unknown n: one each, as JAX assumes).
  """
  if tasks_on_node is not None and tasks_on_node <= 1:
    return None
  if visible_devices == 1:
    return None
  if visible_devices is None or tasks_on_node is None:
    return (local_rank,)
  if visible_devices % tasks_on_node:
    raise ClusterConfigError(
        f"multihost: {tasks_on_node} tasks on this node share {visible_devices} GPUs "
        f"unevenly; start one task per node or per GPU, or set {ENV_LOCAL_DEVICE_IDS}"
    )
  per_task = visible_devices // tasks_on_node
  return tuple(range(local_rank * per_task, (local_rank + 1) * per_task))


def _visible_gpus(env: Mapping[str, str], *count_vars: str) -> Optional[int]:
  visible = env.get("CUDA_VISIBLE_DEVICES")
  if visible is not None and visible.strip():
    return len([v for v in visible.split(",") if v.strip()])
  for name in count_vars:
    if _int(env, name):
      return _int(env, name)
  return None


# ------------------------------------------------------------------------------
# Clusters
# ------------------------------------------------------------------------------
def _open_mpi(env: Mapping[str, str], hint: ClusterSettings):
  """`mpirun`: OMPI_COMM_WORLD_* ranks; the coordinator from ORTE (4.x) or rank 0's host (5.x)."""
  del hint
  if not any(
      n in env
      for n in (
          "OMPI_COMM_WORLD_SIZE",
          "OMPI_COMM_WORLD_RANK",
          "OMPI_MCA_orte_hnp_uri",
      )
  ):
    return None
  _require(
      "Open MPI",
      env,
      "OMPI_COMM_WORLD_SIZE",
      "OMPI_COMM_WORLD_RANK",
      "OMPI_COMM_WORLD_LOCAL_RANK",
  )
  size = _int(env, "OMPI_COMM_WORLD_SIZE")
  rank = _int(env, "OMPI_COMM_WORLD_RANK")
  local_rank = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
  uri = env.get("OMPI_MCA_orte_hnp_uri")
  if uri:  # Open MPI 4: the launcher's address, a port from the job id (as JAX)
    version = "Open MPI 4"
    port = _int(env, ENV_COORDINATOR_PORT) or (
        int(uri.split(".", 1)[0]) // 2**12 % 2**12 + 65535 - 2**12 + 1
    )
    match = re.search(r"tcp://(.+?)[,:]|tcp6://\[(.+?)[,\]]", uri)
    if match is None:
      raise ClusterConfigError(
          f"multihost: OMPI_MCA_orte_hnp_uri={uri!r} names no tcp address"
      )
    host = next(g for g in match.groups() if g is not None)
    coordinator = f"{host}:{port}"
  else:  # Open MPI 5 (PRRTE/PMIx): no launcher address; rank 0 tells its host
    version = "Open MPI 5"
    coordinator = _mpi_rank0_address(env) if size and size > 1 else None
  return ClusterSettings(
      environment=version,
      coordinator_address=coordinator,
      num_processes=size,
      process_id=rank,
      local_device_ids=local_devices_for_task(
          local_rank,
          _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"),
          _visible_gpus(env),
      ),
  )


def _mpi_rank0_address(env: Mapping[str, str]) -> Optional[str]:
  """Rank 0's host (mpi4py broadcast) and a port from the PMIx namespace; None without mpi4py."""
  if env.get(ENV_COORDINATOR_ADDRESS) or env.get("JAX_COORDINATOR_ADDRESS"):
    return None  # given; no need to talk MPI
  try:
    from mpi4py import MPI  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  host = MPI.COMM_WORLD.bcast(
      socket.gethostname() if MPI.COMM_WORLD.Get_rank() == 0 else None, root=0
  )
  namespace = env.get("PMIX_NAMESPACE", "")
  port = _port(env, zlib.crc32(namespace.encode()) % 2**12 + 65535 - 2**12 + 1)
  return f"{host}:{port}"


def _expand_tasks_per_node(value: str) -> list:
  """SLURM's "2(x3),1" -> [2, 2, 2, 1]."""
  counts = []
  for part in value.split(","):
    match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
    if match is None:
      raise ClusterConfigError(
          f"multihost: SLURM tasks per node {value!r} not understood"
      )
    counts += [int(match.group(1))] * int(match.group(2) or 1)
  return counts


def _slurm_first_host(node_list: str) -> str:
  """First host of a SLURM node list: 'node[001-004,9],gpu2' -> 'node001'."""
  match = re.match(r"([^,\[]+)(?:\[([^,\-\]]+))?", node_list)
  if match is None:
    raise ClusterConfigError(f"multihost: SLURM node list {node_list!r}")
  return match.group(1) + (match.group(2) or "")


def _slurm(env: Mapping[str, str], hint: ClusterSettings):
  """`srun`: one process per task; a node's GPUs split between its tasks (all of them for one)."""
  del hint
  if "SLURM_JOB_ID" not in env or "SLURM_PROCID" not in env:
    return None
  if "SLURM_STEP_NODELIST" not in env and "SLURM_STEP_ID" not in env:
    return None  # the batch script itself, not a task that srun started
  _require(
      "SLURM",
      env,
      "SLURM_STEP_NODELIST",
      "SLURM_STEP_NUM_TASKS",
      "SLURM_LOCALID",
  )
  job_id = _int(env, "SLURM_JOB_ID")
  port = _port(env, job_id % 2**12 + 65535 - 2**12 + 1)
  tasks_on_node = None
  per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get(
      "SLURM_TASKS_PER_NODE"
  )
  if per_node:
    counts = _expand_tasks_per_node(per_node)
    node = _int(env, "SLURM_NODEID") or 0
    tasks_on_node = counts[node] if node < len(counts) else None
  return ClusterSettings(
      environment="SLURM",
      coordinator_address=f"{_slurm_first_host(env['SLURM_STEP_NODELIST'])}:{port}",
      num_processes=_int(env, "SLURM_STEP_NUM_TASKS"),
      process_id=_int(env, "SLURM_PROCID"),
      local_device_ids=local_devices_for_task(
          _int(env, "SLURM_LOCALID"),
          tasks_on_node,
          _visible_gpus(env, "SLURM_GPUS_ON_NODE"),
      ),
  )


def _tpu_settings(environment, workers, worker_id, get, env):
  """One TPU slice's workers (or several, MEGASCALE_*) -> settings; TPUs use all local chips."""
  num_slices = int(get("MEGASCALE_NUM_SLICES") or 1)
  slice_id = int(get("MEGASCALE_SLICE_ID") or 0)
  coordinator = get("MEGASCALE_COORDINATOR_ADDRESS") or workers[0]
  return ClusterSettings(
      environment=environment,
      coordinator_address=f"{coordinator.split(':')[0]}:{_port(env, TPU_COORDINATOR_PORT)}",
      num_processes=len(workers) * num_slices,
      process_id=worker_id + slice_id * len(workers),
  )


def _gke_tpu(env: Mapping[str, str], hint: ClusterSettings):
  """GKE TPU pods: TPU_WORKER_HOSTNAMES (or TPU_PROCESS_ADDRESSES) and TPU_WORKER_ID."""
  del hint
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
  if not hosts:
    return None
  workers = [h.strip() for h in hosts.split(",") if h.strip()]
  if len(workers) > 1 or env.get("MEGASCALE_NUM_SLICES"):
    _require("GKE TPU", env, "TPU_WORKER_ID")
  return _tpu_settings(
      "GKE TPU", workers, _int(env, "TPU_WORKER_ID") or 0, env.get, env
  )


def _kubernetes_job(env: Mapping[str, str], hint: ClusterSettings):
  """Indexed Job / JobSet: the pod's index; the coordinator is pod 0 under the same headless service.

  The process count is not in a pod's environment: it comes from
  TKX_NUM_PROCESSES / JAX_NUM_PROCESSES (`hint`). A JobSet of several Jobs
  numbers processes Job by Job (JOB_INDEX x pods per Job + the pod's index).
  """
  if "JOB_COMPLETION_INDEX" not in env:
    return None
  if hint.num_processes is None:
    raise ClusterConfigError(
        "multihost: Kubernetes Indexed Job (JOB_COMPLETION_INDEX is set) without "
        f"{ENV_NUM_PROCESSES}: set it to the number of pods (completions x Jobs)"
    )
  index = _int(env, "JOB_COMPLETION_INDEX")
  job_index = _int(env, "JOB_INDEX") or 0
  if env.get("JOBSET_NAME"):
    _require("JobSet", env, "REPLICATED_JOB_NAME")
    jobs = _int(env, "REPLICATED_JOB_REPLICAS") or (
        1 if job_index == 0 else None
    )
    if jobs is None:
      raise ClusterConfigError(
          f"multihost: JobSet Job {job_index} without REPLICATED_JOB_REPLICAS "
          "(set it from the pod annotation jobset.sigs.k8s.io/replicatedjob-replicas)"
      )
    process_id = job_index * (hint.num_processes // jobs) + index
    first_pod = f"{env['JOBSET_NAME']}-{env['REPLICATED_JOB_NAME']}-0-0"
    environment, default_domain = "Kubernetes JobSet", env["JOBSET_NAME"]
  else:
    # Indexed Job pods are named <job name>-<index>.
    hostname = env.get("HOSTNAME") or socket.gethostname()
    first_pod = re.sub(r"-\d+$", "-0", hostname.split(".")[0])
    process_id, environment, default_domain = (
        index,
        "Kubernetes Indexed Job",
        "",
    )
  # The pod's FQDN is <pod>.<headless service>.<namespace>.svc...; pod 0 shares the domain.
  fqdn = socket.getfqdn()
  domain = fqdn.split(".", 1)[1] if "." in fqdn else default_domain
  host = f"{first_pod}.{domain}" if domain else first_pod
  return ClusterSettings(
      environment=environment,
      coordinator_address=f"{host}:{_port(env, K8S_COORDINATOR_PORT)}",
      process_id=process_id,
  )


def tpu_chips_present() -> bool:
  """TPU chips on this machine's PCI bus (read from /sys; no backend starts)."""
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top

    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:  # pylint: disable=broad-except
    return False


def gce_metadata(key: str, timeout_s: float = 10.0) -> Optional[str]:
  """A Cloud TPU VM's metadata attribute (None when it has none), as JAX's TPU cluster reads it."""
  host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
  request = urllib.request.Request(
      f"http://{host}/computeMetadata/v1/instance/attributes/{key}",
      headers={"Metadata-Flavor": "Google"},
  )
  try:
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
      return response.read().decode()
  except urllib.error.HTTPError as e:
    if e.code == 404:
      return None
    raise


def _cloud_tpu_vm(env: Mapping[str, str], hint: ClusterSettings):
  """A Cloud TPU VM (TPU chips, no GKE variables): workers and this worker's number from the metadata server."""
  del hint
  if env.get("TPU_SKIP_MDS_QUERY") or not tpu_chips_present():
    return None
  try:
    worker_id = gce_metadata("agent-worker-number")
    endpoints = gce_metadata("worker-network-endpoints")
    tpu_env = gce_metadata("tpu-env") or ""
  except OSError as e:  # TPU chips but no metadata server: not a Cloud TPU VM
    log.debug("multihost: TPU chips, but no metadata server (%s)", e)
    return None
  if worker_id is None or not endpoints:
    return None
  # Entries are hostnames, or name:id:ip triples (older VMs).
  workers = []
  for entry in endpoints.split(","):
    parts = entry.strip().split(":")
    workers.append(parts[2] if len(parts) == 3 else parts[0])
  metadata_env = {}
  for line in tpu_env.splitlines():
    if ":" in line:
      key, value = line.split(":", 1)
      metadata_env[key.strip()] = value.strip().strip("'")
  return _tpu_settings(
      "Cloud TPU VM",
      workers,
      int(worker_id),
      lambda k: env.get(k) or metadata_env.get(k),
      env,
  )


# First match wins: mpirun inside a SLURM allocation is Open MPI (as JAX); GKE's
# variables before the metadata server (which would take a request to ask).
DETECTORS: Sequence[Tuple[str, Callable]] = (
    ("Open MPI", _open_mpi),
    ("SLURM", _slurm),
    ("GKE TPU", _gke_tpu),
    ("Kubernetes", _kubernetes_job),
    ("Cloud TPU VM", _cloud_tpu_vm),
)


# ------------------------------------------------------------------------------
# Resolving and joining
# ------------------------------------------------------------------------------
def _merge(sources: Sequence[ClusterSettings]) -> ClusterSettings:
  """Each field from the first source that has it; `environment` names those that gave one."""
  fields = (
      "coordinator_address",
      "num_processes",
      "process_id",
      "local_device_ids",
  )
  values, names = {}, []
  for source in sources:
    used = False
    for field in fields:
      if values.get(field) is None and getattr(source, field) is not None:
        values[field] = getattr(source, field)
        used = True
    if used and source.environment not in names:
      names.append(source.environment)
  return ClusterSettings(
      environment=" + ".join(names) or "no cluster", **values
  )


def resolve(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    local_device_ids: Optional[Union[int, Sequence[int]]] = None,
    env: Optional[Mapping[str, str]] = None,
) -> ClusterSettings:
  """The settings `initialize` would use (reads the environment; starts nothing)."""
  env = os.environ if env is None else env
  if isinstance(local_device_ids, int):
    local_device_ids = (local_device_ids,)
  given = ClusterSettings(
      "arguments",
      coordinator_address,
      num_processes,
      process_id,
      None if local_device_ids is None else tuple(local_device_ids),
  )
  explicit = [given, _variables("TKX", env), _variables("JAX", env)]
  hint = _merge(explicit)
  if hint.num_processes == 1:
    return dataclasses.replace(hint, local_device_ids=None)
  for _, detect in DETECTORS:
    found = detect(env, hint)
    if found is not None:
      explicit.append(found)
      break
  settings = _merge(explicit)
  if settings.num_processes == 1:
    return settings
  named = {
      "coordinator_address": settings.coordinator_address,
      "num_processes": settings.num_processes,
      "process_id": settings.process_id,
  }
  missing = [k for k, v in named.items() if v is None]
  if len(missing) == len(named):
    return ClusterSettings("no cluster")
  if missing:
    variables = ", ".join(f"TKX_{k.upper()}" for k in missing)
    raise ClusterConfigError(
        f"multihost: {settings.environment} gives "
        f"{', '.join(k for k in named if k not in missing)} but not {', '.join(missing)}; "
        f"set {variables} (or multihost.initialize.{missing[0]} in gin)"
    )
  if not 0 <= settings.process_id < settings.num_processes:
    raise ClusterConfigError(
        f"multihost: process_id={settings.process_id} is outside "
        f"[0, {settings.num_processes}) ({settings.environment})"
    )
  return settings


_state = {"settings": None}


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
  settings = resolve(
      coordinator_address, num_processes, process_id, local_device_ids
  )
  _state["settings"] = settings
  if not settings.is_multi_process:
    log.debug("multihost: single process (%s)", settings.environment)
    return False
  log.debug("multihost: joining as %s", settings.describe())
  jax.distributed.initialize(
      coordinator_address=settings.coordinator_address,
      num_processes=settings.num_processes,
      process_id=settings.process_id,
      local_device_ids=(
          None
          if settings.local_device_ids is None
          else list(settings.local_device_ids)
      ),
      initialization_timeout=initialization_timeout,
      cluster_detection_method="deactivate",  # tkx detected it; JAX must not redo it
  )
  if is_primary_host():
    log.info(
        "multihost: %d processes joined (%s); %d local / %d global devices",
        jax.process_count(),
        settings.environment,
        jax.local_device_count(),
        jax.device_count(),
    )
  return True


def settings() -> Optional[ClusterSettings]:
  """What the last `initialize` resolved (None before it ran)."""
  return _state["settings"]


def is_primary_host() -> bool:
  """Process 0 writes shared files (summaries, predictions, gin config)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Barrier across processes (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------
# python -m tkx.multihost
# ------------------------------------------------------------------------------
@contextlib.contextmanager
def _native_output_silenced(enabled: bool):
  """fds 1 and 2 to /dev/null: CPU collectives (Gloo) print connection lines from C++, bypassing logging."""
  if not enabled:
    yield
    return
  import sys  # pylint: disable=g-import-not-at-top

  sys.stdout.flush()
  sys.stderr.flush()
  saved = [os.dup(1), os.dup(2)]
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    yield
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in saved + [devnull]:
      os.close(fd)


def _spans(ranges) -> str:
  return ", ".join(f"{first}..{end - 1}" for first, end in ranges)


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
  parser.add_argument(
      "--log_level", default="warning", choices=("debug", "info", "warning")
  )
  args = parser.parse_args(argv)
  from tkx import logs  # pylint: disable=g-import-not-at-top

  logs.setup_logging(args.log_level)
  initialize(args.coordinator_address, args.num_processes, args.process_id)
  from tkx import partitioning  # pylint: disable=g-import-not-at-top

  partitioner = partitioning.Partitioner(num_partitions=args.num_partitions)
  batch = partitioner.data_axis_size
  layout = partitioner.get_data_layout(batch)
  every_host = partitioning.host_data_rows(
      partitioner, batch
  )  # read off the mesh
  mine = partitioner.host_rows(batch)
  local_rows = mine.astype(np.float32)[:, None] + 1.0
  with _native_output_silenced(args.log_level != "debug"):
    total = float(
        partitioner.partition(
            lambda x: x.sum(),
            in_shardings=partitioner.data_sharding,
            out_shardings=partitioner.replicated,
        )(partitioner.host_local_to_global(local_rows))
    )
    sync(
        "tkx_multihost_layout"
    )  # connects the CPU collectives (Gloo) while they are silenced
  expected = batch * (batch + 1) / 2
  if is_primary_host():
    print(f"environment: {(settings() or resolve()).describe()}")
    print(
        f"mesh: data={partitioner.data_axis_size} model={partitioner.model_axis_size} "
        f"over {jax.device_count()} devices, {jax.process_count()} processes"
    )
    for process, ranges in every_host.items():
      print(f"  host {process}: data rows {_spans(ranges)} of {batch}")
  print(
      f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local devices, "
      f"data shard {layout.shard_id}/{layout.num_shards}, rows {_spans(every_host[jax.process_index()])}, "
      f"global sum {total} (expected {expected})",
      flush=True,
  )
  with _native_output_silenced(args.log_level != "debug"):
    sync("tkx_multihost_check")
  return 0 if total == expected else 1


if __name__ == "__main__":
  raise SystemExit(_check_main())
