"""`tkx baseline`: write the copy_input / copy_demo baseline predictions of an NI split."""

from tkx.data import ni
from tkx.data import source
from tkx.data import vocab
from tkx.metrics import baselines


def add_arguments(parser):
  parser.add_argument(
      "--ni_dir",
      default=str(vocab.EMBEDDED_NI_DIR),
      help="NI checkout (tasks/ + splits/); default: the embedded sample",
  )
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
  parser.add_argument(
      "--track",
      default="default",
      help="splits/<track>/ to read (default, xlingual)",
  )
  parser.add_argument(
      "--split",
      default="test",
      help="split name: splits/<track>/<split>_tasks.txt",
  )
  parser.add_argument(
      "--max_num_instances_per_task",
      type=int,
      default=None,
      help="seeded shuffle + cap per task (test splits first keep their first 100)",
  )
  parser.add_argument(
      "--seed",
      type=int,
      default=42,
      help="seed of the instance selection behind --max_num_instances_per_task",
  )
  parser.add_argument(
      "--selection",
      default=ni.DEFAULT_SELECTION.value,
      choices=[s.value for s in ni.Selection],
      help="capped splits: Tk-Instruct's one random stream (default) or a shuffle per task",
  )
  parser.add_argument(
      "--skip_missing",
      action="store_true",
      help="skip tasks named by the split whose task file does not exist",
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
