"""`tkx score`: score a Tk-Instruct predictions JSONL with the NI metrics.

Each line needs `Task`, `Instance.output` (the references) and `prediction`;
the category is the record's first `Categories` entry, or, when the record has
none, the task file's in `--ni_dir`. Prints overall, per-category and per-task
tables; `--json` also writes them.
"""

import json
import os

from tkx import errors, jsonl
from tkx.data import ni
from tkx.metrics import ni_metrics


class PredictionsFileError(errors.InputFileError):
  """A bad line of a predictions file; the message names the file, line and field."""


def add_arguments(parser):
  parser.add_argument(
      "--predictions",
      required=True,
      help="predictions JSONL (Tk-Instruct predicted_examples format)",
  )
  parser.add_argument(
      "--track",
      default="default",
      choices=["default", "xlingual"],
      help="xlingual: ROUGE over GPT-2 byte-level BPE tokens (no stemming)",
  )
  parser.add_argument(
      "--ni_dir",
      default=None,
      help="NI checkout to look up categories of records without `Categories`",
  )
  parser.add_argument(
      "--json", default=None, help="also write the tables as JSON here"
  )


def _fail(path, line_no, field, message):
  raise jsonl.line_error(path, line_no, field, message, PredictionsFileError)


def read_predictions(path, ni_dir=None):
  """Reads and checks a predictions file; fills `Categories` from `ni_dir` task files when absent."""
  records, categories_by_task = [], {}
  for line_no, record in jsonl.iter_json_objects(path, PredictionsFileError):
    task = record.get("Task")
    if not isinstance(task, str) or not task:
      _fail(path, line_no, "Task", "missing or not a string")
    instance = record.get("Instance")
    if not isinstance(instance, dict):
      _fail(
          path, line_no, "Instance", f"missing or not an object (task {task})"
      )
    outputs = instance.get("output")
    if (
        not isinstance(outputs, list)
        or not outputs
        or not all(isinstance(o, str) for o in outputs)
    ):
      _fail(
          path,
          line_no,
          "Instance.output",
          f"must be a non-empty list of strings (task {task})",
      )
    key = "prediction" if "prediction" in record else "Prediction"
    if not isinstance(record.get(key), str):
      _fail(
          path, line_no, "prediction", f"missing or not a string (task {task})"
      )
    categories = record.get("Categories")
    if categories is None:
      if ni_dir is None:
        _fail(
            path,
            line_no,
            "Categories",
            f"missing (task {task}); pass --ni_dir to read it from the task file",
        )
      if task not in categories_by_task:
        try:
          categories_by_task[task] = [
              ni.task_category(ni.load_task(ni_dir, task))
          ]
        except ni.NIDataError as e:
          _fail(
              path,
              line_no,
              "Categories",
              f"missing, and the task file could not give it: {e}",
          )
      record["Categories"] = categories_by_task[task]
    elif (
        not isinstance(categories, list)
        or not categories
        or not isinstance(categories[0], str)
    ):
      _fail(
          path,
          line_no,
          "Categories",
          f"must be a non-empty list of strings (task {task})",
      )
    records.append(record)
  if not records:
    raise PredictionsFileError(f"{path}: no predictions (the file is empty)")
  return records


def main(args):
  if not os.path.isfile(args.predictions):
    raise FileNotFoundError(f"predictions file not found: {args.predictions}")
  records = read_predictions(args.predictions, args.ni_dir)
  results = ni_metrics.score_predictions(
      records, xlingual=args.track == "xlingual", progress=len(records) >= 2000
  )
  print(ni_metrics.format_tables(results), end="")
  if args.json:
    results = dict(results, predictions=os.path.abspath(args.predictions))
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2, ensure_ascii=False)
      f.write("\n")
    print(f"\nwrote {args.json}")
  return 0
