"""report.html: an evaluation you can look at (`tkx eval`, `tkx eval --encodings`, `tkx report`).

One self-contained HTML file: inline CSS, charts drawn by matplotlib as inline
SVG (text kept as text with generic font families, so no font file is
referenced), no script, no image file, nothing fetched. It holds

- overall exact match / ROUGE-1 / ROUGE-L of each run next to the copy-input
  and copy-demo baselines scored on the same instances (chart and table);
- the 12 official evaluation categories with their official metric (chart),
  and every category present with all metrics (table);
- the per-task table (official metric of the task's category, else ROUGE-L);
- the published reference figures, labelled as published and on which split;
- the decoding settings and the checkpoint step of each run;
- for a training MODEL_DIR: the loss curve from its TensorBoard scalars and the
  generation metrics over steps from its `generation_eval/step_<N>/metrics.json`.

Every model number shown comes from a run's `metrics.json` as `tkx eval` wrote
it. The baselines are scored by the same scorer (`ni_metrics.score_predictions`)
on the run's own predictions file, with the prediction replaced by the
instance input (copy input) or the task's first positive example's output
(copy demo), and are kept beside it in `baselines.json`. Table cells carry
`data-run` / `data-source` / `data-key` attributes naming the JSON value they show.

Contract (the names other modules rely on; change one only together with its users):
- Reads only what `tkx eval` writes (`metrics.json`, `predicted_examples.jsonl`) and training `MODEL_DIR`s
  (`train/`, `eval/` event files; `generation_eval/step_<N>/metrics.json`); never the evaluator's internals.
- `score_baselines(records, xlingual, scores=None) -> {"baselines": {"copy_input"|"copy_demo": score_predictions tables
  without "flat"}, "skipped": {name: why}}`: the prediction of each record replaced as `metrics.baselines` does,
  scored by `ni_metrics.score_predictions`. `write_baselines(output_dir, scores=None)` writes it as `baselines.json`.
  `BaselineScores()` owns the last scores (one per command: an encoding sweep, a `tkx report` of several dirs)
  and scores the same instances once.
- `load_dirs(dirs) -> (eval_runs, training_runs)`; `render(eval_runs, training_runs, title) -> str` (HTML);
  `write_report(path, ...)`; `write_eval_report(output_dir)` (baselines + report of one eval) and
  `write_sweep_report(output_dir, encodings)`. Errors: `ReportInputError` (names the directory/file).
- The page: inline CSS, inline SVG (`svg.fonttype = none`, RDF metadata dropped), no script, no external
  reference. Charts are `<figure id="chart-overall">`, `chart-categories`, `chart-loss-<i>`,
  `chart-generation-<i>`; numeric cells carry `data-run`, `data-source` (`metrics.json`,
  `baselines.json:<baseline>`, `generation_eval/step_<N>/metrics.json`) and `data-key` (a `/` path in that JSON).
- `evaluate.SharedCheckpoint`: `evaluate.evaluate(..., shared_checkpoint=s)` calls load the checkpoint (and make
  the partitioner) once; each call builds its own `Predictor` from the `infer.PredictFns` the SharedCheckpoint owns
  (the same jitted function for the same decoding settings) and a fresh decoding seed.
  `evaluate.generation_eval(..., predict_fns=None)`: a caller evaluating every N steps passes the `PredictFns` it owns. `tkx eval --encodings` is a loop over
  `evaluate.evaluate` with one `SharedCheckpoint`.
"""

import dataclasses
import html
import io
import json
import posixpath
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from tkx import errors, storage
from tkx.metrics import baselines as baselines_lib
from tkx.metrics import ni_metrics

REPORT_FILE = "report.html"
BASELINES_FILE = "baselines.json"
METRICS_FILE = "metrics.json"  # as tkx.evaluate writes it
PREDICTIONS_FILE = "predicted_examples.jsonl"  # as tkx.evaluate writes it
GENERATION_EVAL_DIR = (
    "generation_eval"  # tkx.evaluate.generation_eval's step_<N>/ dirs
)
BASELINE_NAMES = {"copy_input": "copy input", "copy_demo": "copy demo"}
METRIC_NAMES = {
    "exact_match": "exact match",
    "rouge1": "ROUGE-1",
    "rougeL": "ROUGE-L",
}


