"""One process of the agreed-restore check (launched by tests/test_multihost_checkpoints.py).

    python tests/multihost_checkpoint_worker.py --model_dir D --view_dir V --out result_<i>.json \
        --coordinator_address 127.0.0.1:PORT --num_processes 2 --process_id I

The processes save steps 1..3 of a small train state (params sharded over all
devices of both processes) into `model_dir` together. Then process 1 looks at the
run through `view_dir`, a copy in which the newest step's state metadata is
damaged (a host whose file system shows a half-copied or corrupt checkpoint),
while process 0 reads `model_dir`. Both call `restore_latest`, and write the
step they restored and a checksum of their parameter shards as JSON.
"""

import argparse
import json
import os
import shutil
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tkx import multihost, partitioning  # noqa: E402
from tkx.checkpoints import orbax_io  # noqa: E402
from tkx.train_state import TrainState  # noqa: E402

STEPS = (1, 2, 3)


def _global(value, sharding):
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding, lambda i: value[i])


def make_state(partitioner, step):
  """A TrainState whose params are sharded over every device (value = step), the rest replicated."""
  sharded = jax.sharding.NamedSharding(
      partitioner.mesh, jax.sharding.PartitionSpec(("data", "model"))
  )
  params = {"w": np.arange(16, dtype=np.float32) * step}
  state = TrainState(
      step=np.int32(step),
      params=params,
      opt_state=optax.adam(0.1).init(params),
      rng=np.asarray(jax.random.PRNGKey(step)),
  )
  shardings = jax.tree_util.tree_map(lambda _: partitioner.replicated, state)
  shardings = shardings.replace(params={"w": sharded})
  return jax.tree_util.tree_map(_global, state, shardings)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--view_dir", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  multihost.initialize(
      args.coordinator_address, args.num_processes, args.process_id
  )
  import logging

  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  partitioner = partitioning.Partitioner()
  manager = orbax_io.CheckpointManager(
      args.model_dir, save_every=1, async_save=False
  )
  for step in STEPS:
    manager.save(step, make_state(partitioner, step), {"at": step})
  manager.close()
  if jax.process_index() == 0:
    shutil.copytree(args.model_dir, args.view_dir)
    newest = os.path.join(
        args.view_dir, f"checkpoint_{STEPS[-1]}", "state", "_METADATA"
    )
    with open(newest, "w") as f:
      f.write('{"tree_metadata": {"par')  # cut off mid-write
  multihost.sync("view_ready")
  directory = args.model_dir if jax.process_index() == 0 else args.view_dir
  manager = orbax_io.CheckpointManager(directory, save_every=1)
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      make_state(partitioner, 0),
  )
  state, data_state = manager.restore_latest(abstract)
  manager.close()
  local = [
      np.asarray(shard.data).tolist()
      for shard in state.params["w"].addressable_shards
  ]
  with open(args.out, "w") as f:
    json.dump(
        {"step": int(state.step), "data_state": data_state, "local": local}, f
    )
  multihost.sync("checkpoint_worker_done")


if __name__ == "__main__":
  main()
