"""`tkx infer` and `tkx eval` as two local `jax.distributed` processes x 2 CPU devices.

Both processes join (through TKX_* variables, as a launcher would set them),
decode together on global arrays (the Predictor feeds each host's rows of every
batch), and only the primary writes: one predictions file, identical to a
one-process run. Each process records the files it writes, so a second writer
would show.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from tkx import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROCESSES = 2
FAST = [
    "--max_decode_length",
    "5",
    "--max_input_length",
    "128",
    "--no_progress",
]

# Runs the commands of argv[1] (JSON) in one process, noting every file it writes.
_WORKER = """
import json, os, sys
from tkx import cli, io_utils, jsonl

written = []
write_jsonl, atomic_write = jsonl.write_jsonl, io_utils.atomic_write

def noting_write_jsonl(path, *args, **kwargs):
  written.append(os.path.basename(str(path)))
  return write_jsonl(path, *args, **kwargs)

def noting_atomic_write(path, *args, **kwargs):
  written.append(os.path.basename(str(path)))
  return atomic_write(path, *args, **kwargs)

jsonl.write_jsonl, io_utils.atomic_write = noting_write_jsonl, noting_atomic_write
for argv in json.loads(sys.argv[1]):
  rc = cli.main(argv)
  if rc:
    sys.exit(rc)
import jax
with open(sys.argv[2] + f"_{jax.process_index()}.json", "w") as f:
  json.dump({"process_count": jax.process_count(), "written": written}, f)
"""


def _commands(checkpoint, input_file, out_dir):
  return [
      [
          "infer",
          "--checkpoint",
          checkpoint,
          "--input_file",
          str(input_file),
          "--output_file",
          str(out_dir / "predictions.jsonl"),
          *FAST,
      ],
      [
          "eval",
          "--checkpoint",
          checkpoint,
          "--max_num_instances_per_task",
          "2",
          "--output_dir",
          str(out_dir / "eval"),
          *FAST,
      ],
  ]


def _read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.mark.multiprocess
def test_infer_and_eval_on_two_processes_write_once_what_one_process_writes(
    tiny_checkpoint, tmp_path
):
  input_file = tmp_path / "inputs.jsonl"
  input_file.write_text(
      "".join(
          json.dumps(
              {"id": i, "inputs": f"Definition: say {word}. Input: {word}"}
          )
          + "\n"
          for i, word in enumerate(
              ["yes", "no", "maybe", "red", "blue", "a b c"]
          )
      )
  )
  one, two = tmp_path / "one", tmp_path / "two"
  for argv in _commands(tiny_checkpoint, input_file, one):
    assert cli.main(argv) == 0

  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  procs = []
  for i in range(NUM_PROCESSES):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        TKX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        TKX_NUM_PROCESSES=str(NUM_PROCESSES),
        TKX_PROCESS_ID=str(i),
    )
    log = open(tmp_path / f"log_{i}.txt", "w")
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                json.dumps(_commands(tiny_checkpoint, input_file, two)),
                str(tmp_path / "worker"),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
  try:
    for proc in procs:
      proc.wait(timeout=400)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  logs = [(tmp_path / f"log_{i}.txt").read_text() for i in range(NUM_PROCESSES)]
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-4000:]

  workers = [
      json.loads((tmp_path / f"worker_{i}.json").read_text())
      for i in range(NUM_PROCESSES)
  ]
  assert [w["process_count"] for w in workers] == [NUM_PROCESSES] * 2
  # Only the primary writes; the other host writes nothing and prints nothing of it.
  assert "predictions.jsonl" in workers[0]["written"]
  assert "predicted_examples.jsonl" in workers[0]["written"]
  assert workers[1]["written"] == []
  assert "2 processes joined" in logs[0] and "joined" not in logs[1]
  assert "wrote 6 predictions" in logs[0] and "wrote" not in logs[1]

  predictions = _read_jsonl(two / "predictions.jsonl")
  assert len({p["prediction"] for p in predictions}) > 1  # a real comparison
  assert predictions == _read_jsonl(one / "predictions.jsonl")
  eval_two = _read_jsonl(two / "eval" / "predicted_examples.jsonl")
  assert len(eval_two) == 10  # 5 test tasks x 2
  assert eval_two == _read_jsonl(one / "eval" / "predicted_examples.jsonl")
  metrics = [
      json.loads((d / "eval" / "metrics.json").read_text())["overall"]
      for d in (one, two)
  ]
  assert metrics[0] == metrics[1]
