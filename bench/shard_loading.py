"""Peak host memory of each of 2 processes initialising a model from a checkpoint, against the model's size.

    python bench/shard_loading.py            # T5 1.1 small, 2 processes x 2 CPU devices
    python bench/shard_loading.py --smoke    # the tiny model, one reader
    python bench/shard_loading.py --checkpoint_dir /tmp/ck --readers "shard-wise hf"  # one reader, checkpoints kept

Writes a random-valued checkpoint of the model (tkx/orbax, t5x and Hugging Face
safetensors formats), then starts 2 local `jax.distributed` processes, 2 CPU devices each, per
reader; the parameters are sharded 4 ways, so each process
holds half of them (`Partitioner(shard_params_over_data=True)`: t5x's 2-D parameter
partitioning, `embed` on the data axis). Each process reports its peak RSS growth while loading
(Linux: the peak is reset to the current RSS before, `VmHWM` after less `VmRSS` before;
on the CPU the device buffers are host memory too, so its own half is part of it) and the bytes of its shards. Readers:

- `shard-wise tkx` / `shard-wise t5x` / `shard-wise hf`: `directory.load_initial_params`
  (each process reads only its devices' slices, cast as read; freed read buffers go
  back to the OS, `io_utils.return_large_buffers_to_os`);
- `whole t5x` (the peer, what tkx did before): every process reads the whole
  params as numpy, casts, then places its slices (glibc's default allocator settings).

`held after` is the growth still resident when loading is done. The tkx and t5x checkpoints are written with chunks of at most 4 MiB (`CHUNK_BYTES`): on T5
small that is what t5x's 64 MiB cap (also `orbax_io.save_params`'s) is on a 16x
larger model; a reader decodes whole chunks.

Printed: per reader and process, peak growth and own shard in MiB, and growth /
model size (about 0.5 shard-wise: each process reads its share; 1.5 or more whole).
"""

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on sys.path)

READERS = ("shard-wise tkx", "shard-wise t5x", "shard-wise hf", "whole t5x")
# Stored chunk cap: 4 MiB on T5 small is what t5x's 64 MiB is on a 16x larger model
# (a reader decodes whole chunks, so chunks as large as the arrays defeat slicing).
CHUNK_BYTES = 4 * 2**20


def _config(size):
  from tkx import gin_utils

  return gin_utils.load_config_from_gin(
      [f"gin_configs/models/t5_1_1/{size}.gin"], ()
  )


def _model(size):
  from tkx.models import models, network

  return models.EncoderDecoderModel(network.Transformer(_config(size)))


def _abstract(model):
  import jax

  from tkx.models import models

  shapes = models.init_input_shapes()
  return jax.eval_shape(
      lambda r: model.get_initial_variables(r, shapes), jax.random.PRNGKey(0)
  )["params"]


def write_checkpoints(size, out_dir):
  """Random float32 params of the model in the three formats (once per `out_dir`); returns their bytes."""
  import jax
  import numpy as np

  from tkx.checkpoints import hf, orbax_io, t5x_format

  if os.path.isdir(os.path.join(out_dir, "hf")):  # written by an earlier run
    return sum(
        int(np.prod(a.shape)) * 4
        for a in jax.tree_util.tree_leaves(_abstract(_model(size)))
    )
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda a: rng.standard_normal(a.shape, np.float32),
      _abstract(_model(size)),
  )
  orbax_io.save_params(
      os.path.join(out_dir, "tkx"), params, chunk_byte_size=CHUNK_BYTES
  )
  t5x_format.save_params(
      os.path.join(out_dir, "t5x"),
      params,
      step=0,
      target_chunk_bytes=CHUNK_BYTES,
  )
  hf.export_hf(_config(size), params, os.path.join(out_dir, "hf"))
  return sum(x.nbytes for x in jax.tree_util.tree_leaves(params))


