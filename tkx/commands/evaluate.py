"""`tkx eval`: decode an NI test mixture and score it with the NI metrics (SeqIO evaluator).

    tkx eval --checkpoint CKPT [--ni_dir DIR] [--track default] [--encoding def_pos2] [--split test]
             [--output_dir DIR]
    tkx eval --gin_file=gin_configs/runs/eval.gin --gin.CHECKPOINT_PATH="'CKPT'" --gin.EVAL_OUTPUT_DIR="'DIR'"
    tkx eval --checkpoint CKPT --encodings def,pos2,def_pos2,def_pos2_neg2_expl [--output_dir DIR]

Prints overall, per-category and per-task tables and writes, in the output dir,
`predicted_examples.jsonl` (Tk-Instruct format), `metrics.json`, TensorBoard
summaries under `eval/`, the copy baselines on the same instances
(`baselines.json`) and `report.html` (see `tkx.report`). `--encodings` evaluates
one checkpoint under several encodings, each in `<output_dir>/<encoding>/`, and
writes one `report.html` comparing them. Flags given on the command line win over gin bindings.
Decoding flags as `tkx infer` (greedy by default).
"""

import posixpath

from tkx import errors, storage
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
      "--encodings",
      default=None,
      help="comma-separated encodings to evaluate one after the other with one loaded "
      "checkpoint and its compiled decoding programs, e.g. def,pos2,def_pos2,"
      "def_pos2_neg2_expl: each writes <output_dir>/<encoding>/, and "
      "<output_dir>/report.html compares them",
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
      help="where to write predictions, metrics.json, baselines.json, report.html and "
      "summaries (default: <checkpoint>/eval_<track>_<split>_<encoding>, with "
      "--encodings <checkpoint>/eval_<track>_<split>_encodings)",
  )
  infer_command.add_common_arguments(parser, checkpoint_required=False)


# Every flag but --encodings and --no_progress is a gin binding of evaluate.evaluate
# (`tkx.cli.flag_bindings`): a flag wins over gin files, and the defaults live in
# evaluate.evaluate's signature (or the run's gin file).
GIN_FLAGS = dict(
    infer_command.DECODE_FLAGS,
    checkpoint="evaluate.evaluate.checkpoint_path",
    output_dir="evaluate.evaluate.output_dir",
    ni_dir="evaluate.evaluate.ni_dir",
    track="evaluate.evaluate.track",
    split="evaluate.evaluate.split",
    encoding="evaluate.evaluate.encoding",
    mixture="evaluate.evaluate.mixture_or_task_name",
    batch_size="evaluate.evaluate.batch_size",
    max_input_length="evaluate.evaluate.max_input_length",
    max_num_instances_per_task="evaluate.evaluate.max_num_instances_per_task",
    vocab="evaluate.evaluate.vocab_path",
    input_buckets=(
        "evaluate.evaluate.input_buckets",
        infer_command.input_buckets_flag,
    ),
)


configure = infer_command.parse_gin  # before `tkx.cli` joins the processes


def main(args):
  from tkx import evaluate, gin_utils

  if not args.gin_files and not args.checkpoint:
    raise errors.ConfigError(
        "tkx eval needs --checkpoint (or a gin file that sets evaluate.evaluate.checkpoint_path, "
        "e.g. --gin_file=gin_configs/runs/eval.gin --gin.CHECKPOINT_PATH=\"'CKPT'\")"
    )
  if args.ni_dir:
    from tkx.data import source  # pylint: disable=g-import-not-at-top

    source.check_checkout(args.ni_dir)  # before the checkpoint is loaded
  if args.mixture:
    from tkx.data import pipeline  # pylint: disable=g-import-not-at-top

    pipeline.check_mixture_name(args.mixture, args.ni_dir, flag="--mixture")
  progress = not args.no_progress
  if args.encodings is None:
    results = evaluate.evaluate(progress=progress)
    return _print_summary(results)
  encodings = _parse_encodings(args)
  if args.output_dir is None and (
      gin_utils.query("evaluate.evaluate.output_dir") is not None
  ):
    raise errors.ConfigError(
        "tkx eval --encodings writes one directory per encoding under --output_dir; "
        "give --output_dir (the gin binding evaluate.evaluate.output_dir names one "
        "evaluation's directory)"
    )
  return _sweep(encodings, progress)


def _print_summary(results):
  from tkx import evaluate, multihost

  settings = results["settings"]
  report_path = _write_report(settings["output_dir"])
  if not multihost.is_primary_host():
    return 0
  print(
      f"\n{settings['num_examples']} examples, {settings['examples_per_second']} examples/s decoding; "
      f"wrote {evaluate.PREDICTIONS_FILE}, {evaluate.METRICS_FILE}, eval/ summaries"
      + (" and report.html" if report_path else "")
      + f" to {settings['output_dir']}"
  )
  return 0


def _parse_encodings(args):
  from tkx.data import encodings as encodings_lib

  if args.encoding is not None or args.mixture is not None:
    raise errors.ConfigError(
        "--encodings evaluates several encodings of the split; it cannot be combined "
        "with --encoding or --mixture"
    )
  names = [name.strip() for name in args.encodings.split(",")]
  if not all(names):
    raise errors.ConfigError(
        f"--encodings {args.encodings!r}: an empty name between commas"
    )
  for name in names:
    try:
      encodings_lib.parse_encoding(name)
    except ValueError as e:
      raise errors.ConfigError(f"--encodings: {e}") from None
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise errors.ConfigError(f"--encodings names {', '.join(duplicates)} twice")
  return names


def _sweep(encodings, progress):
  """One evaluation per encoding, sharing the loaded checkpoint; one report comparing them."""
  from tkx import evaluate, multihost, report
  from tkx.metrics import ni_metrics

  shared = evaluate.SharedCheckpoint()
  scores = report.BaselineScores()  # every encoding: the same instances
  overall, parent = {}, None
  primary = multihost.is_primary_host()  # one table per job
  for i, encoding in enumerate(encodings, 1):
    if primary:
      print(f"\n=== encoding {encoding} ({i}/{len(encodings)}) ===")
    results = evaluate.evaluate(
        progress=progress,
        encoding=encoding,
        in_encodings_sweep=True,
        shared_checkpoint=shared,
    )
    _write_report(results["settings"]["output_dir"], scores=scores)
    parent = posixpath.dirname(results["settings"]["output_dir"])
    overall[encoding] = results["overall"]
  report_path = _write_report(parent, encodings)
  if not primary:
    return 0
  width = max(len(e) for e in encodings)
  print("\n== Encodings ==")
  print(
      "encoding".ljust(width)
      + "".join(f"  {m:>11}" for m in ni_metrics.METRICS)
      + "  examples"
  )
  for encoding, row in overall.items():
    print(
        encoding.ljust(width)
        + "".join(f"  {row[m]:>11.4f}" for m in ni_metrics.METRICS)
        + f"  {row['num_examples']:>8}"
    )
  print(
      f"wrote {', '.join(f'{e}/' for e in encodings)}"
      + (" and report.html" if report_path else "")
      + f" to {storage.abspath(parent)}"
  )
  return 0


def _write_report(output_dir, encodings=None, scores=None):
  """report.html (and baselines.json) from what eval wrote; the primary host writes, as eval."""
  from tkx import multihost, report

  if not output_dir or not multihost.is_primary_host():
    return None
  if encodings:
    return report.write_sweep_report(output_dir, encodings)
  return report.write_eval_report(output_dir, scores=scores)
