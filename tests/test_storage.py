"""Remote storage (tkx.storage): every path on gs:// against a real GCS emulator started here.

The emulator is fake-gcs-server (tests/gcs_emulator.py); tkx processes get only
STORAGE_EMULATOR_HOST and hand it on to tensorstore and gcsfs themselves.
"""

import json
import os
import subprocess
import sys

import pytest

from gcs_emulator import GcsEmulator
from test_readme import EMBEDDED_TRAIN_TASK
from tkx import io_utils, storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def emulator():
  server = GcsEmulator()
  server.start()
  server.create_bucket("tkx")
  yield server
  server.stop()


@pytest.fixture
def gcs(emulator, monkeypatch):
  """This process's storage clients pointed at the emulator (as `import tkx` does in a fresh process)."""
  monkeypatch.setenv(storage.EMULATOR_VARIABLE, emulator.url)
  derived = storage.configure_environment(
      {storage.EMULATOR_VARIABLE: emulator.url}
  )
  for name, value in derived.items():  # restored after the test
    monkeypatch.setenv(name, value)
  import gcsfs  # after the variables: it reads them on import

  gcsfs.GCSFileSystem.clear_instance_cache()
  yield "gs://tkx"
  gcsfs.GCSFileSystem.clear_instance_cache()


def test_configure_environment_hands_the_emulator_on_and_keeps_user_values():
  environ = {"STORAGE_EMULATOR_HOST": "localhost:9023", "EPATH_USE_TF": "1"}
  added = storage.configure_environment(environ)
  assert environ["TENSORSTORE_GCS_HTTP_URL"] == "http://localhost:9023"
  assert environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
  assert "GOOGLE_AUTH_TOKEN_FOR_TESTING" in environ
  assert environ["EPATH_USE_TF"] == "1" and "EPATH_USE_TF" not in added
  assert storage.configure_environment({}) == {"EPATH_USE_TF": "false"}


def test_remote_paths_keep_their_scheme():
  assert storage.normpath("gs://b/run/./x/../y/") == "gs://b/run/y"
  assert storage.abspath("gs://b/run") == "gs://b/run"
  assert storage.abspath("rel") == os.path.abspath("rel")
  assert storage.is_remote("gs://b") and not storage.is_remote("/tmp/x")


def _check_atomic_write(path):
  with io_utils.atomic_write(path) as f:
    f.write("good")
  with pytest.raises(RuntimeError):
    with io_utils.atomic_write(path) as f:
      f.write("half of a new file")
      f.flush()
      raise RuntimeError("killed mid-write")
  assert storage.read_text(path) == "good"
  with io_utils.atomic_write(path) as f:
    f.write("better")
  assert storage.read_text(path) == "better"


def test_atomic_write_local(tmp_path):
  _check_atomic_write(str(tmp_path / "sub" / "metrics.json"))
  assert os.listdir(tmp_path / "sub") == ["metrics.json"]  # no temporary left


def test_atomic_write_gcs(gcs):
  _check_atomic_write(f"{gcs}/atomic/metrics.json")
  assert storage.listdir(f"{gcs}/atomic") == ["metrics.json"]


def test_gin_file_on_gcs_parses(gcs):
  from tkx import gin_utils

  path = f"{gcs}/gin/size.gin"
  with io_utils.atomic_write(path) as f:
    f.write("include 'gin_configs/models/t5_1_1/tiny.gin'\n")
    f.write("network.T5Config.emb_dim = 48\n")
  assert gin_utils.resolve_gin_file(path) == path
  assert gin_utils.load_config_from_gin([path], []).emb_dim == 48


def _tkx(*args):
  from tkx import cli

  assert cli.run(list(args)) == 0


def _train_eval_report(root):
  """`tkx train` -> `tkx eval` -> `tkx report` with every path under `root`."""
  _tkx(
      "train",
      "--gin_file=gin_configs/experiments/embedded_tiny.gin",
      f"--gin.MODEL_DIR='{root}/run'",
      "--gin.TRAIN_STEPS=2",
      "--gin.BATCH_SIZE=8",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 16}",
      "--gin.EVAL_EVERY=None",
      "--gin.train_configs.EvaluationConfig.generation_eval_fn=None",
  )
  _tkx(
      "eval",
      "--checkpoint",
      f"{root}/run",
      "--mixture",
      EMBEDDED_TRAIN_TASK,
      "--max_decode_length",
      "4",
  )
  eval_dir = f"{root}/run/eval_{EMBEDDED_TRAIN_TASK}"
  _tkx("report", f"{root}/run", eval_dir, "--output", f"{root}/r.html")
  return eval_dir


def test_train_eval_report_on_gcs_same_as_local(emulator, gcs, tmp_path):
  from tkx.checkpoints import orbax_io

  outputs = {}
  # In this process (one compile for both); local first, then the same on gs://.
  for root in (str(tmp_path), f"{gcs}/train"):
    eval_dir = _train_eval_report(root)
    outputs[root] = {
        "params": orbax_io.load_params(f"{root}/run"),
        "metrics": json.loads(storage.read_text(f"{eval_dir}/metrics.json")),
        "predictions": storage.read_text(
            f"{eval_dir}/predicted_examples.jsonl"
        ),
        "report": storage.read_text(f"{root}/r.html"),
        "files": sorted(storage.listdir(f"{root}/run")),
    }
  local, remote = outputs.values()
  assert remote["files"] == local["files"]
  assert "checkpoint_2" in remote["files"] and "model.gin" in remote["files"]
  import jax
  import numpy as np

  jax.tree_util.tree_map(
      np.testing.assert_array_equal, remote["params"], local["params"]
  )
  assert remote["predictions"] == local["predictions"]
  for key in ("overall", "per_task"):
    assert remote["metrics"].get(key) == local["metrics"].get(key)
  # The page shows the training loss read back from the uploaded event files.
  assert 'id="chart-loss-0"' in remote["report"]
  assert remote["report"].count("<figure") == local["report"].count("<figure")
  # A fresh process given only STORAGE_EMULATOR_HOST reads the checkpoint (tensorstore's gcs
  # driver and gcsfs set up by `import tkx`).
  read = subprocess.run(
      [
          sys.executable,
          "-c",
          "import sys, jax, numpy as np; from tkx.checkpoints import orbax_io; "
          "p = orbax_io.load_params(sys.argv[1]); "
          "print(sum(float(np.abs(x).sum()) for x in jax.tree_util.tree_leaves(p)))",
          f"{gcs}/train/run",
      ],
      env={**emulator.environ(), "PYTHONPATH": REPO},
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert read.returncode == 0, read.stderr[-3000:]
  expected = sum(
      float(np.abs(x).sum()) for x in jax.tree_util.tree_leaves(local["params"])
  )
  assert float(read.stdout.split()[-1]) == pytest.approx(expected, rel=1e-6)
