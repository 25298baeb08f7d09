"""`tkx report`: eval outputs and training runs side by side in one self-contained report.html.

    tkx report DIR [DIR ...] [--output report.html] [--title TITLE]

Each DIR is an eval output (`metrics.json`, as `tkx eval` writes), an encoding
sweep (`tkx eval --encodings`: one run per `<encoding>/`), or a training
MODEL_DIR (loss curve from its TensorBoard scalars in `train/` and `eval/`,
generation metrics over steps from `generation_eval/step_<N>/metrics.json`).
"""

from tkx import storage


def add_arguments(parser):
  parser.add_argument(
      "dirs",
      nargs="+",
      metavar="DIR",
      help="eval output dir, encoding sweep dir or training MODEL_DIR",
  )
  parser.add_argument(
      "--output",
      default="report.html",
      help="the HTML file to write (default: report.html)",
  )
  parser.add_argument(
      "--title", default="tkx report", help="the report's title"
  )


def main(args):
  from tkx import report

  eval_runs, training_runs = report.load_dirs(args.dirs)
  path = report.write_report(
      args.output, eval_runs, training_runs, title=args.title
  )
  print(
      f"wrote {storage.abspath(path)}: {len(eval_runs)} evaluation run(s), "
      f"{len(training_runs)} training run(s)"
  )
  return 0
