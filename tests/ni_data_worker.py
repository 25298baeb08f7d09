"""One `jax.distributed` process reading the NI training stream; writes its rows as JSON.

Run by tests/test_data_pipeline.py (two processes x 4 CPU devices): for each
mesh it takes this host's data shard from the partitioner, as `tkx train`
does, and records the global example indices and encoder rows of its batches.
"""

import argparse
import json

import jax

from tkx import multihost
from tkx import partitioning
from tkx.data import pipeline
from tkx.data import vocab

MIXTURE = "ni_default_train_def_pos2"
LENGTHS = {"inputs": 64, "targets": 8}
GLOBAL_BATCH, NUM_BATCHES, DATA_SEED = 8, 3, 5


def read_batches(shard_id: int, num_shards: int) -> dict:
  train_input = pipeline.train_input(
      MIXTURE,
      ni_dir=None,
      vocabulary=vocab.get_vocabulary(),
      feature_lengths=LENGTHS,
      batch_size=GLOBAL_BATCH,
      data_seed=DATA_SEED,
  )
  stream = pipeline.NIStream(
      train_input.stream.spec,
      train_input.stream.vocabulary,
      LENGTHS,
      data_seed=DATA_SEED,
      shard_id=shard_id,
      num_shards=num_shards,
  )
  local = GLOBAL_BATCH // num_shards
  examples = stream.open_stream(0)
  indices = [next(examples)["index"] for _ in range(NUM_BATCHES * local)]
  batches = pipeline.padded_batches(
      stream.open_stream, batch_size=local, feature_lengths=LENGTHS
  )
  rows, states = [], []
  for _ in range(NUM_BATCHES):
    batch, state = next(batches)
    rows.append(batch["encoder_input_tokens"].tolist())
    states.append(state)
  return {"indices": indices, "rows": rows, "states": states}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  multihost.initialize(
      args.coordinator_address, args.num_processes, args.process_id
  )
  result = {}
  for data, model in ((8, 1), (2, 4), (1, 8)):
    partitioner = partitioning.Partitioner(
        data_axis_size=data, model_axis_size=model
    )
    info = partitioner.get_data_shard_info()
    result[f"{data}x{model}"] = dict(
        read_batches(info.index, info.num_shards),
        shard=[info.index, info.num_shards],
    )
  with open(args.out, "w") as f:
    json.dump(result, f)
  multihost.sync("ni_data_worker_done")
  print(f"process {jax.process_index()} done", flush=True)


if __name__ == "__main__":
  main()