@dataclasses.dataclass(frozen=True)
class PublishedResult:
  model: str
  rouge_l: float
  split: str


_DEFAULT_TEST = "default (English) track, full official test split"
_XLINGUAL_TEST = "x-lingual track, full official test split"
# Super-NaturalInstructions (Wang et al., 2022), ROUGE-L on the test split; not measured here.
PUBLISHED_RESULTS = (
    PublishedResult("Tk-Instruct 11B", 60.07, _DEFAULT_TEST),
    PublishedResult("Tk-Instruct 3B", 54.33, _DEFAULT_TEST),
    PublishedResult("mTk-Instruct 3B", 56.72, _XLINGUAL_TEST),
    PublishedResult("GPT-3 175B", 45.05, _DEFAULT_TEST),
    PublishedResult("T0 11B", 32.28, _DEFAULT_TEST),
    PublishedResult("copy demo", 28.54, _DEFAULT_TEST),
    PublishedResult("copy input", 14.20, _DEFAULT_TEST),
)


class ReportInputError(errors.InputFileError):
  """A directory `tkx report` cannot read; the message names it and what is missing."""


# ----------------------------------------------------------------------------- baselines
def score_baselines(
    records: Sequence[Mapping[str, Any]],
    xlingual: bool,
    scores: Optional["BaselineScores"] = None,
) -> Dict[str, Any]:
  """The copy baselines on these records' instances: {"baselines": {name: tables}, "skipped": {name: why}}.

  The tables are `ni_metrics.score_predictions`'s (without "flat"). A baseline is
  left out, with the reason under "skipped", when a task has no positive example to copy.
  `scores` keeps the last result, for callers that score the same instances again.
  """
  return (scores or BaselineScores()).score(records, xlingual)


class BaselineScores:
  """The copy baselines' tables, scored once per set of instances while this object lives.

  Every encoding of an encoding sweep (`tkx eval --encodings`) has the same
  instances, so one object per command scores them once. It keeps only the last
  set of instances.
  """

  def __init__(self):
    self._key = None
    self._scored = None

  def score(self, records, xlingual: bool) -> Dict[str, Any]:
    # What the baselines read of each record: equal for every encoding of the same instances.
    key = (
        xlingual,
        tuple(
            (
                r.get("Task"),
                json.dumps(r.get("Instance"), sort_keys=True),
                json.dumps(
                    (r.get("Positive Examples") or [])[:1], sort_keys=True
                ),
                json.dumps(r.get("Categories"), sort_keys=True),
            )
            for r in records
        ),
    )
    if key != self._key:
      self._key, self._scored = key, _score_baselines(records, xlingual)
    return json.loads(
        json.dumps(self._scored)
    )  # a copy, which the caller may change


def _score_baselines(records, xlingual):
  scored, skipped = {}, {}
  for name, predict in baselines_lib.BASELINES.items():
    if name == "copy_demo":
      lacking = next(
          (r["Task"] for r in records if not r.get("Positive Examples")), None
      )
      if lacking is not None:
        skipped[name] = f"task {lacking} has no positive example to copy"
        continue
    rows = [
        dict(record, prediction=predict(record, record["Instance"]))
        for record in records
    ]
    tables = ni_metrics.score_predictions(rows, xlingual=xlingual)
    tables.pop("flat")
    scored[name] = tables
  return {"baselines": scored, "skipped": skipped}


def write_baselines(
    output_dir: str, scores: Optional[BaselineScores] = None
) -> Dict[str, Any]:
  """Scores the baselines on `output_dir`'s predictions file; writes and returns baselines.json."""
  metrics = _read_json(storage.join(output_dir, METRICS_FILE))
  records = [
      record
      for _, record in _iter_records(storage.join(output_dir, PREDICTIONS_FILE))
  ]
  result = score_baselines(records, metrics["track"] == "xlingual", scores)
  _write_text(
      storage.join(output_dir, BASELINES_FILE),
      json.dumps(result, indent=2, ensure_ascii=False) + "\n",
  )
  return result


# ----------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class EvalRun:
  """One evaluation: its `metrics.json` and (when present) `baselines.json`."""

  label: str
  path: str
  metrics: Dict[str, Any]
  baselines: Dict[str, Any]  # {"baselines": {name: tables}, "skipped": {...}}


