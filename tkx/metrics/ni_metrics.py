"""The Super-NaturalInstructions metrics, as Tk-Instruct's `compute_metrics.py` computes them.

- Exact match after SQuAD-style normalisation *without* article removal:
  lower-case, drop `string.punctuation`, collapse whitespace.
- ROUGE-1 and ROUGE-L F-measure from `rouge_score`: on the default track with
  its default tokenizer and the Porter stemmer; on the x-lingual track with
  GPT-2 byte-level BPE tokens stripped of "Ġ" (see `xlingual_tokenizer`), no stemming.
- ROUGE is computed as rouge_score does (its tokenizers, its F formula), with
  each text tokenised once and the LCS found bit-parallel: the same numbers,
  much faster on long inputs (tests compare with `rouge_score.RougeScorer`).
- Each example scores the maximum over its references; a metric is the mean
  over examples x 100, rounded to 4 decimals (per group when grouped).
- Categories are a task's first `Categories` entry; grouped keys follow the
  original `"{metric}_for_{group}"`, with categories keyed as lower-case words
  joined by "_" (e.g. `exact_match_for_textual_entailment`).
- The 12 official evaluation categories each have one official metric
  (`OFFICIAL_CATEGORY_METRICS`). Tasks of other categories are reported with
  ROUGE-L as their headline metric (the paper's aggregate metric); the original
  script has no rule for them because its test set has none.
"""

import collections
import functools
import string

from rouge_score import rouge_scorer
from rouge_score import scoring
from rouge_score import tokenizers

from tkx import errors, io_utils

METRICS = ("exact_match", "rouge1", "rougeL")
DEFAULT_METRIC = "rougeL"
OFFICIAL_CATEGORY_METRICS = {
    "Textual Entailment": "exact_match",
    "Cause Effect Classification": "exact_match",
    "Coreference Resolution": "exact_match",
    "Dialogue Act Recognition": "exact_match",
    "Answerability Classification": "exact_match",
    "Word Analogy": "exact_match",
    "Overlap Extraction": "rougeL",
    "Keyword Tagging": "rougeL",
    "Question Rewriting": "rougeL",
    "Title Generation": "rougeL",
    "Data to Text": "rougeL",
    "Grammar Error Correction": "rougeL",
}
_PUNCTUATION = frozenset(string.punctuation)


def category_key(category):
  """ "Textual Entailment" -> "textual_entailment" (the original's grouping key)."""
  return "_".join(category.lower().split())


def official_metric(category):
  """The official metric of one of the 12 evaluation categories, else None."""
  by_key = {category_key(c): m for c, m in OFFICIAL_CATEGORY_METRICS.items()}
  return by_key.get(category_key(category))


def normalize_answer(text):
  """Lower-case, remove punctuation, collapse whitespace (articles are kept)."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(text.split())


def exact_match_score(prediction, reference, xlingual=False):
  del xlingual  # the same on both tracks
  return normalize_answer(prediction) == normalize_answer(reference)


@functools.lru_cache(maxsize=None)
def _scorer(rouge_type, xlingual):
  """rouge_score's own scorer, configured as the original (kept as the reference implementation)."""
  if xlingual:
    from tkx.metrics import xlingual_tokenizer  # pylint: disable=g-import-not-at-top

    return rouge_scorer.RougeScorer(
        [rouge_type], tokenizer=xlingual_tokenizer.get_xlingual_tokenizer()
    )
  return rouge_scorer.RougeScorer([rouge_type], use_stemmer=True)


@functools.lru_cache(maxsize=None)
def _tokenizer(xlingual):
  if xlingual:
    from tkx.metrics import xlingual_tokenizer  # pylint: disable=g-import-not-at-top

    return xlingual_tokenizer.get_xlingual_tokenizer()
  return tokenizers.DefaultTokenizer(
      use_stemmer=True
  )  # what RougeScorer(use_stemmer=True) builds


@functools.lru_cache(maxsize=16384)
def _tokens(text, xlingual):
  # A prediction meets every reference of its example: tokenise (and stem) it once.
  return tuple(_tokenizer(xlingual).tokenize(text))


def _lcs_length(a, b):
  """Length of the longest common subsequence, bit-parallel (Allison-Dix / Crochemore et al.).

  Equal to rouge_score's O(len(a) * len(b)) table, in O(len(b)) big-int operations.
  """
  if len(a) < len(b):
    a, b = b, a
  matches = {}
  for i, token in enumerate(a):
    matches[token] = matches.get(token, 0) | (1 << i)
  full = (1 << len(a)) - 1
  v = full
  for token in b:
    u = v & matches.get(token, 0)
    v = ((v + u) | (v - u)) & full
  return len(a) - v.bit_count()


