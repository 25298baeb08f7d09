"""Data pipeline throughput: NI checkout -> packed, tokenized encoder-decoder batches.

    python bench/data_pipeline.py [--ni_dir ../shared/natural-instructions] [--encoding def_pos2]
        [--split train] [--batch_size 8] [--max_batches 400] [--max_tasks N] [--vocab PATH]
        [--quick] [--smoke]

Measures `seqio.get_dataset` over the `ni_<track>_<split>_<encoding>` mixture with
`EncDecFeatureConverter(pack=True)` at Tk-Instruct's lengths (inputs 1024, targets
128) and reports NI examples per second (counted from the packed segment ids),
separately for building the pipeline (reading, encoding the task files) and for
steady-state batches. The named peer, measured in the same run, is the same text
formatting and tokenization done in plain Python with no tf.data and no packing
(what a Tk-Instruct-style collator does per example) over the same instances.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

LENGTHS = {"inputs": 1024, "targets": 128}


def _examples_in_batch(batch) -> int:
  """Packed rows hold several examples; each has its own non-zero segment id."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  segments = batch["encoder_segment_ids"]
  return int(sum(len(np.unique(row[row > 0])) for row in segments))


def bench_seqio(
    mixture: str, split: str, batch_size: int, max_batches: int, seed: int
):
  import seqio  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  dataset = seqio.get_dataset(
      mixture,
      task_feature_lengths=LENGTHS,
      dataset_split=split,
      shuffle=True,
      num_epochs=1,
      seed=seed,
      batch_size=batch_size,
      feature_converter=seqio.EncDecFeatureConverter(pack=True),
  )
  iterator = dataset.as_numpy_iterator()
  first = next(iterator)
  build_s = time.perf_counter() - start
  examples, batches, tokens = 0, 0, 0
  start = time.perf_counter()
  for batch in iterator:
    examples += _examples_in_batch(batch)
    tokens += int(
        (batch["encoder_input_tokens"] > 0).sum()
        + (batch["decoder_target_tokens"] > 0).sum()
    )
    batches += 1
    if batches >= max_batches:
      break
  steady_s = time.perf_counter() - start
  shape = {k: v.shape for k, v in first.items()}
  return dict(
      build_s=build_s,
      first_batch_examples=_examples_in_batch(first),
      examples=examples,
      batches=batches,
      tokens=tokens,
      steady_s=steady_s,
      shape=shape,
  )


def bench_python_peer(specs, vocabulary, max_examples: int):
  """Tk-Instruct-collator style: format + tokenize each example in Python, no packing."""
  from tkx.data import encodings as enc  # pylint: disable=g-import-not-at-top

  token_count, truncate = enc.vocabulary_token_fns(vocabulary)
  count = 0
  start = time.perf_counter()
  for spec in specs:
    task, instances = spec.load()
    for instance in instances:
      example = enc.make_example(
          task,
          instance,
          spec.encoding,
          split=spec.split,
          seed=spec.seed,
          max_source_length=spec.max_source_length,
          token_count=token_count,
          truncate=truncate,
      )
      vocabulary.encode(example["inputs"])[: LENGTHS["inputs"] - 1]
      vocabulary.encode(example["targets"])[: LENGTHS["targets"] - 1]
      count += 1
      if count >= max_examples:
        return count, time.perf_counter() - start
  return count, time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--ni_dir",
      default=os.path.join(
          os.path.dirname(REPO), "shared", "natural-instructions"
      ),
  )
  parser.add_argument("--track", default="default")
  parser.add_argument("--split", default="train")
  parser.add_argument("--encoding", default="def_pos2")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument(
      "--max_batches",
      type=int,
      default=400,
      help="steady-state batches to time",
  )
  parser.add_argument(
      "--max_tasks",
      type=int,
      default=0,
      help="use only the first N tasks (0: all)",
  )
  parser.add_argument(
      "--vocab",
      default=None,
      help="SentencePiece model (default: the embedded one)",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
      "--quick", action="store_true", help="10 tasks, 20 timed batches"
  )
  parser.add_argument(
      "--smoke",
      action="store_true",
      help="a few seconds' run to check the script works (tests); its figures mean nothing",
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.max_tasks, args.max_batches = args.max_tasks or 10, 20
  if args.smoke:
    args.max_tasks, args.max_batches = 2, 2

  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from tkx.data import tasks, vocab  # pylint: disable=g-import-not-at-top

  # SeqIO warns once per task that uncached function sources shuffle poorly on restarts.
  absl_logging.set_verbosity(absl_logging.ERROR)

  vocabulary = vocab.get_vocabulary(args.vocab)
  start = time.perf_counter()
  tasks.register_ni(
      args.ni_dir,
      tracks=(args.track,),
      encodings=(args.encoding,),
      splits=(args.split,),
      vocabulary=vocabulary,
      prefix="bench",
      skip_missing=True,
  )
  register_s = time.perf_counter() - start
  mixture = tasks.mixture_name(args.track, args.split, args.encoding, "bench")
  # The mixture is one task over the split's source; the per-task tasks are its rows.
  per_task = [
      tasks.task_name(args.track, args.split, args.encoding, n, "bench")
      for n in tasks.ni.split_tasks(
          args.ni_dir, args.track, args.split, skip_missing=True
      )
  ]
  if args.max_tasks:
    per_task = per_task[: args.max_tasks]
    names = per_task
    mixture += "_subset"
    if mixture in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(mixture)
    seqio.MixtureRegistry.add(
        mixture, [(n, tasks.instance_count_rate) for n in names]
    )
  num_tasks = len(seqio.get_mixture_or_task(mixture).tasks)
  print(
      f"registered {mixture}: {num_tasks} tasks in {register_s:.2f} s (split files only)"
  )

  r = bench_seqio(
      mixture, args.split, args.batch_size, args.max_batches, args.seed
  )
  print(
      f"seqio pipeline: built and first batch in {r['build_s']:.1f} s "
      f"(reads and encodes every task file); batch shapes {r['shape']}"
  )
  print(
      f"seqio packed batches (EncDecFeatureConverter pack=True, inputs 1024 / targets 128, "
      f"batch {args.batch_size}): {r['examples'] / r['steady_s']:.0f} examples/s, "
      f"{r['batches'] / r['steady_s']:.1f} batches/s, {r['tokens'] / r['steady_s']:.0f} non-pad tokens/s, "
      f"{r['examples'] / max(r['batches'], 1):.1f} examples per packed batch "
      f"({r['examples']} examples, {r['batches']} batches in {r['steady_s']:.1f} s)"
  )

  total = r["first_batch_examples"] + r["examples"]
  print(
      f"seqio end to end (build + batches): {total / (r['build_s'] + r['steady_s']):.0f} examples/s "
      f"({total} examples in {r['build_s'] + r['steady_s']:.1f} s)"
  )

  specs = [tasks.task_spec(n) for n in per_task]
  count, seconds = bench_python_peer(
      specs,
      vocabulary,
      max_examples=max(r["examples"], 20 if args.smoke else 500),
  )
  print(
      f"peer, plain-Python Tk-Instruct-style collation (format + tokenize, no tf.data, no packing): "
      f"{count / seconds:.0f} examples/s ({count} examples in {seconds:.1f} s)"
  )


if __name__ == "__main__":
  main()
