"""`tkx.multihost` start-up: each cluster's variables -> the exact `jax.distributed.initialize` call.

Every environment is simulated as its launcher sets it (variables; the Cloud
TPU metadata server is a local HTTP server answering as the real one), and
`jax.distributed.initialize` is replaced by a recorder: nothing joins here (the
real joining is in test_multihost_training.py / test_multihost_commands.py).
"""

import http.server
import os
import sys
import socket
import threading
import types

import jax
import pytest

from tkx import cli, multihost

_PREFIXES = (
    "TKX_",
    "OMPI_",
    "PMIX_",
    "SLURM_",
    "TPU_",
    "MEGASCALE_",
    "JOB_",
    "JOBSET_",
    "REPLICATED_JOB_",
)
_NAMES = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "JAX_LOCAL_DEVICE_IDS",
    "JAX_COORDINATOR_PORT",
    "CUDA_VISIBLE_DEVICES",
    "GCE_METADATA_IP",
)


@pytest.fixture
def calls(monkeypatch):
  """A clean environment (no cluster variables, no TPU chips); returns the recorded initialize calls."""
  for name in list(os.environ):
    if name.startswith(_PREFIXES) or name in _NAMES:
      monkeypatch.delenv(name)
  monkeypatch.setattr(multihost, "tpu_chips_present", lambda: False)
  recorded = []
  monkeypatch.setattr(
      jax.distributed, "initialize", lambda **kw: recorded.append(kw)
  )
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  return recorded


def _set(monkeypatch, **variables):
  for name, value in variables.items():
    monkeypatch.setenv(name, str(value))


def _call(coordinator, num, pid, local=None, timeout=300):
  return dict(
      coordinator_address=coordinator,
      num_processes=num,
      process_id=pid,
      local_device_ids=local,
      initialization_timeout=timeout,
      cluster_detection_method="deactivate",
  )


def test_single_process_is_a_no_op(calls):
  assert multihost.initialize() is False
  assert multihost.initialize(num_processes=1) is False
  assert calls == []
  assert multihost.resolve().describe() == "no cluster: one process"
  assert multihost.is_primary_host()
  multihost.sync("nothing_to_wait_for")


def test_tkx_variables(calls, monkeypatch):
  _set(
      monkeypatch,
      TKX_COORDINATOR_ADDRESS="10.0.0.1:1234",
      TKX_NUM_PROCESSES=4,
      TKX_PROCESS_ID=3,
      TKX_LOCAL_DEVICE_IDS="0,1",
  )
  assert multihost.initialize() is True
  assert calls == [_call("10.0.0.1:1234", 4, 3, [0, 1])]


def test_jax_variables(calls, monkeypatch):
  _set(
      monkeypatch,
      JAX_COORDINATOR_ADDRESS="10.0.0.2:99",
      JAX_NUM_PROCESSES=2,
      JAX_PROCESS_ID=1,
      JAX_LOCAL_DEVICE_IDS="3",
  )
  multihost.initialize(initialization_timeout=60)
  assert calls == [_call("10.0.0.2:99", 2, 1, [3], timeout=60)]


def test_arguments_then_tkx_then_jax_then_cluster(calls, monkeypatch):
  _set(
      monkeypatch,
      TKX_PROCESS_ID=3,
      JAX_PROCESS_ID=2,
      JAX_NUM_PROCESSES=8,
      SLURM_JOB_ID=7,
      SLURM_PROCID=1,
      SLURM_LOCALID=1,
      SLURM_STEP_NODELIST="gpu[01-02]",
      SLURM_STEP_NUM_TASKS=2,
  )
  multihost.initialize("host:1")
  # coordinator: argument; process id: TKX_; count: JAX_ (SLURM fills nothing left).
  assert calls == [_call("host:1", 8, 3, [1])]
  assert (
      multihost.settings().environment
      == "arguments + TKX_* variables + JAX_* variables + SLURM"
  )


def test_slurm_one_task_per_gpu(calls, monkeypatch):
  _set(
      monkeypatch,
      SLURM_JOB_ID=4242,
      SLURM_STEP_ID=0,
      SLURM_STEP_NODELIST="node[003-004,9],gpu2",
      SLURM_STEP_NUM_TASKS=16,
      SLURM_STEP_TASKS_PER_NODE="8(x2)",
      SLURM_NODEID=1,
      SLURM_PROCID=13,
      SLURM_LOCALID=5,
      SLURM_GPUS_ON_NODE=8,
  )
  multihost.initialize()
  port = 4242 % 4096 + 65535 - 4096 + 1  # JAX's port rule
  assert calls == [_call(f"node003:{port}", 16, 13, [5])]


