"""Checkpoints of a 2-process run (`jax.distributed` on localhost, 2 CPU devices each).

- One agreed restore step: a host that cannot read the newest checkpoint makes
  both restore the same older one (tests/multihost_checkpoint_worker.py).
"""

import json
import os

import pytest

from test_multihost_training import launch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT_WORKER = os.path.join(
    REPO_ROOT, "tests", "multihost_checkpoint_worker.py"
)


@pytest.mark.multiprocess
def test_hosts_agree_on_the_newest_checkpoint_all_can_read(tmp_path):
  logs = launch(
      lambda i: [
          CHECKPOINT_WORKER,
          "--model_dir",
          str(tmp_path / "run"),
          "--view_dir",
          str(tmp_path / "host1_view"),
          "--out",
          str(tmp_path / f"result_{i}.json"),
      ],
      tmp_path,
      timeout_s=180,
  )
  results = [
      json.loads((tmp_path / f"result_{i}.json").read_text()) for i in (0, 1)
  ]
  # Process 0 could read checkpoint_3, process 1 could not: both restored step 2.
  assert [r["step"] for r in results] == [2, 2]
  assert [r["data_state"] for r in results] == [{"at": 2}, {"at": 2}]
  shards = [v for r in results for shard in r["local"] for v in shard]
  assert sorted(shards) == [2.0 * k for k in range(16)]
  # Said once, by the primary; the host that could not read says why.
  skipped = "Skipping checkpoint(s) 3"
  assert logs[0].count(skipped) == 1 and skipped not in logs[1]
  assert (
      "checkpoint_3 on process 1: state/_METADATA: JSONDecodeError" in logs[1]
  )
  assert "Cannot read" not in logs[0]