def _status_bytes(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise SystemExit(f"/proc/self/status has no {field}")


def _reset_peak_rss():
  """Sets this process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5)."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def worker(args):
  """One process: load the checkpoint with `args.reader`, print its JSON line."""
  from tkx import multihost

  multihost.initialize(
      args.coordinator_address, args.num_processes, args.process_id
  )
  import jax

  from tkx import partitioning
  from tkx.checkpoints import directory, t5x_format

  model = _model(args.size)
  abstract = _abstract(model)
  partitioner = partitioning.Partitioner(shard_params_over_data=True)
  shardings = partitioner.logical_to_sharding(
      model.params_logical_axes(
          __import__("tkx.models.models").models.models.init_input_shapes()
      )
  )
  jax.block_until_ready(jax.numpy.zeros(1))
  kind = args.reader.split()[-1]
  path = os.path.join(args.checkpoints, kind)
  _reset_peak_rss()
  before = _status_bytes("VmRSS")
  if args.reader.startswith("shard-wise"):
    params = directory.load_initial_params(path, abstract, shardings)
  else:  # the peer: the whole params as numpy on every process, then placed
    host = directory._check_and_cast(  # pylint: disable=protected-access
        t5x_format.load_params(path), abstract, path
    )
    params = directory._from_slices(host, abstract, shardings)  # pylint: disable=protected-access
  jax.block_until_ready(params)
  own = sum(
      shard.data.nbytes
      for leaf in jax.tree_util.tree_leaves(params)
      for shard in leaf.addressable_shards
  )
  print(
      json.dumps(
          {
              "process": jax.process_index(),
              "growth": _status_bytes("VmHWM") - before,
              "held": _status_bytes("VmRSS") - before,
              "own_shards": own,
          }
      ),
      flush=True,
  )
  multihost.sync("shard_loading_done")


def _free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def run_reader(reader, size, checkpoints):
  """Starts the 2 processes of one reader; returns their JSON results."""
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="3",
      PYTHONPATH=common.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  address = f"127.0.0.1:{_free_port()}"
  procs = [
      subprocess.Popen(
          [sys.executable, os.path.abspath(__file__), "--worker", reader]
          + ["--size", size, "--checkpoints", checkpoints]
          + ["--coordinator_address", address, "--num_processes", "2"]
          + ["--process_id", str(i)],
          cwd=common.REPO,
          env=env,
          stdout=subprocess.PIPE,
          text=True,
      )
      for i in range(2)
  ]
  results = []
  for proc in procs:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode:
      raise SystemExit(f"{reader}: a worker failed (rc {proc.returncode})")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    results.append(json.loads(lines[-1]))
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--smoke", action="store_true", help="tiny model, seconds"
  )
  parser.add_argument("--size", default="small", help="t5_1_1 size (gin file)")
  parser.add_argument(
      "--readers", default=",".join(READERS), help="comma-separated"
  )
  parser.add_argument(
      "--checkpoint_dir",
      help="write the checkpoints here once and reuse them (default: a temporary dir)",
  )
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--checkpoints", help=argparse.SUPPRESS)
  parser.add_argument("--coordinator_address", help=argparse.SUPPRESS)
  parser.add_argument("--num_processes", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--process_id", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    args.reader = args.worker
    return worker(args)
  size = "tiny" if args.smoke else args.size
  with contextlib.ExitStack() as stack:
    out_dir = args.checkpoint_dir or stack.enter_context(
        tempfile.TemporaryDirectory()
    )
    common.log(f"writing t5_1_1 {size} checkpoints")
    model_bytes = write_checkpoints(size, out_dir)
    mib = 2**20
    print(
        f"t5_1_1 {size}: {model_bytes / mib:.1f} MiB of float32 params, 2 processes x 2 "
        "CPU devices, params sharded over the 4-way data axis (FSDP: each process "
        f"holds half), {common.cpu_name()}"
    )
    for reader in READERS[1:2] if args.smoke else args.readers.split(","):
      common.log(f"loading with {reader}")
      for r in run_reader(reader, size, out_dir):
        print(
            f"  {reader:15s} process {r['process']}: peak RSS +{r['growth'] / mib:7.1f} MiB "
            f"(own shards {r['own_shards'] / mib:6.1f} MiB, held after {r['held'] / mib:6.1f}) = "
            f"{r['growth'] / model_bytes:.2f} x the model"
        )
  return 0


if __name__ == "__main__":
  sys.exit(main())