def test_slurm_one_task_per_node_uses_all_its_gpus(calls, monkeypatch):
  _set(
      monkeypatch,
      SLURM_JOB_ID=1,
      SLURM_STEP_NODELIST="a1,a2",
      SLURM_STEP_NUM_TASKS=2,
      SLURM_STEP_TASKS_PER_NODE="1(x2)",
      SLURM_NODEID=1,
      SLURM_PROCID=1,
      SLURM_LOCALID=0,
      CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7",
      JAX_COORDINATOR_PORT=5000,
  )
  multihost.initialize()
  assert calls == [_call("a1:5000", 2, 1, None)]


@pytest.mark.parametrize(
    "tasks,visible,local_rank,expected",
    [
        (1, 8, 0, None),  # one task per node: all GPUs
        (8, 8, 5, (5,)),  # one task per GPU
        (8, 1, 5, None),  # the launcher bound one GPU to each task
        (2, 8, 1, (4, 5, 6, 7)),  # two tasks of four GPUs each
        (None, None, 3, (3,)),  # nothing known: one each, as JAX
    ],
)
def test_local_devices_for_task(tasks, visible, local_rank, expected):
  assert (
      multihost.local_devices_for_task(local_rank, tasks, visible) == expected
  )


def test_slurm_batch_script_is_not_a_task(calls, monkeypatch):
  # sbatch's own shell has job variables but was not started by srun: one process.
  _set(monkeypatch, SLURM_JOB_ID=1, SLURM_PROCID=0, SLURM_NTASKS=4)
  assert multihost.initialize() is False


def test_open_mpi_4(calls, monkeypatch):
  _set(
      monkeypatch,
      OMPI_MCA_orte_hnp_uri="1531576320.0;tcp://10.96.0.1,10.148.0.1:34911",
      OMPI_COMM_WORLD_SIZE=4,
      OMPI_COMM_WORLD_RANK=2,
      OMPI_COMM_WORLD_LOCAL_RANK=0,
      OMPI_COMM_WORLD_LOCAL_SIZE=2,
      SLURM_JOB_ID=1,  # mpirun inside an allocation: Open MPI wins, as in JAX
      SLURM_PROCID=0,
      SLURM_STEP_ID=0,
  )
  multihost.initialize()
  port = 1531576320 // 4096 % 4096 + 65535 - 4096 + 1
  assert calls == [_call(f"10.96.0.1:{port}", 4, 2, [0])]


def test_open_mpi_5_rank0_host_from_mpi4py(calls, monkeypatch):
  _set(
      monkeypatch,
      OMPI_COMM_WORLD_SIZE=2,
      OMPI_COMM_WORLD_RANK=1,
      OMPI_COMM_WORLD_LOCAL_RANK=0,
      OMPI_COMM_WORLD_LOCAL_SIZE=1,
      PMIX_NAMESPACE="prterun-head-1234@1",
      PMIX_RANK=1,
      JAX_COORDINATOR_PORT=6000,
  )
  world = types.SimpleNamespace(
      Get_rank=lambda: 1, bcast=lambda value, root: "head-node"
  )
  mpi4py = types.ModuleType("mpi4py")
  mpi4py.MPI = types.SimpleNamespace(COMM_WORLD=world)
  monkeypatch.setitem(sys.modules, "mpi4py", mpi4py)
  multihost.initialize()
  assert calls == [_call("head-node:6000", 2, 1, None)]


def test_open_mpi_5_without_mpi4py_names_the_variable(calls, monkeypatch):
  _set(
      monkeypatch,
      OMPI_COMM_WORLD_SIZE=2,
      OMPI_COMM_WORLD_RANK=0,
      OMPI_COMM_WORLD_LOCAL_RANK=0,
      PMIX_RANK=0,
  )
  monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
  with pytest.raises(
      multihost.ClusterConfigError,
      match="Open MPI 5 gives num_processes, process_id but not coordinator_address; "
      "set TKX_COORDINATOR_ADDRESS",
  ):
    multihost.initialize()
  monkeypatch.setenv("TKX_COORDINATOR_ADDRESS", "head:1234")
  multihost.initialize()
  assert calls == [_call("head:1234", 2, 0, [0])]