@dataclasses.dataclass
class TrainingRun:
  """A training MODEL_DIR: TensorBoard scalars and generation evaluations over steps."""

  label: str
  path: str
  # {"train": {tag: [(step, value)]}, "eval": {...}} from the event files.
  scalars: Dict[str, Dict[str, List[Tuple[int, float]]]]
  generation: List[Tuple[int, Dict[str, Any]]]  # (step, metrics.json), by step


def _read_json(path):
  try:
    with storage.open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ReportInputError(f"{path}: not valid JSON ({e})") from None


def _iter_records(path):
  from tkx import jsonl

  if not storage.exists(path):
    raise ReportInputError(f"{path}: missing (the predictions tkx eval writes)")
  return jsonl.iter_json_objects(path, ReportInputError)


def _write_text(path, text):
  from tkx import io_utils

  with io_utils.atomic_write(path) as f:
    f.write(text)


def load_eval_run(
    directory: str, label: str, scores: Optional[BaselineScores] = None
) -> EvalRun:
  metrics = _read_json(storage.join(directory, METRICS_FILE))
  for field in ("overall", "per_category", "per_task", "settings"):
    if field not in metrics:
      raise ReportInputError(
          f"{storage.join(directory, METRICS_FILE)}: no field {field!r} "
          "(not a metrics.json written by tkx eval)"
      )
  baselines_path = storage.join(directory, BASELINES_FILE)
  if storage.exists(baselines_path):
    baselines = _read_json(baselines_path)
  else:  # an eval output written before reports: score its predictions now
    records = [
        r for _, r in _iter_records(storage.join(directory, PREDICTIONS_FILE))
    ]
    baselines = score_baselines(
        records, metrics.get("track") == "xlingual", scores
    )
  return EvalRun(label, storage.abspath(directory), metrics, baselines)


def read_scalars(log_dir: str) -> Dict[str, List[Tuple[int, float]]]:
  """{tag: [(step, value)] by step} of the TensorBoard event files in `log_dir` (tf's reader)."""
  import tensorflow as tf
  from tensorflow.core.util import event_pb2

  series = {}
  for remote_path in storage.glob(
      storage.join(log_dir, "events.out.tfevents.*")
  ):
    # TensorFlow's reader gets a local file (it cannot reach an emulator).
    with storage.local_copy(remote_path) as path:
      records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    for serialized in records:
      event = event_pb2.Event.FromString(serialized)
      for value in event.summary.value:
        kind = value.WhichOneof("value")
        if kind == "simple_value":
          number = value.simple_value
        elif kind == "tensor":
          number = float(tf.make_ndarray(value.tensor))
        else:
          continue
        series.setdefault(value.tag, {})[int(event.step)] = number
  return {tag: sorted(points.items()) for tag, points in series.items()}


def _step_of(path):
  match = re.search(r"step_(\d+)$", storage.normpath(path))
  return int(match.group(1)) if match else None


def load_training_run(directory: str, label: str) -> TrainingRun:
  scalars = {
      name: read_scalars(storage.join(directory, name))
      for name in ("train", "eval")
      if storage.isdir(storage.join(directory, name))
  }
  generation = []
  for step_dir in storage.glob(
      storage.join(directory, GENERATION_EVAL_DIR, "*")
  ):
    step = _step_of(step_dir)
    if step is not None and storage.exists(
        storage.join(step_dir, METRICS_FILE)
    ):
      generation.append(
          (step, _read_json(storage.join(step_dir, METRICS_FILE)))
      )
  generation.sort(key=lambda item: item[0])
  return TrainingRun(label, storage.abspath(directory), scalars, generation)


def _is_training_dir(directory):
  return bool(
      storage.glob(storage.join(directory, "train", "events.out.tfevents.*"))
  ) or storage.isdir(storage.join(directory, GENERATION_EVAL_DIR))


def _sweep_subdirs(directory):
  return sorted(
      d
      for d in storage.glob(storage.join(directory, "*"))
      if storage.isfile(storage.join(d, METRICS_FILE))
  )


