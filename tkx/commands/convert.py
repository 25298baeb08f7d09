"""`tkx convert`: an NI checkout -> JSON lines of the text the model sees.

    tkx convert [--ni_dir DIR] --track default --split test --encoding def_pos2 --output FILE.jsonl \\
        [--max_num_instances_per_task N] [--seed S] [--max_source_length L --vocab PATH] [--skip_missing]

One line per selected instance: {"id", "task", "category", "inputs", "targets"}, where
`targets` is the list of all reference outputs. Without --vocab no token budget is
applied. The file is written to a temporary name beside the output and renamed at
the end, so a failed run never leaves a half-written file over an old one.
"""

import json
import sys

from tkx import io_utils
from tkx.commands import ni_selection
from tkx.data import encodings as enc
from tkx.data import ni
from tkx.data import vocab

_SPLIT_DEFAULT = object()


def add_arguments(parser):
  ni_selection.add_arguments(
      parser,
      max_instances_default=_SPLIT_DEFAULT,
      max_instances_help="cap after a seeded shuffle (default: 100 for train, none otherwise; "
      "a negative value means no cap)",
  )
  parser.add_argument(
      "--encoding",
      default="def_pos2",
      help="e.g. def, pos2, def_pos2, def_pos2_neg2_expl, name_def_pos2, tk_instruct",
  )
  parser.add_argument("--output", required=True, help="JSONL file to write")
  parser.add_argument(
      "--max_source_length",
      type=int,
      default=1024,
      help="source token budget including EOS (needs --vocab)",
  )
  parser.add_argument(
      "--vocab",
      default=None,
      help="SentencePiece model for the token budget; without it no budget is applied",
  )


def convert(
    ni_dir,
    track,
    split,
    encoding,
    output,
    *,
    max_num_instances_per_task=_SPLIT_DEFAULT,
    seed=42,
    selection=ni.DEFAULT_SELECTION,
    max_source_length=1024,
    vocabulary=None,
    skip_missing=False,
    progress=True,
) -> int:
  """Writes the JSONL file; returns the number of lines."""
  enc.parse_encoding(encoding)  # a bad name fails before any work
  if max_num_instances_per_task is _SPLIT_DEFAULT:
    max_num_instances_per_task = ni.default_max_num_instances(split)
  token_count = truncate = None
  if vocabulary is not None:
    token_count, truncate = enc.vocabulary_token_fns(vocabulary)
  task_names = ni.split_tasks(ni_dir, track, split, skip_missing=skip_missing)
  count = 0
  with io_utils.atomic_write(output) as f:
    for task, instance in ni.iter_split_instances(
        ni_dir,
        track,
        split,
        max_num_instances_per_task=max_num_instances_per_task,
        seed=seed,
        selection=selection,
        task_names=task_names,
        progress=progress,
    ):
      example = enc.make_example(
          task,
          instance,
          encoding,
          split=split,
          seed=seed,
          max_source_length=max_source_length,
          token_count=token_count,
          truncate=truncate,
      )
      line = {
          "id": example["id"],
          "task": example["task"],
          "category": example["category"],
          "inputs": example["inputs"],
          "targets": example["references"],
      }
      f.write(json.dumps(line, ensure_ascii=False) + "\n")
      count += 1
  return count


def main(args):
  from tkx.data import source

  source.check_checkout(
      args.ni_dir
  )  # a typo is an error, never another dataset
  vocabulary = None
  if args.vocab:
    vocabulary = vocab.get_vocabulary(args.vocab)
  count = convert(
      args.ni_dir,
      args.track,
      args.split,
      args.encoding,
      args.output,
      max_num_instances_per_task=args.max_num_instances_per_task,
      seed=args.seed,
      selection=args.selection,
      max_source_length=args.max_source_length,
      vocabulary=vocabulary,
      skip_missing=args.skip_missing,
  )
  print(f"wrote {count} examples to {args.output}", file=sys.stderr)
  return 0
