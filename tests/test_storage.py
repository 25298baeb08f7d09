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


def test_ni_checkout_and_source_cache_on_gcs(gcs, tmp_path, monkeypatch):
  """NI_DIR on gs://: the same rows as the local checkout; the source cache on gs:// too."""
  from test_data_common import small_checkout, toy_task
  from tkx.data import ni, source

  local = str(small_checkout(tmp_path / "ni"))
  remote = f"{gcs}/ni"
  storage.copy_tree(local, remote)
  cache = f"{gcs}/ni-cache"
  monkeypatch.setenv("TKX_NI_CACHE", cache)
  assert source.check_checkout(remote) == remote
  assert ni.split_tasks(remote, "default", "train") == ni.split_tasks(
      local, "default", "train"
  )

  def rows(ni_dir):
    source.clear_memory()
    src = source.source_for(
        ni_dir, "default", "train", max_num_instances_per_task=7
    )
    return [src.row(i)[1] for i in range(len(src))], src.task_names()

  assert rows(remote) == rows(local)
  cached = storage.listdir(
      cache
  )  # one pickle per checkout (the path is in the key)
  assert len(cached) == 2
  # A fresh process reads the cache: no task file is parsed.
  expected = rows(local)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(
        ni, "load_task", lambda *a: pytest.fail("read the JSON, not the cache")
    )
    assert rows(remote) == expected
  # A task rewritten in the bucket (a new object generation) gives another key.
  name = ni.read_split(remote, "default", "train")[0]
  task = toy_task(name)
  task["Instances"] = task["Instances"][::-1]
  with io_utils.atomic_write(ni.task_path(remote, name)) as f:
    json.dump(task, f)
  source.clear_memory()
  changed = source.source_for(
      remote, "default", "train", max_num_instances_per_task=7
  )
  assert len(storage.listdir(cache)) == 3
  assert changed.row(0)[1]["id"] != expected[0][0]["id"]
  # A task file missing from the bucket is named.
  storage.remove(ni.task_path(remote, name))
  with pytest.raises(ni.NIDataError, match=name):
    ni.split_tasks(remote, "default", "train")


def test_tfds_data_dir_on_gcs(gcs, tmp_path):
  """`prepare` from a gs:// checkout uploads to a gs:// data_dir (dataset_info.json last); the same records."""
  from test_data_common import small_checkout
  from tkx.data import tfds_ni

  ni_dir = str(small_checkout(tmp_path / "ni", num_train=2, instances=12))
  local, remote = str(tmp_path / "tfds"), f"{gcs}/tfds"
  tfds_ni.prepare(ni_dir, local, "default")
  storage.copy_tree(ni_dir, f"{gcs}/tfds-ni")
  uploaded = []
  real_copy = storage.copy
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(
        storage,
        "copy",
        lambda src, dst: (uploaded.append(dst), real_copy(src, dst)),
    )
    tfds_ni.prepare(f"{gcs}/tfds-ni", remote, "default")
  assert uploaded[-1].endswith("/dataset_info.json")
  assert all(
      p.startswith(f"{remote}/tkx_natural_instructions/") for p in uploaded
  )
  name = tfds_ni.builder_name("default")
  for split in ("train", "test"):
    assert list(tfds_ni.iter_split(name, remote, split)) == list(
        tfds_ni.iter_split(name, local, split)
    )
  with pytest.raises(ni_error(), match="tfds_data_dir"):
    tfds_ni.split_task_names(name, f"{gcs}/no-such-dir", "train")


def ni_error():
  from tkx.data import ni

  return ni.NIDataError


def test_t5x_initial_checkpoint_on_gcs(gcs, tmp_path):
  """A t5x-format INITIAL_CHECKPOINT_PATH on gs://: read by slice through tensorstore's gcs driver."""
  import jax
  import numpy as np

  from test_shard_wise_loading import PARAMS, _check, _target
  from tkx.checkpoints import directory, t5x_format

  if len(jax.devices()) < 8:
    pytest.skip("needs the 8 host CPU devices of tests/conftest.py")
  t5x_format.save_params(str(tmp_path / "t5x"), PARAMS, step=3)
  remote = f"{gcs}/t5x"
  storage.copy_tree(str(tmp_path / "t5x"), remote)
  abstract, shardings = _target()
  _check(
      directory.load_initial_params(remote, abstract, shardings),
      abstract,
      shardings,
  )
  whole = t5x_format.load_params(f"{remote}/checkpoint_3")
  jax.tree_util.tree_map(np.testing.assert_array_equal, whole, PARAMS)


def test_safetensors_read_by_slice_on_gcs(gcs, tmp_path):
  """A Hugging Face weight file on gs://: a slice costs its bytes (range reads through tkx.storage)."""
  import numpy as np
  from safetensors.numpy import save_file

  from tkx.checkpoints import hf

  kernel = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
  save_file({"w": kernel}, str(tmp_path / "model.safetensors"))
  storage.copy(
      str(tmp_path / "model.safetensors"), f"{gcs}/hf/model.safetensors"
  )
  file = hf.SafetensorsFile(f"{gcs}/hf/model.safetensors")
  np.testing.assert_array_equal(file.read("w", (slice(8, 16),)), kernel[8:16])
  np.testing.assert_array_equal(
      file.read("w", (slice(0, 64), slice(40, 48))), kernel[:, 40:48]
  )
  assert file.bytes_read == (8 * 48 + 64 * 8) * 4


def _tkx(*args):
  from tkx import cli

  assert cli.run(list(args)) == 0


def _train_eval_report(root):
  """`tkx train` -> `tkx eval` -> `tkx report` -> `tkx infer` with every path under `root`.

  NI_DIR is a copy of the embedded checkout under `root`.
  """
  from tkx.data import tasks

  for part in ("tasks", "splits"):
    storage.copy_tree(f"{tasks.EMBEDDED_NI_DIR}/{part}", f"{root}/ni/{part}")
  _tkx(
      "train",
      "--gin_file=gin_configs/experiments/embedded_tiny.gin",
      f"--gin.MODEL_DIR='{root}/run'",
      f"--gin.NI_DIR='{root}/ni'",
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
      "--ni_dir",
      f"{root}/ni",
      "--max_decode_length",
      "4",
  )
  eval_dir = f"{root}/run/eval_{EMBEDDED_TRAIN_TASK}"
  _tkx("report", f"{root}/run", eval_dir, "--output", f"{root}/r.html")
  with io_utils.atomic_write(f"{root}/in.jsonl") as f:
    for i, text in enumerate(("Definition: copy the word. Input: cat", "dog")):
      f.write(json.dumps({"id": i, "inputs": text}) + "\n")
  _tkx(
      "infer",
      "--checkpoint",
      f"{root}/run",
      "--input_file",
      f"{root}/in.jsonl",
      "--output_file",
      f"{root}/out.jsonl",
      "--max_decode_length",
      "4",
  )
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
        "infer": storage.read_text(f"{root}/out.jsonl"),
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
  assert remote["infer"] == local["infer"] and remote["infer"].count("\n") == 2
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