def test_gke_tpu_multislice(calls, monkeypatch):
  _set(
      monkeypatch,
      TPU_WORKER_HOSTNAMES="w-0.svc,w-1.svc,w-2.svc,w-3.svc",
      TPU_WORKER_ID=2,
      MEGASCALE_NUM_SLICES=2,
      MEGASCALE_SLICE_ID=1,
      MEGASCALE_COORDINATOR_ADDRESS="slice0-w-0.svc:8080",
  )
  multihost.initialize()
  assert calls == [_call("slice0-w-0.svc:8482", 8, 6)]


def test_kubernetes_indexed_job(calls, monkeypatch):
  _set(
      monkeypatch,
      JOB_COMPLETION_INDEX=3,
      HOSTNAME="train-3",
      TKX_NUM_PROCESSES=4,
  )
  monkeypatch.setattr(
      multihost.socket,
      "getfqdn",
      lambda: "train-3.workers.default.svc.cluster.local",
  )
  multihost.initialize()
  assert calls == [
      _call("train-0.workers.default.svc.cluster.local:55527", 4, 3)
  ]


def test_kubernetes_jobset(calls, monkeypatch):
  _set(
      monkeypatch,
      JOBSET_NAME="tk",
      REPLICATED_JOB_NAME="workers",
      JOB_INDEX=1,
      JOB_COMPLETION_INDEX=1,
      REPLICATED_JOB_REPLICAS=2,
      TKX_NUM_PROCESSES=8,
  )
  monkeypatch.setattr(
      multihost.socket,
      "getfqdn",
      lambda: "tk-workers-1-1.tk.default.svc.cluster.local",
  )
  multihost.initialize()
  assert calls == [
      _call("tk-workers-0-0.tk.default.svc.cluster.local:55527", 8, 5)
  ]


class _Metadata(http.server.BaseHTTPRequestHandler):
  """Answers as a Cloud TPU VM's metadata server (attributes only, Metadata-Flavor required)."""

  attributes = {}

  def do_GET(self):  # noqa: N802
    prefix = "/computeMetadata/v1/instance/attributes/"
    key = self.path[len(prefix) :] if self.path.startswith(prefix) else None
    if self.headers.get("Metadata-Flavor") != "Google":
      self.send_response(403)
      self.end_headers()
      return
    if key not in self.attributes:
      self.send_response(404)
      self.end_headers()
      return
    body = self.attributes[key].encode()
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    del args


@pytest.fixture
def metadata_server(monkeypatch):
  server = http.server.HTTPServer(("127.0.0.1", 0), _Metadata)
  thread = threading.Thread(
      target=server.serve_forever, args=(0.05,), daemon=True
  )
  thread.start()
  monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_port}")
  monkeypatch.setattr(multihost, "tpu_chips_present", lambda: True)
  yield _Metadata.attributes
  server.shutdown()
  _Metadata.attributes = {}


def test_cloud_tpu_vm_pod_from_the_metadata_server(calls, metadata_server):
  metadata_server.update(
      {
          "agent-worker-number": "3",
          # Older VMs list name:id:ip triples.
          "worker-network-endpoints": (
              "a:0:10.1.0.5,b:1:10.1.0.6,c:2:10.1.0.7,d:3:10.1.0.8"
          ),
          "tpu-env": "ACCELERATOR_TYPE: 'v4-32'\nMEGASCALE_NUM_SLICES: '1'\n",
      }
  )
  multihost.initialize()
  assert calls == [_call("10.1.0.5:8482", 4, 3)]
  assert multihost.settings().environment == "Cloud TPU VM"


def test_single_host_tpu_vm_is_one_process(calls, metadata_server):
  metadata_server.update(
      {"agent-worker-number": "0", "worker-network-endpoints": "t1v-n-0"}
  )
  assert multihost.initialize() is False
  assert calls == []