def load_dirs(
    directories: Sequence[str],
) -> Tuple[List[EvalRun], List[TrainingRun]]:
  """Eval outputs (metrics.json), encoding sweeps (*/metrics.json) and training MODEL_DIRs."""
  eval_runs, training_runs = [], []
  scores = (
      BaselineScores()
  )  # directories of one sweep score their baselines once
  labels = _labels(directories)
  for directory, label in zip(directories, labels):
    if not storage.isdir(directory):
      raise ReportInputError(f"{directory}: no such directory")
    if storage.isfile(storage.join(directory, METRICS_FILE)):
      eval_runs.append(load_eval_run(directory, label, scores))
    elif _is_training_dir(directory):
      training_runs.append(load_training_run(directory, label))
    elif _sweep_subdirs(directory):
      for sub in _sweep_subdirs(directory):
        eval_runs.append(
            load_eval_run(sub, f"{label}/{posixpath.basename(sub)}", scores)
        )
    else:
      raise ReportInputError(
          f"{directory}: not an eval output (no {METRICS_FILE}), an encoding sweep "
          f"(no */{METRICS_FILE}) or a training MODEL_DIR (no train/ summaries, no "
          f"{GENERATION_EVAL_DIR}/)"
      )
  return eval_runs, training_runs


def _labels(directories):
  """Each directory's last path part, or its path where two last parts coincide."""
  names = [posixpath.basename(storage.normpath(d)) for d in directories]
  return [
      name if names.count(name) == 1 else storage.normpath(d)
      for name, d in zip(names, directories)
  ]


# ----------------------------------------------------------------------------- charts
_RUN_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
)
_BASELINE_COLORS = {"copy_input": "#bdbdbd", "copy_demo": "#7f7f7f"}


def _figure(width, height):
  from matplotlib import figure

  return figure.Figure(figsize=(width, height), layout="constrained")


def _svg(fig) -> str:
  """The figure as an inline <svg> element (no XML prolog, text as text, no ids that vary)."""
  import matplotlib

  buffer = io.StringIO()
  with matplotlib.rc_context(
      {
          "svg.fonttype": "none",
          "svg.hashsalt": "tkx-report",
          "font.family": "sans-serif",
          "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
      }
  ):
    fig.savefig(buffer, format="svg", metadata={"Date": None})
  text = buffer.getvalue()
  # The RDF metadata block names namespaces by URL; the page needs none of it.
  text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)
  return text[text.index("<svg") :]


def _bar_labels(ax, bars):
  ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)


def overall_chart(runs: Sequence[EvalRun], baselines: Mapping[str, Any]) -> str:
  """Exact match and ROUGE-L of each run and of the shared baselines, grouped by metric."""
  import numpy as np

  series = [(run.label, run.metrics["overall"], None) for run in runs] + [
      (BASELINE_NAMES[name], tables["overall"], name)
      for name, tables in baselines.items()
  ]
  metrics = ("exact_match", "rougeL")
  fig = _figure(min(3.0 + 1.1 * len(series), 11), 3.4)
  ax = fig.add_subplot()
  width = 0.8 / len(series)
  x = np.arange(len(metrics))
  for i, (label, overall, baseline) in enumerate(series):
    bars = ax.bar(
        x + (i - (len(series) - 1) / 2) * width,
        [overall[m] for m in metrics],
        width,
        label=label,
        color=_BASELINE_COLORS[baseline]
        if baseline
        else _RUN_COLORS[i % len(_RUN_COLORS)],
        hatch="//" if baseline else None,
        edgecolor="white" if baseline else None,
    )
    _bar_labels(ax, bars)
  ax.set_xticks(x, [METRIC_NAMES[m] for m in metrics])
  ax.set_ylabel("score (0-100)")
  ax.set_ylim(0, 105)
  ax.legend(fontsize=8, loc="upper left", ncols=min(len(series), 4))
  ax.spines[["top", "right"]].set_visible(False)
  return _svg(fig)


