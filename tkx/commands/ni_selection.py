"""The NI split-selection flags shared by `tkx convert` and `tkx baseline`, defined once.

Both commands read a checkout's `<track>/<split>` and select its instances as
`tkx.data.ni.iter_split_instances` does; these flags name the checkout, the split
and the selection. Not a command: `tkx.cli` lists the commands.
"""

from tkx.data import ni
from tkx.data import vocab


def add_arguments(parser, *, max_instances_default=None, max_instances_help):
  """--ni_dir, --track, --split, --max_num_instances_per_task, --seed, --selection, --skip_missing."""
  parser.add_argument(
      "--ni_dir",
      default=str(vocab.EMBEDDED_NI_DIR),
      help="NI checkout with tasks/ and splits/; default: the embedded sample",
  )
  parser.add_argument(
      "--track",
      default="default",
      help="splits/<track>/ to read (default or xlingual)",
  )
  parser.add_argument(
      "--split",
      default="test",
      help="split name: splits/<track>/<split>_tasks.txt",
  )
  parser.add_argument(
      "--max_num_instances_per_task",
      type=int,
      default=max_instances_default,
      help=max_instances_help,
  )
  parser.add_argument(
      "--seed",
      type=int,
      default=42,
      help="seed of the instance selection (and of tk_instruct encoding draws)",
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
      help="skip (with one warning) tasks the split names but whose file is missing",
  )
