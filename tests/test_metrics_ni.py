"""tkx.metrics.ni_metrics / seqio_metrics against hand-computed values.

ROUGE by hand: rouge_score's default tokenizer lower-cases, keeps [a-z0-9] runs,
and Porter-stems tokens longer than 3 characters; F = 2PR / (P + R).
"""

from fractions import Fraction

import pytest

from tkx.metrics import ni_metrics as m
from tkx.metrics import seqio_metrics


def _f(overlap, n_pred, n_ref):
  p, r = Fraction(overlap, n_pred), Fraction(overlap, n_ref)
  return float(2 * p * r / (p + r)) if overlap else 0.0


@pytest.mark.parametrize(
    "prediction,reference,same",
    [
        ("Yes.", "yes", True),
        ("  The   Cat!! ", "the cat", True),
        ("don't", "dont", True),
        ("a dog", "dog", False),  # articles are kept (unlike SQuAD)
        ("the answer", "answer", False),
        ("yes…", "yes", False),  # only ASCII string.punctuation is removed
        ("Über", "über", True),
        ("3.5", "35", True),
    ],
)
def test_exact_match_normalisation(prediction, reference, same):
  assert m.exact_match_score(prediction, reference) is same


def test_normalize_answer():
  assert m.normalize_answer("  Hello,\tWORLD!\n(again) ") == "hello world again"


def test_rouge_with_porter_stemmer_by_hand():
  # pred tokens: the, cat(s), are, run(ning); ref: a, cat, run(s) -> overlap {cat, run} = 2 of 4 / 3.
  assert m.rouge1_score("the cats are running", "a cat runs") == pytest.approx(
      _f(2, 4, 3)
  )
  assert m.rougeL_score("the cats are running", "a cat runs") == pytest.approx(
      4 / 7
  )
  # Stemming only on the default track: running ~ runs.
  assert m.rouge1_score("running", "runs") == 1.0
  assert m.rouge1_score("running", "runs", xlingual=True) == 0.0
  # Unigrams all match but the longest common subsequence is 2 of 3.
  assert m.rouge1_score("blue green red", "green blue red") == 1.0
  assert m.rougeL_score("blue green red", "green blue red") == pytest.approx(
      2 / 3
  )
  # Precision is over the prediction, recall over the reference: P 1, R 1/4 -> F 0.4.
  assert m.rougeL_score("blue", "blue sky is big") == pytest.approx(_f(1, 1, 4))
  assert (
      m._scorer("rougeL", False)
      .score(target="blue sky is big", prediction="blue")["rougeL"]
      .recall
      == 0.25
  )
  assert m.rouge1_score("", "anything") == 0.0


def test_max_over_references():
  assert (
      m.metric_max_over_references(
          m.exact_match_score, "green", ["red", "Green."]
      )
      is True
  )
  # "green" vs "green light": P 1, R 1/2 -> 2/3; vs "red": 0.
  assert m.metric_max_over_references(
      m.rouge1_score, "green", ["red", "green light"]
  ) == pytest.approx(2 / 3)


def test_compute_metrics_is_mean_x100_rounded_to_4_decimals():
  predictions = ["Yes", "blue green red", "the cats are running"]
  references = [["no", "yes"], ["green blue red"], ["a cat runs"]]
  got = m.compute_metrics(predictions, references)
  assert set(got) == {"exact_match", "rouge1", "rougeL"}
  assert got["exact_match"] == 33.3333
  assert got["rouge1"] == round(100 * (1 + 1 + 4 / 7) / 3, 4) == 85.7143
  assert got["rougeL"] == round(100 * (1 + 2 / 3 + 4 / 7) / 3, 4) == 74.6032


def test_compute_metrics_rejects_bad_input():
  with pytest.raises(
      ValueError, match="# of predictions 1 doesn't match # of references 2"
  ):
    m.compute_metrics(["a"], [["a"], ["b"]])
  with pytest.raises(TypeError, match=r"references\[0\] must be a list"):
    m.compute_metrics(["a"], ["a"])
  with pytest.raises(ValueError, match=r"references\[0\] is empty"):
    m.compute_metrics(["a"], [[]])


def test_grouped_metrics_keys_and_values():
  got = m.compute_grouped_metrics(
      ["yes", "no", "maybe"],
      [["yes"], ["yes"], ["maybe"]],
      ["task_a", "task_a", "task_b"],
  )
  assert got["exact_match_for_task_a"] == 50.0
  assert got["exact_match_for_task_b"] == 100.0
  assert set(got) == {
      f"{k}_for_{g}"
      for k in ("exact_match", "rouge1", "rougeL")
      for g in ("task_a", "task_b")
  }


def test_official_category_metrics():
  em = {
      "Textual Entailment",
      "Cause Effect Classification",
      "Coreference Resolution",
      "Dialogue Act Recognition",
      "Answerability Classification",
      "Word Analogy",
  }
  rl = {
      "Overlap Extraction",
      "Keyword Tagging",
      "Question Rewriting",
      "Title Generation",
      "Data to Text",
      "Grammar Error Correction",
  }
  assert {
      c for c, v in m.OFFICIAL_CATEGORY_METRICS.items() if v == "exact_match"
  } == em
  assert {
      c for c, v in m.OFFICIAL_CATEGORY_METRICS.items() if v == "rougeL"
  } == rl
  assert m.official_metric("textual  entailment") == "exact_match"
  assert m.official_metric("Sentiment Analysis") is None
  assert (
      m.category_key("Cause Effect Classification")
      == "cause_effect_classification"
  )


