"""`tkx eval`: decode an NI test mixture and score it with the NI metrics (SeqIO evaluator).

    tkx eval --checkpoint CKPT [--ni_dir DIR] [--track default] [--encoding def_pos2] [--split test]
             [--output_dir DIR]
    tkx eval --gin_file=gin_configs/runs/eval.gin --gin.CHECKPOINT_PATH="'CKPT'" --gin.EVAL_OUTPUT_DIR="'DIR'"

Prints overall, per-category and per-task tables and writes, in the output dir,
`predicted_examples.jsonl` (Tk-Instruct format), `metrics.json` and TensorBoard
summaries under `eval/`. Flags given on the command line win over gin bindings.
Decoding flags as `tkx infer` (greedy by default).
"""

import os

from tkx.commands import infer as infer_command


def add_arguments(parser):
  parser.add_argument(
      "--ni_dir",
      default=None,
      help="NI checkout (default: the embedded tasks/)",
  )
  parser.add_argument(
      "--track",
      default=None,
      choices=["default", "xlingual"],
      help="split track (default: default)",
  )
  parser.add_argument(
      "--split", default=None, help="NI split to evaluate (default: test)"
  )
  parser.add_argument(
      "--encoding",
      default=None,
      help="instruction encoding (default: def_pos2)",
  )
  parser.add_argument(
      "--mixture",
      default=None,
      help="a registered SeqIO mixture/task instead of --ni_dir/--track/--split/--encoding",
  )
  parser.add_argument(
      "--max_num_instances_per_task",
      type=int,
      default=None,
      help="cap per task after a seeded shuffle (default: Tk-Instruct's first 100 test instances)",
  )
  parser.add_argument(
      "--output_dir",
      default=None,
      help="where to write predictions, metrics.json and summaries "
      "(default: <checkpoint>/eval_<track>_<split>_<encoding>)",
  )
  infer_command.add_common_arguments(parser, checkpoint_required=False)


_FLAG_TO_ARG = {
    "checkpoint": "checkpoint_path",
    "output_dir": "output_dir",
    "ni_dir": "ni_dir",
    "track": "track",
    "split": "split",
    "encoding": "encoding",
    "mixture": "mixture_or_task_name",
    "batch_size": "batch_size",
    "max_input_length": "max_input_length",
    "max_num_instances_per_task": "max_num_instances_per_task",
    "vocab": "vocab_path",
}


def main(args):
  infer_command.setup_logging()
  infer_command.parse_gin(args)
  from tkx import evaluate, infer

  if not args.gin_files and not args.checkpoint:
    raise ValueError(
        "tkx eval needs --checkpoint (or a gin file that sets evaluate.evaluate.checkpoint_path, "
        "e.g. --gin_file=gin_configs/runs/eval.gin --gin.CHECKPOINT_PATH=\"'CKPT'\")"
    )
  if args.ni_dir:
    from tkx.data import source  # pylint: disable=g-import-not-at-top

    source.check_checkout(args.ni_dir)  # before the checkpoint is loaded
  kwargs = infer_command.explicit_kwargs(args, _FLAG_TO_ARG)
  if any(getattr(args, f) is not None for f in infer_command.DECODE_FLAGS):
    kwargs["decode_config"] = infer_command.decode_config_from_args(args)
  if args.num_partitions is not None:
    kwargs["partitioner"] = infer_command.partitioner_from_args(args)
  if args.input_buckets:
    kwargs["input_buckets"] = infer_command.input_buckets_from_args(args)
  if args.no_progress:
    kwargs["progress"] = False
  if (
      "output_dir" not in kwargs
      and args.checkpoint
      and not _gin_binds("evaluate.evaluate.output_dir")
  ):
    name = args.mixture or "_".join(
        [
            args.track or "default",
            args.split or "test",
            args.encoding or "def_pos2",
        ]
    )
    kwargs["output_dir"] = os.path.join(
        infer.checkpoint_root(args.checkpoint), f"eval_{name}"
    )
  results = evaluate.evaluate(**kwargs)
  settings = results["settings"]
  print(
      f"\n{settings['num_examples']} examples, {settings['examples_per_second']} examples/s decoding; "
      f"wrote {evaluate.PREDICTIONS_FILE}, {evaluate.METRICS_FILE} and eval/ summaries to "
      f"{settings['output_dir']}"
  )
  return 0


def _gin_binds(name):
  import gin

  try:
    gin.query_parameter(name)
    return True
  except (ValueError, KeyError):
    return False