def _rouge_fmeasures(prediction, reference, xlingual):
  """(ROUGE-1 F, ROUGE-L F) exactly as rouge_score computes them, tokenising each text once."""
  pred, ref = _tokens(prediction, xlingual), _tokens(reference, xlingual)
  overlap = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  rouge1 = scoring.fmeasure(
      overlap / max(len(pred), 1), overlap / max(len(ref), 1)
  )
  if not pred or not ref:
    return rouge1, 0
  lcs = _lcs_length(ref, pred)
  return rouge1, scoring.fmeasure(lcs / len(pred), lcs / len(ref))


def rouge1_score(prediction, reference, xlingual=False):
  return _rouge_fmeasures(prediction, reference, xlingual)[0]


def rougeL_score(prediction, reference, xlingual=False):  # pylint: disable=invalid-name
  return _rouge_fmeasures(prediction, reference, xlingual)[1]


_SCORE_FNS = {
    "exact_match": exact_match_score,
    "rouge1": rouge1_score,
    "rougeL": rougeL_score,
}


def metric_max_over_references(
    metric_fn, prediction, references, xlingual=False
):
  return max(
      metric_fn(prediction, reference, xlingual=xlingual)
      for reference in references
  )


def _check_references(references):
  for i, refs in enumerate(references):
    if isinstance(refs, str) or not isinstance(refs, (list, tuple)):
      raise TypeError(
          f"references[{i}] must be a list of strings, got {type(refs).__name__}"
      )
    if not refs:
      raise ValueError(
          f"references[{i}] is empty: every example needs at least one reference"
      )


def example_scores(predictions, references, xlingual=False, progress=False):
  """Per example: {"exact_match", "rouge1", "rougeL"} in [0, 1], each the max over the references."""
  if len(predictions) != len(references):
    raise ValueError(
        f"# of predictions {len(predictions)} doesn't match # of references {len(references)}"
    )
  _check_references(references)
  pairs = io_utils.track(
      zip(predictions, references),
      len(predictions),
      "scoring",
      "examples",
      enabled=progress,
  )
  scores = []
  for prediction, refs in pairs:
    rouges = [_rouge_fmeasures(prediction, ref, xlingual) for ref in refs]
    scores.append(
        {
            "exact_match": float(
                max(exact_match_score(prediction, ref) for ref in refs)
            ),
            "rouge1": max(r[0] for r in rouges),
            "rougeL": max(r[1] for r in rouges),
        }
    )
  return scores


def aggregate(scores):
  """Mean of per-example scores x100, rounded to 4 decimals (summed in example order, as the original)."""
  if not scores:
    raise errors.InputFileError("no predictions to score")
  totals = dict.fromkeys(METRICS, 0.0)
  for example in scores:
    for metric in METRICS:
      totals[metric] += example[metric]
  return {
      metric: round(100.0 * total / len(scores), 4)
      for metric, total in totals.items()
  }


def _grouped(scores, groups):
  by_group = collections.defaultdict(list)
  for example, group in zip(scores, groups):
    by_group[group].append(example)
  return {
      group: aggregate(group_scores) for group, group_scores in by_group.items()
  }


def compute_metrics(predictions, references, xlingual=False):
  """{"exact_match", "rouge1", "rougeL"}: mean over examples of the max over references, x100, 4 decimals."""
  return aggregate(example_scores(predictions, references, xlingual))


def compute_grouped_metrics(predictions, references, groups, xlingual=False):
  """compute_metrics per group, keyed "{metric}_for_{group}" as in the original."""
  if not len(predictions) == len(references) == len(groups):
    raise ValueError(
        f"lengths differ: {len(predictions)} predictions, {len(references)} references, "
        f"{len(groups)} groups"
    )
  results = {}
  for group, metrics in _grouped(
      example_scores(predictions, references, xlingual), groups
  ).items():
    for metric, value in metrics.items():
      results[f"{metric}_for_{group}"] = value
  return results


def _record_fields(record, index):
  """(task, category, references, prediction) of one Tk-Instruct predictions record."""
  where = f"record {index}"
  try:
    task = record["Task"]
    references = record["Instance"]["output"]
  except (KeyError, TypeError) as e:
    raise errors.InputFileError(
        f"{where}: missing field {e} (need Task, Instance.output, prediction)"
    ) from None
  if "prediction" in record:
    prediction = record["prediction"]
  elif "Prediction" in record:  # older Tk-Instruct files
    prediction = record["Prediction"]
  else:
    raise errors.InputFileError(
        f"{where} (task {task}): missing field 'prediction'"
    )
  categories = record.get("Categories")
  if (
      not categories
      or not isinstance(categories, list)
      or not isinstance(categories[0], str)
  ):
    raise errors.InputFileError(
        f"{where} (task {task}): field 'Categories' must be a non-empty list of strings"
    )
  if not isinstance(prediction, str):
    raise errors.InputFileError(
        f"{where} (task {task}): field 'prediction' must be a string"
    )
  if (
      isinstance(references, str)
      or not isinstance(references, list)
      or not references
      or not all(isinstance(r, str) for r in references)
  ):
    raise errors.InputFileError(
        f"{where} (task {task}): field 'Instance.output' must be a non-empty list of strings"
    )
  return task, categories[0], references, prediction