def category_chart(
    runs: Sequence[EvalRun], baselines: Mapping[str, Any]
) -> str:
  """The 12 official categories, each with its official metric; runs and baselines side by side."""
  import numpy as np

  categories = list(ni_metrics.OFFICIAL_CATEGORY_METRICS)
  series = [(run.label, run.metrics["per_category"], None) for run in runs] + [
      (BASELINE_NAMES[name], tables["per_category"], name)
      for name, tables in baselines.items()
  ]
  fig = _figure(8.5, 1.2 + len(categories) * (0.22 + 0.12 * len(series)))
  ax = fig.add_subplot()
  height = 0.8 / len(series)
  y = np.arange(len(categories))
  for i, (label, per_category, baseline) in enumerate(series):
    by_key = {
        ni_metrics.category_key(c): row for c, row in per_category.items()
    }
    values = []
    for category in categories:
      row = by_key.get(ni_metrics.category_key(category))
      values.append(
          row[ni_metrics.OFFICIAL_CATEGORY_METRICS[category]] if row else np.nan
      )
    bars = ax.barh(
        y + (i - (len(series) - 1) / 2) * height,
        values,
        height,
        label=label,
        color=_BASELINE_COLORS[baseline]
        if baseline
        else _RUN_COLORS[i % len(_RUN_COLORS)],
        hatch="//" if baseline else None,
        edgecolor="white" if baseline else None,
    )
    ax.bar_label(
        bars,
        labels=["" if np.isnan(v) else f"{v:.1f}" for v in values],
        fontsize=6,
        padding=2,
    )
  present = {
      ni_metrics.category_key(c)
      for run in runs
      for c in run.metrics["per_category"]
  }
  ax.set_yticks(
      y,
      [
          f"{c} ({'EM' if m == 'exact_match' else 'ROUGE-L'})"
          + (
              ""
              if ni_metrics.category_key(c) in present
              else " - not evaluated"
          )
          for c, m in ni_metrics.OFFICIAL_CATEGORY_METRICS.items()
      ],
      fontsize=8,
  )
  ax.invert_yaxis()
  ax.set_xlim(0, 105)
  ax.set_xlabel("official metric of the category (0-100)")
  ax.legend(fontsize=8, loc="lower right")
  ax.spines[["top", "right"]].set_visible(False)
  return _svg(fig)


def _line_chart(series, ylabel, score=False, width=8.5, height=3.2) -> str:
  """series: [(label, [(step, value)])] drawn against the training step; scores on 0-100."""
  fig = _figure(width, height)
  ax = fig.add_subplot()
  for i, (label, points) in enumerate(series):
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    ax.plot(
        steps,
        values,
        marker="o" if len(points) < 30 else None,
        markersize=3,
        label=label,
        color=_RUN_COLORS[i % len(_RUN_COLORS)],
    )
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  if score:
    ax.set_ylim(0, 100)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  ax.spines[["top", "right"]].set_visible(False)
  return _svg(fig)


