"""float16 decoding against float32 on a checkpoint, as is and with weights scaled to overflow float16.

T5's pre-norm layers make the float32 model invariant to scaling its residual
stream (token embeddings, attention `out` and MLP `wo` kernels) by a power of
two, so the scaled weights decode to the same tokens in float32. In float16 the
scaled stream overflows (65504) unless it is kept in float32
(`T5Config.residual_dtype`, what tkx does); `--unguarded` measures float16 with
the stream in float16 too (the peer: T5 without the guard).

Prints the fraction of test inputs of the embedded sample whose greedy tokens
equal float32's, for float16 on the checkpoint's weights and on the scaled ones.

    python bench/float16.py --checkpoint DIR [--scale 65536] [--unguarded] [--num_examples N]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

STREAM_WRITERS = ("token_embedder/embedding", "out/kernel", "wo/kernel")


def _scaled(params, scale):
  import jax

  def scale_leaf(path, x):
    name = "/".join(k.key for k in path)
    return x * np.float32(scale) if name.endswith(STREAM_WRITERS) else x

  return jax.tree_util.tree_map_with_path(scale_leaf, params)


def _test_inputs(vocabulary, length, limit):
  import seqio

  from tkx.data import tasks

  names = sorted(
      n
      for n in seqio.TaskRegistry.names()
      if n.startswith("ni_default_test_def_pos2_task")
  )
  examples = [
      e
      for n in names
      for e in tasks.iter_examples(tasks.task_spec(n), vocabulary)
  ][:limit]
  rows = []
  for example in examples:
    ids = vocabulary.encode(example["inputs"])[: length - 1] + [1]
    rows.append(ids + [0] * (length - len(ids)))
  return np.array(rows, np.int32)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--scale", type=float, default=2.0**16)
  parser.add_argument("--unguarded", action="store_true")
  parser.add_argument("--num_examples", type=int, default=1000)
  parser.add_argument("--max_input_length", type=int, default=256)
  parser.add_argument("--max_decode_length", type=int, default=32)
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp

  import common  # bench/common.py (the script's folder is on sys.path)
  from tkx.checkpoints import directory
  from tkx.models import config as config_lib

  if args.unguarded:
    config_lib.T5Config.residual_dtype = property(
        lambda self: jnp.dtype(self.dtype)
    )
  loaded = directory.load(args.checkpoint)
  params = jax.device_get(loaded.params)
  tokens = _test_inputs(
      loaded.vocabulary, args.max_input_length, args.num_examples
  )
  batch = {
      "encoder_input_tokens": tokens,
      "decoder_input_tokens": np.zeros(
          (len(tokens), args.max_decode_length), np.int32
      ),
  }

  def greedy(dtype, weights):
    model = type(loaded.model)(
        type(loaded.model.module)(loaded.config.replace(dtype=dtype)),
        loaded.vocabulary,
        loaded.vocabulary,
    )
    return np.asarray(
        model.predict_batch(
            weights, batch, max_decode_length=args.max_decode_length
        )
    )

  reference = greedy("float32", params)
  scaled = _scaled(params, args.scale)
  same = lambda out: float((out == reference).all(axis=1).mean())  # noqa: E731
  print(f"CPU: {common.cpu_name()}; {args.checkpoint}")
  print(f"{len(tokens)} test inputs, greedy, {args.max_decode_length} tokens")
  print(
      f"float32, weights x {args.scale:g}: {same(greedy('float32', scaled)):.1%} equal"
  )
  kind = "unguarded" if args.unguarded else "tkx"
  print(f"float16 ({kind}): {same(greedy('float16', params)):.1%} equal")
  print(
      f"float16 ({kind}), weights x {args.scale:g}: "
      f"{same(greedy('float16', scaled)):.1%} equal"
  )


if __name__ == "__main__":
  main()
