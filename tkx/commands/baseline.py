"""`tkx baseline`: write the copy_input / copy_demo baseline predictions of an NI split."""

from tkx.commands import ni_selection
from tkx.data import source
from tkx.metrics import baselines


def add_arguments(parser):
  parser.add_argument(
      "--kind",
      required=True,
      choices=sorted(baselines.BASELINES),
      help="copy_input: predict the instance input; copy_demo: the first positive example's output",
  )
  parser.add_argument(
      "--output",
      required=True,
      help="predictions JSONL to write (Tk-Instruct format)",
  )
  ni_selection.add_arguments(
      parser,
      max_instances_help="seeded shuffle + cap per task (test splits first keep their first 100)",
  )


def main(args):
  source.check_checkout(
      args.ni_dir
  )  # a typo is an error, never another dataset
  count = baselines.write_baseline(
      args.ni_dir,
      args.kind,
      args.output,
      track=args.track,
      split=args.split,
      max_num_instances_per_task=args.max_num_instances_per_task,
      seed=args.seed,
      selection=args.selection,
      skip_missing=args.skip_missing,
      progress=True,
  )
  print(
      f"wrote {count} {args.kind} predictions ({args.track}/{args.split} of {args.ni_dir}) to {args.output}"
  )
  return 0