# ----------------------------------------------------------------------------- HTML
_STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 72em; padding: 0 1em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em;
     border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: left; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.baseline td { color: #555; font-style: italic; }
figure { margin: 0.5em 0 1.5em; }
figure svg { max-width: 100%; height: auto; }
figcaption, .note { font-size: 0.85em; color: #555; }
.published { background: #fffbe6; border: 1px solid #e6d98c; padding: 0.5em 1em; }
"""


def _esc(value) -> str:
  return html.escape(str(value), quote=True)


def _num(value, run=None, source=None, key=None) -> str:
  """A table cell showing a JSON number as stored (4 decimals), tagged with where it came from."""
  attrs = ""
  if key is not None:
    attrs = (
        f' data-run="{_esc(run)}" data-source="{_esc(source)}"'
        f' data-key="{_esc(key)}"'
    )
  if value is None:
    return f'<td class="num"{attrs}>-</td>'
  return f'<td class="num"{attrs}>{value:.4f}</td>'


def _table(header, rows, classes=None) -> str:
  head = "".join(f"<th>{_esc(h)}</th>" for h in header)
  body = []
  for i, row in enumerate(rows):
    cls = f' class="{classes[i]}"' if classes and classes[i] else ""
    body.append(f"<tr{cls}>" + "".join(row) + "</tr>")
  return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _td(text) -> str:
  return f"<td>{_esc(text)}</td>"


def _figure_html(chart_id, svg, caption) -> str:
  return (
      f'<figure id="{chart_id}">{svg}<figcaption>{_esc(caption)}</figcaption>'
      "</figure>"
  )


def _shared_baselines(runs: Sequence[EvalRun]) -> Optional[Dict[str, Any]]:
  """The runs' baselines when all runs scored the same instances, else None."""
  first = runs[0].baselines.get("baselines", {})
  for run in runs[1:]:
    if run.baselines.get("baselines", {}) != first:
      return None
  return first


def _overall_section(runs) -> str:
  shared = _shared_baselines(runs)
  rows, classes = [], []
  for index, run in enumerate(runs):
    o = run.metrics["overall"]
    rows.append(
        [_td(run.label)]
        + [
            _num(o[m], index, METRICS_FILE, f"overall/{m}")
            for m in ni_metrics.METRICS
        ]
        + [_td(o["num_examples"])]
    )
    classes.append("")
    if shared is None:  # each run beside its own baselines
      rows_b, classes_b = _baseline_rows(run, index, f" ({run.label})")
      rows += rows_b
      classes += classes_b
  if shared is not None:
    rows_b, classes_b = _baseline_rows(runs[0], 0, "")
    rows += rows_b
    classes += classes_b
  parts = [
      "<h2>Overall</h2>",
      _table(
          ["run"]
          + [METRIC_NAMES[m] for m in ni_metrics.METRICS]
          + ["instances"],
          rows,
          classes,
      ),
  ]
  skipped = runs[0].baselines.get("skipped", {})
  for name, why in skipped.items():
    parts.append(
        f'<p class="note">{_esc(BASELINE_NAMES[name])}: not scored, {_esc(why)}</p>'
    )
  if shared is not None:
    parts.append(
        _figure_html(
            "chart-overall",
            overall_chart(runs, shared),
            "Exact match and ROUGE-L of "
            + ("this run" if len(runs) == 1 else "each run")
            + " and of the copy-input / copy-demo baselines on the same instances "
            "(hatched).",
        )
    )
  else:
    parts.append(
        _figure_html(
            "chart-overall",
            overall_chart(runs, {}),
            "Exact match and ROUGE-L of each run (the runs scored different instances, "
            "so each run's baselines are in the table only).",
        )
    )
  return "\n".join(parts)


def _baseline_rows(run, index, suffix):
  rows, classes = [], []
  for name, tables in run.baselines.get("baselines", {}).items():
    o = tables["overall"]
    rows.append(
        [_td(f"{BASELINE_NAMES[name]} baseline{suffix}")]
        + [
            _num(o[m], index, f"{BASELINES_FILE}:{name}", f"overall/{m}")
            for m in ni_metrics.METRICS
        ]
        + [_td(o["num_examples"])]
    )
    classes.append("baseline")
  return rows, classes


def _published_section(runs) -> str:
  this = "; ".join(
      f"{run.label}: {run.metrics['settings'].get('num_examples')} instances of "
      f"{run.metrics.get('track', 'default')} track split "
      f"{run.metrics['settings'].get('split')!r} "
      f"({len(run.metrics['per_task'])} tasks)"
      for run in runs
  )
  rows = [
      [_td(p.model), f'<td class="num">{p.rouge_l:.2f}</td>', _td(p.split)]
      for p in PUBLISHED_RESULTS
  ]
  return (
      '<h2>Published reference figures</h2><div class="published">'
      '<p class="note">Published in the Super-NaturalInstructions paper (Wang et al., '
      "2022), ROUGE-L on the full official test split of the track named (up to 100 "
      "instances per task). <b>Not measured by this report's runs</b>, which scored "
      f"other instances: {_esc(this)}.</p>"
      + _table(["model (published)", "ROUGE-L", "split"], rows)
      + "</div>"
  )


def _category_section(runs) -> str:
  shared = _shared_baselines(runs)
  parts = [
      "<h2>Official evaluation categories</h2>",
      _figure_html(
          "chart-categories",
          category_chart(runs, shared or {}),
          "The 12 official evaluation categories, each scored with its official metric "
          "(EM: exact match). Categories without tasks in the evaluated split have no bar.",
      ),
  ]
  categories = sorted(
      {c for run in runs for c in run.metrics["per_category"]},
      key=lambda c: (ni_metrics.official_metric(c) is None, c),
  )
  header = ["category", "official metric"]
  for run in runs:
    header += [f"{run.label}: {METRIC_NAMES[m]}" for m in ni_metrics.METRICS]
  if shared:
    header += [f"{BASELINE_NAMES[n]}: headline" for n in shared]
  header += ["tasks", "instances"]
  rows = []
  for category in categories:
    metric = ni_metrics.official_metric(category)
    row = [
        _td(category),
        _td(METRIC_NAMES[metric] if metric else "- (ROUGE-L)"),
    ]
    counts = None
    for index, run in enumerate(runs):
      values = run.metrics["per_category"].get(category)
      for m in ni_metrics.METRICS:
        row.append(
            _num(
                values[m] if values else None,
                index,
                METRICS_FILE,
                f"per_category/{category}/{m}" if values else None,
            )
        )
      counts = counts or values
    for name, tables in (shared or {}).items():
      values = tables["per_category"].get(category)
      headline = metric or ni_metrics.DEFAULT_METRIC
      row.append(
          _num(
              values[headline] if values else None,
              0,
              f"{BASELINES_FILE}:{name}",
              f"per_category/{category}/{headline}" if values else None,
          )
      )
    row += [_td(counts["num_tasks"]), _td(counts["num_examples"])]
    rows.append(row)
  parts.append(_table(header, rows))
  return "\n".join(parts)


def _task_section(runs) -> str:
  shared = _shared_baselines(runs)
  tasks = sorted({t for run in runs for t in run.metrics["per_task"]})
  single = len(runs) == 1
  header = ["task", "category", "metric"]
  if single:
    header += ["score"] + [METRIC_NAMES[m] for m in ni_metrics.METRICS]
  else:
    header += [f"{run.label}: score" for run in runs]
  if shared:
    header += [f"{BASELINE_NAMES[n]}: score" for n in shared]
  header += ["instances"]
  rows = []
  for task in tasks:
    first = next(
        run.metrics["per_task"][task]
        for run in runs
        if task in run.metrics["per_task"]
    )
    row = [
        _td(task),
        _td(first["category"]),
        _td(METRIC_NAMES[first["metric"]]),
    ]
    for index, run in enumerate(runs):
      values = run.metrics["per_task"].get(task)
      keys = ("score",) + (ni_metrics.METRICS if single else ())
      for key in keys:
        row.append(
            _num(
                values[key] if values else None,
                index,
                METRICS_FILE,
                f"per_task/{task}/{key}" if values else None,
            )
        )
    for name, tables in (shared or {}).items():
      values = tables["per_task"].get(task)
      row.append(
          _num(
              values["score"] if values else None,
              0,
              f"{BASELINES_FILE}:{name}",
              f"per_task/{task}/score" if values else None,
          )
      )
    row.append(_td(first["num_examples"]))
    rows.append(row)
  return (
      "<h2>Per task</h2>"
      '<p class="note">Score: the official metric of the task\'s category, ROUGE-L for '
      "tasks of other categories.</p>" + _table(header, rows)
  )


def _settings_rows(settings: Mapping[str, Any]) -> List[Tuple[str, str]]:
  rows = []
  for key in (
      "checkpoint",
      "step",
      "mixture_or_task_name",
      "track",
      "split",
      "encoding",
      "ni_dir",
      "num_examples",
      "batch_size",
      "input_buckets",
      "decode_seconds",
      "examples_per_second",
      "output_dir",
  ):
    if key in settings:
      rows.append((key, settings[key]))
  for key, value in (settings.get("decode_config") or {}).items():
    rows.append((f"decode_config.{key}", value))
  shown = {k for k, _ in rows} | {"decode_config"}
  rows += [(k, v) for k, v in settings.items() if k not in shown]
  return rows


def _settings_section(runs) -> str:
  parts = ["<h2>Decoding settings and checkpoints</h2>"]
  keys = []
  per_run = []
  for run in runs:
    rows = dict(_settings_rows(run.metrics["settings"]))
    per_run.append(rows)
    keys += [k for k in rows if k not in keys]
  rows = [
      [_td(key)]
      + [
          _td(
              json.dumps(r[key])
              if isinstance(r.get(key), list)
              else r.get(key, "-")
          )
          for r in per_run
      ]
      for key in keys
  ]
  parts.append(_table(["setting"] + [run.label for run in runs], rows))
  return "\n".join(parts)


def _training_section(run: TrainingRun, index: int) -> str:
  parts = [
      f"<h2>Training: {_esc(run.label)}</h2>",
      f'<p class="note">{_esc(run.path)}</p>',
  ]
  loss = [
      (f"{name} {tag}", points)
      for name in ("train", "eval")
      for tag, points in run.scalars.get(name, {}).items()
      if tag == "loss" and points
  ]
  if loss:
    parts.append(
        _figure_html(
            f"chart-loss-{index}",
            _line_chart(loss, "loss"),
            "Loss over training steps, from the TensorBoard scalars in "
            + ", ".join(f"{n}/" for n in run.scalars),
        )
    )
  else:
    parts.append('<p class="note">No loss scalars in train/ or eval/.</p>')
  if run.generation:
    series = [
        (
            METRIC_NAMES[m],
            [(step, metrics["overall"][m]) for step, metrics in run.generation],
        )
        for m in ni_metrics.METRICS
    ]
    parts.append(
        _figure_html(
            f"chart-generation-{index}",
            _line_chart(series, "score (0-100)", score=True),
            f"Generation metrics over steps, from {GENERATION_EVAL_DIR}/step_<N>/"
            f"{METRICS_FILE}.",
        )
    )
    rows = [
        [_td(step)]
        + [
            _num(
                metrics["overall"][m],
                f"training-{index}",
                f"{GENERATION_EVAL_DIR}/step_{step}/{METRICS_FILE}",
                f"overall/{m}",
            )
            for m in ni_metrics.METRICS
        ]
        + [_td(metrics["overall"]["num_examples"])]
        for step, metrics in run.generation
    ]
    parts.append(
        _table(
            ["step"]
            + [METRIC_NAMES[m] for m in ni_metrics.METRICS]
            + ["instances"],
            rows,
        )
    )
  elif generation_scalars := [
      (tag, points)
      for tag, points in sorted(run.scalars.get("eval", {}).items())
      if tag.startswith("generation/")
  ]:
    # A run whose MODEL_DIR is remote logs the generation metrics only as scalars.
    parts.append(
        _figure_html(
            f"chart-generation-{index}",
            _line_chart(generation_scalars, "score (0-100)", score=True),
            "Generation metrics over steps, from the generation/<metric> scalars in eval/.",
        )
    )
  else:
    parts.append(
        f'<p class="note">No generation evaluations ({GENERATION_EVAL_DIR}/ or '
        "generation/ scalars in eval/).</p>"
    )
  return "\n".join(parts)


def render(
    eval_runs: Sequence[EvalRun],
    training_runs: Sequence[TrainingRun] = (),
    title: str = "tkx evaluation report",
) -> str:
  """The report as one self-contained HTML document."""
  if not eval_runs and not training_runs:
    raise ReportInputError(
        "a report needs at least one evaluation or training run"
    )
  parts = [
      "<!DOCTYPE html>",
      '<html lang="en"><head><meta charset="utf-8">',
      '<meta name="viewport" content="width=device-width, initial-scale=1">',
      f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>",
      f"<h1>{_esc(title)}</h1>",
  ]
  if eval_runs:
    parts.append(
        '<p class="note">Runs: '
        + "; ".join(
            f"<b>{_esc(r.label)}</b> ({_esc(r.path)})" for r in eval_runs
        )
        + f". Model numbers are those of each run's {METRICS_FILE}; baselines are "
        f"scored on the run's own instances ({BASELINES_FILE}).</p>"
    )
    parts += [
        _overall_section(eval_runs),
        _category_section(eval_runs),
        _published_section(eval_runs),
        _task_section(eval_runs),
        _settings_section(eval_runs),
    ]
  for index, run in enumerate(training_runs):
    parts.append(_training_section(run, index))
  parts.append("</body></html>\n")
  return "\n".join(parts)


def write_report(
    path: str,
    eval_runs: Sequence[EvalRun],
    training_runs: Sequence[TrainingRun] = (),
    title: str = "tkx evaluation report",
) -> str:
  _write_text(path, render(eval_runs, training_runs, title))
  return path


def write_eval_report(
    output_dir: str,
    label: Optional[str] = None,
    scores: Optional[BaselineScores] = None,
) -> str:
  """After `tkx eval` wrote `output_dir`: baselines.json and report.html there."""
  write_baselines(output_dir, scores)
  run = load_eval_run(
      output_dir, label or posixpath.basename(storage.normpath(output_dir))
  )
  return write_report(
      storage.join(output_dir, REPORT_FILE),
      [run],
      title=f"tkx eval: {run.label}",
  )


def write_sweep_report(output_dir: str, encodings: Sequence[str]) -> str:
  """After `tkx eval --encodings` wrote `output_dir/<encoding>/`: one report comparing them."""
  runs = [
      load_eval_run(storage.join(output_dir, encoding), encoding)
      for encoding in encodings
  ]
  return write_report(
      storage.join(output_dir, REPORT_FILE),
      runs,
      title="tkx eval: instruction encodings " + ", ".join(encodings),
  )