@pytest.mark.parametrize(
    "variables,message",
    [
        (
            {"TKX_PROCESS_ID": 1},
            "TKX_\\* variables gives process_id but not coordinator_address, "
            "num_processes; set TKX_COORDINATOR_ADDRESS, TKX_NUM_PROCESSES",
        ),
        (
            {"TKX_NUM_PROCESSES": "two"},
            "TKX_NUM_PROCESSES='two' is not an integer",
        ),
        (
            {"TKX_NUM_PROCESSES": 2, "TKX_LOCAL_DEVICE_IDS": "0;1"},
            "TKX_LOCAL_DEVICE_IDS",
        ),
        (
            {
                "TKX_COORDINATOR_ADDRESS": "h:1",
                "TKX_NUM_PROCESSES": 2,
                "TKX_PROCESS_ID": 2,
            },
            r"process_id=2 is outside \[0, 2\)",
        ),
        (
            {"JOB_COMPLETION_INDEX": 1},
            "Kubernetes Indexed Job .* without TKX_NUM_PROCESSES",
        ),
        (
            {"TPU_WORKER_HOSTNAMES": "a,b"},
            "GKE TPU environment without TPU_WORKER_ID",
        ),
        (
            {
                "SLURM_JOB_ID": 1,
                "SLURM_PROCID": 0,
                "SLURM_STEP_ID": 0,
                "SLURM_LOCALID": 0,
            },
            "SLURM environment without SLURM_STEP_NODELIST, SLURM_STEP_NUM_TASKS",
        ),
        (
            {"OMPI_COMM_WORLD_RANK": 1},
            "Open MPI environment without OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK",
        ),
        (
            {
                "JOBSET_NAME": "tk",
                "REPLICATED_JOB_NAME": "w",
                "JOB_INDEX": 1,
                "JOB_COMPLETION_INDEX": 0,
                "TKX_NUM_PROCESSES": 4,
            },
            "JobSet Job 1 without REPLICATED_JOB_REPLICAS",
        ),
    ],
)
def test_half_configured_cluster_is_one_clear_error(
    calls, monkeypatch, variables, message
):
  _set(monkeypatch, **variables)
  with pytest.raises(multihost.ClusterConfigError, match=message):
    multihost.initialize()
  assert calls == []


_JOIN_PROBE = """
import json, sys
import jax
from jax._src import xla_bridge
from tkx import cli

class Joined(Exception):
  pass

def record(**kw):
  print("JOIN", sorted(kw.items()), "backends up:", xla_bridge.backends_are_initialized())
  raise Joined()  # stop here: what runs after joining is the command itself

jax.distributed.initialize = record
for argv in json.loads(sys.argv[1]):
  try:
    cli.run(argv)
  except Joined:
    pass
"""

_GIN_JOIN = [
    "--gin.multihost.initialize.coordinator_address='head:7'",
    "--gin.multihost.initialize.num_processes=2",
    "--gin.multihost.initialize.process_id=0",
]


def test_cli_joins_after_gin_and_before_any_device(calls, tmp_path):
  """Every model command: `multihost.initialize.*` gin bindings count, and no JAX backend exists yet."""
  import json
  import subprocess

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(
      os.environ,
      PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  commands = [
      ["model-info", "--gin_file=gin_configs/models/t5_1_1/tiny.gin"],
      [
          "train",
          "--gin_file=gin_configs/experiments/embedded_tiny.gin",
          f"--gin.MODEL_DIR='{tmp_path}'",
      ],
      ["infer", "--checkpoint", "c", "--input_file", "i", "--output_file", "o"],
      ["eval", "--checkpoint", "c"],
      ["generate", "--checkpoint", "c", "a prompt"],
  ]
  out = subprocess.run(
      [
          sys.executable,
          "-c",
          _JOIN_PROBE,
          json.dumps([command + _GIN_JOIN for command in commands]),
      ],
      cwd=repo,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  joined = (
      "JOIN [('cluster_detection_method', 'deactivate'), ('coordinator_address', 'head:7'), "
      "('initialization_timeout', 300), ('local_device_ids', None), ('num_processes', 2), "
      "('process_id', 0)] backends up: False"
  )
  assert out.stdout.count(joined) == len(commands), (
      out.stdout + out.stderr[-3000:]
  )


def test_serve_refuses_a_cluster_with_one_line(calls, monkeypatch, capsys):
  _set(
      monkeypatch,
      TKX_COORDINATOR_ADDRESS="h:1",
      TKX_NUM_PROCESSES=2,
      TKX_PROCESS_ID=0,
  )
  rc = cli.main(["serve", "--checkpoint", "/nonexistent", "--port", "0"])
  err = capsys.readouterr().err
  assert rc == 2
  assert (
      "tkx serve: error: tkx serve runs as one process, but this is TKX_* variables: process 0 of 2"
      in err
  )
  assert calls == []


def test_tpu_chips_without_a_metadata_server_is_one_process(calls, monkeypatch):
  with socket.socket() as sock:  # a port nothing listens on
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{port}")
  monkeypatch.setattr(multihost, "tpu_chips_present", lambda: True)
  assert multihost.initialize() is False
