"""Weight-only int8 against float32, same inputs, same run: identical tokens, ROUGE-L, examples/s.

    python bench/int8_quality.py --checkpoint /tmp/tkx_tiny    # the main job's checkpoint (docs/training.md)
    python bench/int8_quality.py --random t5_1_1/small         # a random T5 1.1 small (seeded)
    python bench/int8_quality.py --smoke                       # seconds: checks the script runs

Decodes the test split of an NI checkout (default: the embedded sample's
`ni_default_test_def_pos2`, 5 tasks, 239 instances) greedily with the float32
model and with the same model quantized by `--quantize int8`'s function
(`tkx.models.quantize`: int8 kernels, per-output-channel scales), on one
device. Prints the share of inputs whose output tokens are identical, ROUGE-L
and exact match of each (NI metrics, max over references), their difference,
examples/s of each (compilation excluded) and the parameter bytes. Exits 1 when
fewer than 95% of the outputs are identical or ROUGE-L moves by more than 0.5.
"""

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIXTURE = "ni_default_test_def_pos2"
IDENTICAL_AT_LEAST = 0.95
ROUGE_L_WITHIN = 0.5


def cpu_name() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in out.splitlines():
      if line.startswith("Model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--checkpoint", help="a tkx checkpoint dir")
  source.add_argument(
      "--random",
      metavar="FAMILY/SIZE",
      help="a randomly initialised model of gin_configs/models/FAMILY/SIZE.gin "
      "(embedded vocabulary), e.g. t5_1_1/small",
  )
  parser.add_argument(
      "--ni_dir",
      default=None,
      help="NI checkout (default: the embedded tasks/)",
  )
  parser.add_argument("--mixture", default=MIXTURE)
  parser.add_argument(
      "--max_decode_length",
      type=int,
      default=127,
      help="default 127 (Tk-Instruct's)",
  )
  parser.add_argument("--max_input_length", type=int, default=1024)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument(
      "--num_examples",
      type=int,
      default=None,
      help="the first N inputs (default all)",
  )
  parser.add_argument("--seed", type=int, default=0, help="--random's seed")
  parser.add_argument(
      "--smoke",
      action="store_true",
      help="a random tiny model, 8 inputs, 4 tokens: seconds (its figures mean nothing)",
  )
  args = parser.parse_args(argv)
  if args.smoke:
    args.checkpoint, args.random = None, "t5_1_1/tiny"
    args.num_examples, args.max_decode_length, args.batch_size = 8, 4, 8
    args.max_input_length = 256
  elif not args.checkpoint and not args.random:
    parser.error("give --checkpoint, --random FAMILY/SIZE or --smoke")
  return args


def load_model(args, partitioner):
  """(name, model, float params, vocabulary)."""
  import jax

  from tkx import gin_utils
  from tkx.checkpoints import directory
  from tkx.models import base

  if args.checkpoint:
    loaded = directory.load(args.checkpoint, partitioner=partitioner)
    name = f"{loaded.path} (step {loaded.step})"
    return name, loaded.model, loaded.params, loaded.vocabulary
  model = gin_utils.get_model_from_gin(
      [f"gin_configs/models/{args.random}.gin"],
      [
          "vocab.get_vocabulary.path = None",
          "vocab.get_vocabulary.extra_ids = 0",
          "network.T5Config.dtype = 'float32'",
      ],
  )
  params = jax.jit(
      lambda r: model.get_initial_variables(r, base.init_input_shapes())
  )(jax.random.PRNGKey(args.seed))["params"]
  return (
      f"random {args.random} (seed {args.seed})",
      model,
      params,
      model.output_vocabulary,
  )


def test_inputs(args, vocabulary):
  """(NI task names, [(key, ids)]) of the mixture's test instances."""
  from tkx import infer
  from tkx.data import pipeline

  pipeline.register_ni_for(
      args.mixture, args.ni_dir, vocabulary, args.max_input_length
  )
  lengths = {"inputs": args.max_input_length, "targets": 128}
  out = []
  for task in infer.ni_subtasks(args.mixture):
    out += [
        (task.name, k, ids)
        for k, ids in infer.task_inputs(task, task.splits[0], lengths)
    ]
  return out[: args.num_examples] if args.num_examples else out