def _record(task, category, refs, prediction):
  return {
      "Task": task,
      "Categories": [category, "Other"],
      "Instance": {"id": "x", "input": "i", "output": refs},
      "prediction": prediction,
  }


def test_score_predictions_tables():
  records = [
      _record("t1_entail", "Textual Entailment", ["yes"], "yes"),
      _record("t1_entail", "Textual Entailment", ["no"], "yes"),
      _record(
          "t2_title",
          "Title Generation",
          ["City Council Approves Park"],
          "council approves new park",
      ),
      _record("t3_sent", "Sentiment Analysis", ["positive"], "Positive."),
      _record("t4_entail", "textual entailment", ["no"], "no"),
  ]
  got = m.score_predictions(records)
  assert got["overall"]["num_examples"] == 5
  # Title: pred {council, approv, new, park} vs ref {citi, council, approv, park}: 3 of 4 / 4.
  title = _f(3, 4, 4)
  assert got["overall"]["exact_match"] == 60.0
  assert got["overall"]["rougeL"] == round(100 * (1 + 0 + title + 1 + 1) / 5, 4)
  # Categories group by key: both spellings of textual entailment are one category of 2 tasks.
  assert set(got["per_category"]) == {
      "Textual Entailment",
      "Title Generation",
      "Sentiment Analysis",
  }
  te = got["per_category"]["Textual Entailment"]
  assert (
      te["exact_match"],
      te["num_examples"],
      te["num_tasks"],
      te["official_metric"],
  ) == (pytest.approx(66.6667), 3, 2, "exact_match")
  assert got["official_categories"] == {
      "Textual Entailment": {"metric": "exact_match", "score": 66.6667},
      "Title Generation": {"metric": "rougeL", "score": round(100 * title, 4)},
  }
  assert (
      got["per_task"]["t1_entail"]["score"] == 50.0
      and got["per_task"]["t1_entail"]["metric"] == "exact_match"
  )
  assert (
      got["per_task"]["t3_sent"]["metric"] == "rougeL"
  )  # not an official category: ROUGE-L headline
  assert got["flat"]["exact_match_for_textual_entailment"] == 66.6667
  assert got["flat"]["rougeL_for_t2_title"] == round(100 * title, 4)
  text = m.format_tables(got)
  assert (
      "== Per category ==" in text and "t2_title" in text and "66.6667" in text
  )


def test_score_predictions_names_the_bad_record():
  bad = _record("t1", "Textual Entailment", ["yes"], "yes")
  del bad["prediction"]
  with pytest.raises(
      ValueError, match=r"record 1 \(task t1\): missing field 'prediction'"
  ):
    m.score_predictions(
        [_record("t1", "Textual Entailment", ["yes"], "yes"), bad]
    )


def test_seqio_metric_functions():
  targets = [["yes", "Yes!"], "no", [b"green blue red"]]
  predictions = ["yes", "maybe", b"blue green red"]
  got = seqio_metrics.ni_metrics(targets, predictions)
  assert got == {
      "exact_match": 33.3333,
      "rouge1": 66.6667,
      "rougeL": round(100 * (1 + 0 + 2 / 3) / 3, 4),
  }
  # x-lingual: no stemming, GPT-2 tokens.
  assert (
      seqio_metrics.ni_metrics_xlingual([["runs"]], ["running"])["rouge1"]
      == 0.0
  )
  assert seqio_metrics.ni_metrics([["runs"]], ["running"])["rouge1"] == 100.0


def test_lcs_matches_rouge_score_table_on_random_sequences():
  import random
  from rouge_score import rouge_scorer

  rng = random.Random(0)
  for _ in range(300):
    a = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
    b = [rng.choice("abcdef") for _ in range(rng.randint(0, 70))]
    expected = rouge_scorer._lcs_table(a, b)[-1][-1] if a and b else 0
    assert m._lcs_length(a, b) == expected


def _reference_scores(prediction, reference, xlingual):
  return tuple(
      m._scorer(t, xlingual)
      .score(target=reference, prediction=prediction)[t]
      .fmeasure
      for t in ("rouge1", "rougeL")
  )


def test_fast_rouge_equals_rouge_score_exactly_on_real_text(shared_ni_dir):
  """Same floats as rouge_score.RougeScorer (both tracks) on real NI inputs/outputs, English and Finnish."""
  import json

  names = sorted(p.name for p in (shared_ni_dir / "tasks").glob("*.json"))
  english = [n for n in names if not n.endswith("_fi.json")][:6]
  finnish = [n for n in names if n.endswith("_fi.json")][:4]
  pairs = []
  for name in english + finnish:
    task = json.loads(
        (shared_ni_dir / "tasks" / name).read_text(encoding="utf-8")
    )
    for inst in task["Instances"][:15]:
      # Input vs output (copy-input style) and output vs output; cut long inputs to keep rouge_score quick.
      pairs.append((inst["input"][:300], inst["output"][0]))
      pairs.append((task["Positive Examples"][0]["output"], inst["output"][0]))
  assert len(pairs) > 200
  for prediction, reference in pairs:
    for xlingual in (False, True):
      assert m._rouge_fmeasures(
          prediction, reference, xlingual
      ) == _reference_scores(prediction, reference, xlingual), (
          prediction,
          reference,
          xlingual,
      )