def score_predictions(records, xlingual=False, progress=False):
  """Overall, per-category and per-task tables for Tk-Instruct predictions records.

  Each record needs `Task`, `Categories`, `Instance.output` (references) and
  `prediction`. Returns
    {"track", "overall": {metrics..., "num_examples"},
     "per_category": {category: {metrics..., "num_examples", "num_tasks", "official_metric"}},
     "per_task": {task: {metrics..., "num_examples", "category", "metric", "score"}},
     "official_categories": {category: {"metric", "score"}}  (the 12 present),
     "flat": {...}  the original script's keys (exact_match, rougeL_for_<category>, ...)}
  """
  rows = [_record_fields(record, i) for i, record in enumerate(records)]
  if not rows:
    raise errors.InputFileError("no predictions to score")
  tasks, categories, references, predictions = (
      list(column) for column in zip(*rows)
  )
  # As the original, categories group by their key ("Textual Entailment" ~ "textual  entailment");
  # tables show the first spelling seen.
  display_name = {}
  for category in categories:
    display_name.setdefault(category_key(category), category)
  category_keys = [category_key(c) for c in categories]
  # Every example is scored once; overall, category and task tables aggregate the same scores.
  scores = example_scores(predictions, references, xlingual, progress=progress)
  overall = aggregate(scores)
  by_category = _grouped(scores, category_keys)
  by_task = _grouped(scores, tasks)
  category_of_task = {
      task: display_name[key] for task, key in zip(tasks, category_keys)
  }
  counts_by_key = collections.Counter(category_keys)
  counts_by_task = collections.Counter(tasks)

  per_category, official = {}, {}
  for key in sorted(counts_by_key):
    category = display_name[key]
    metrics = by_category[key]
    metric = official_metric(category)
    per_category[category] = dict(
        metrics,
        num_examples=counts_by_key[key],
        num_tasks=sum(1 for c in category_of_task.values() if c == category),
        official_metric=metric,
    )
    if metric:
      official[category] = {"metric": metric, "score": metrics[metric]}
  per_task = {}
  for task in sorted(counts_by_task):
    metrics = by_task[task]
    metric = official_metric(category_of_task[task]) or DEFAULT_METRIC
    per_task[task] = dict(
        metrics,
        num_examples=counts_by_task[task],
        category=category_of_task[task],
        metric=metric,
        score=metrics[metric],
    )

  flat = dict(overall)
  for category in per_category:
    for m in METRICS:
      flat[f"{m}_for_{category_key(category)}"] = per_category[category][m]
  for task in per_task:
    for m in METRICS:
      flat[f"{m}_for_{task}"] = per_task[task][m]
  return {
      "track": "xlingual" if xlingual else "default",
      "overall": dict(overall, num_examples=len(rows)),
      "per_category": per_category,
      "per_task": per_task,
      "official_categories": official,
      "flat": flat,
  }


def format_tables(results):
  """Aligned plain-text tables of `score_predictions` output."""

  def table(title, header, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths))
    )
    return "\n".join(
        [title, line(header), line(["-" * w for w in widths])]
        + [line(r) for r in rows]
    )

  fmt = lambda v: f"{v:.4f}"  # noqa: E731
  o = results["overall"]
  parts = [
      table(
          f"== Overall ({results['track']} track) ==",
          ["", "exact_match", "rouge1", "rougeL", "examples"],
          [
              [
                  "all",
                  fmt(o["exact_match"]),
                  fmt(o["rouge1"]),
                  fmt(o["rougeL"]),
                  o["num_examples"],
              ]
          ],
      )
  ]
  parts.append(
      table(
          "== Per category ==",
          [
              "category",
              "exact_match",
              "rouge1",
              "rougeL",
              "official",
              "tasks",
              "examples",
          ],
          [
              [
                  c,
                  fmt(v["exact_match"]),
                  fmt(v["rouge1"]),
                  fmt(v["rougeL"]),
                  v["official_metric"] or "-",
                  v["num_tasks"],
                  v["num_examples"],
              ]
              for c, v in results["per_category"].items()
          ],
      )
  )
  parts.append(
      table(
          "== Per task ==",
          ["task", "metric", "score", "exact_match", "rougeL", "examples"],
          [
              [
                  t,
                  v["metric"],
                  fmt(v["score"]),
                  fmt(v["exact_match"]),
                  fmt(v["rougeL"]),
                  v["num_examples"],
              ]
              for t, v in results["per_task"].items()
          ],
      )
  )
  return "\n\n".join(parts) + "\n"