def decode(model, params, inputs, args, partitioner):
  """(outputs, seconds): compile on a first batch, then time the whole set."""
  from tkx import infer

  predictor = infer.Predictor(
      model,
      params,
      partitioner=partitioner,
      batch_size=args.batch_size,
      decode_config=infer.DecodeConfig(
          max_decode_length=args.max_decode_length
      ),
      input_buckets=infer.buckets_up_to(args.max_input_length),
  )
  buckets = {
      infer.bucket_length(len(ids), predictor.input_buckets): ids
      for ids in inputs
  }
  predictor.predict_ids(
      list(buckets.values()), progress=False
  )  # compiles each bucket
  start = time.perf_counter()
  outputs = predictor.predict_ids(inputs, progress=False, log_plan=False)
  return outputs, time.perf_counter() - start


def scores(rows, outputs, vocabulary):
  from tkx import infer
  from tkx.metrics import ni_metrics

  texts = infer.decode_ids(vocabulary, outputs)
  records = []
  for (task_name, key, _), text in zip(rows, texts):
    records += infer.records_for_task(task_name, [key], [text])
  return ni_metrics.score_predictions(records)["overall"]


def main(argv=None):
  args = parse_args(argv)
  import jax

  from tkx import partitioning
  from tkx.models import quantize

  partitioner = partitioning.Partitioner(
      num_partitions=1, devices=jax.devices()[:1]
  )
  name, model, params, vocabulary = load_model(args, partitioner)
  rows = test_inputs(args, vocabulary)
  inputs = [ids for _, _, ids in rows]
  quantized = quantize.quantize_model(model)
  qparams = quantize.quantize_params(params, quantized, partitioner)
  float_out, float_s = decode(model, params, inputs, args, partitioner)
  int8_out, int8_s = decode(quantized, qparams, inputs, args, partitioner)
  identical = sum(a == b for a, b in zip(float_out, int8_out)) / len(inputs)
  first_token = sum(a[:1] == b[:1] for a, b in zip(float_out, int8_out)) / len(
      inputs
  )
  # Where greedy paths part: the first differing position of each differing pair.
  splits = [
      next(
          (k for k, (x, y) in enumerate(zip(a, b)) if x != y),
          min(len(a), len(b)),
      )
      for a, b in zip(float_out, int8_out)
      if a != b
  ]
  float_scores = scores(rows, float_out, vocabulary)
  int8_scores = scores(rows, int8_out, vocabulary)
  rouge_delta = int8_scores["rougeL"] - float_scores["rougeL"]
  print(f"{cpu_name()}, {os.cpu_count()} cpus, {jax.devices()[0].platform}")
  print(
      f"{name}: {len(inputs)} inputs of {args.mixture}, greedy, "
      f"{args.max_decode_length} tokens max, batch {args.batch_size}"
  )
  print(
      f"\n{'':10s}{'ROUGE-L':>9s}{'EM':>8s}{'examples/s':>12s}{'param MB':>10s}"
  )
  for label, s, seconds, p in (
      ("float32", float_scores, float_s, params),
      ("int8", int8_scores, int8_s, qparams),
  ):
    print(
        f"{label:10s}{s['rougeL']:9.2f}{s['exact_match']:8.2f}"
        f"{len(inputs) / seconds:12.2f}{quantize.params_bytes(p) / 1e6:10.2f}"
    )
  print(
      f"\nidentical outputs: {100 * identical:.1f}% (need >= {100 * IDENTICAL_AT_LEAST:.0f}%); "
      f"ROUGE-L int8 - float32: {rouge_delta:+.2f} (need within {ROUGE_L_WITHIN}); "
      f"int8 examples/s / float32's: {float_s / int8_s:.2f}x"
  )
  print(
      f"first output token identical: {100 * first_token:.1f}%; differing outputs part at "
      f"token {np.median(splits) if splits else 0:.0f} (median) of "
      f"{np.mean([len(a) for a in float_out]):.1f} float32 tokens per output (mean)"
  )
  if args.smoke:
    return 0
  return (
      0
      if identical >= IDENTICAL_AT_LEAST and abs(rouge_delta) <= ROUGE_L_WITHIN
      else 1
  )


if __name__ == "__main__":
  sys.exit(main())
