"""`tkx eval`: SeqIO evaluator over the embedded test mixture; tables, predictions, summaries."""

import glob
import json
import os

import pytest

from tkx import cli, evaluate, gin_utils

FAST = [
    "--max_decode_length",
    "5",
    "--max_input_length",
    "256",
    "--no_progress",
]


def _scalar_tags(log_dir):
  import tensorflow as tf

  tags = {}
  for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags[value.tag] = (
            event.step,
            float(tf.make_ndarray(value.tensor)),
            value.metadata.plugin_data.plugin_name,
        )
  return tags


def test_eval_reports_overall_category_and_task_tables(
    tiny_checkpoint, tmp_path, embedded_ni_dir, capsys
):
  out_dir = tmp_path / "eval"
  assert (
      cli.main(
          [
              "eval",
              "--checkpoint",
              tiny_checkpoint,
              "--track",
              "default",
              "--encoding",
              "def_pos2",
              "--split",
              "test",
              "--output_dir",
              str(out_dir),
          ]
          + FAST
      )
      == 0
  )
  printed = capsys.readouterr().out
  assert "== Per task ==" in printed and "== Per category ==" in printed

  results = json.loads((out_dir / evaluate.METRICS_FILE).read_text())
  test_tasks = (
      (embedded_ni_dir / "splits" / "default" / "test_tasks.txt")
      .read_text()
      .split()
  )
  assert sorted(results["per_task"]) == sorted(test_tasks)
  assert (
      results["settings"]["step"] == 11
      and results["settings"]["encoding"] == "def_pos2"
  )
  # The split is one stream (one SeqIO task over its source); SeqIO's metric fns over it
  # and the table scorer's overall numbers agree.
  ((name, seqio_metrics),) = results["seqio_task_metrics"].items()
  assert name == "ni_default_test_def_pos2_all_tasks"
  for metric in ("exact_match", "rouge1", "rougeL"):
    assert seqio_metrics[metric] == pytest.approx(
        results["overall"][metric], abs=1e-3
    )

  # The predictions file is in Tk-Instruct's format: `tkx score` gives the same tables.
  assert (
      cli.main(
          [
              "score",
              "--predictions",
              str(out_dir / evaluate.PREDICTIONS_FILE),
              "--json",
              str(tmp_path / "rescored.json"),
          ]
      )
      == 0
  )
  rescored = json.loads((tmp_path / "rescored.json").read_text())
  assert (
      rescored["per_task"] == results["per_task"]
      and rescored["overall"] == results["overall"]
  )

  tags = _scalar_tags(str(out_dir / evaluate.SUMMARY_DIR))
  assert tags["overall/rougeL"][:2] == (
      11,
      pytest.approx(results["overall"]["rougeL"]),
  )
  assert tags["overall/rougeL"][2] == "scalars"
  for task in test_tasks:
    assert f"task/{task}/exact_match" in tags


def test_eval_with_the_run_gin_file(tiny_checkpoint, tmp_path):
  out_dir = tmp_path / "gin_eval"
  assert (
      cli.main(
          [
              "eval",
              "--gin_file=gin_configs/runs/eval.gin",
              f"--gin.CHECKPOINT_PATH='{tiny_checkpoint}'",
              f"--gin.EVAL_OUTPUT_DIR='{out_dir}'",
              "--gin.MAX_DECODE_LENGTH=4",
              "--gin.MAX_INPUT_LENGTH=256",
              "--gin.ENCODING='def'",
              "--no_progress",
          ]
      )
      == 0
  )
  results = json.loads((out_dir / evaluate.METRICS_FILE).read_text())
  assert results["settings"]["encoding"] == "def"
  assert results["settings"]["decode_config"]["max_decode_length"] == 4
  assert results["settings"]["input_buckets"] == [128, 256]
  records = [
      json.loads(line)
      for line in (out_dir / evaluate.PREDICTIONS_FILE).read_text().splitlines()
  ]
  assert len(records) == results["overall"]["num_examples"] > 0


def test_eval_default_output_dir_names_the_gin_bound_encoding(
    tiny_checkpoint, tmp_path
):
  import shutil

  checkpoint = tmp_path / "run"
  shutil.copytree(tiny_checkpoint, checkpoint)
  assert (
      cli.main(
          [
              "eval",
              "--checkpoint",
              str(checkpoint),
              "--gin.evaluate.evaluate.encoding='def'",
              "--max_num_instances_per_task=1",
              "--max_decode_length=2",
              "--no_progress",
          ]
      )
      == 0
  )
  results = json.loads(
      (checkpoint / "eval_default_test_def" / evaluate.METRICS_FILE).read_text()
  )
  assert results["settings"]["encoding"] == "def"


def test_eval_xlingual_track_scores_with_the_xlingual_metrics(
    tiny_checkpoint, tmp_path
):
  from tkx.metrics import ni_metrics

  out_dir = tmp_path / "xl"
  assert (
      cli.main(
          [
              "eval",
              "--checkpoint",
              tiny_checkpoint,
              "--track",
              "xlingual",
              "--encoding",
              "def",
              "--output_dir",
              str(out_dir),
          ]
          + FAST
      )
      == 0
  )
  results = json.loads((out_dir / evaluate.METRICS_FILE).read_text())
  assert results["track"] == "xlingual"
  records = [
      json.loads(line)
      for line in (out_dir / evaluate.PREDICTIONS_FILE).read_text().splitlines()
  ]
  assert (
      results["overall"]
      == ni_metrics.score_predictions(records, xlingual=True)["overall"]
  )
  # One stream over the split: SeqIO's xlingual metric fn agrees with the overall table.
  ((name, seqio_metrics),) = results["seqio_task_metrics"].items()
  assert name == "ni_xlingual_test_def_all_tasks"
  assert seqio_metrics["rougeL"] == pytest.approx(
      results["overall"]["rougeL"], abs=1e-3
  )


def test_eval_unknown_mixture_and_missing_checkpoint(tiny_checkpoint, tmp_path):
  # (ni_default_test_def_pos3 is no typo: pos3 is an encoding, which eval, as infer, registers.)
  with pytest.raises(ValueError, match="did you mean ni_default_test_def_pos2"):
    cli.run(
        [
            "eval",
            "--checkpoint",
            tiny_checkpoint,
            "--mixture",
            "ni_default_tset_def_pos2",
            "--output_dir",
            str(tmp_path),
        ]
        + FAST
    )
  with pytest.raises(ValueError, match="tkx eval needs --checkpoint"):
    cli.run(["eval"])


@pytest.mark.slow
def test_eval_of_a_tiny_model_trained_on_the_embedded_sample(tmp_path):
  """Train the tiny T5 40 steps on one sentiment task with the trainer, then evaluate it there."""
  from tkx import trainer

  task = "ni_default_train_def_pos2_task9001_tkx_review_sentiment_polarity"
  model_dir = tmp_path / "model"
  gin_utils.parse(
      ["gin_configs/experiments/embedded_tiny.gin"],
      [
          f"MODEL_DIR = '{model_dir}'",
          "TRAIN_STEPS = 40",
          f"MIXTURE_OR_TASK_NAME = '{task}'",
          "EVAL_EVERY = None",
          "EVAL_MIXTURE_OR_TASK_NAME = None",
          "SAVE_EVERY = 1000",
          "TASK_FEATURE_LENGTHS = {'inputs': 128, 'targets': 8}",
          "train_configs.CheckpointConfig.async_save = False",
      ],
  )
  trainer.train()
  out_dir = tmp_path / "eval"
  assert (
      cli.main(
          [
              "eval",
              "--checkpoint",
              str(model_dir),
              "--mixture",
              task,
              "--output_dir",
              str(out_dir),
              "--max_decode_length",
              "8",
              "--max_input_length",
              "128",
              "--no_progress",
          ]
      )
      == 0
  )
  results = json.loads((out_dir / evaluate.METRICS_FILE).read_text())
  row = results["per_task"]["task9001_tkx_review_sentiment_polarity"]
  assert row["num_examples"] == results["overall"]["num_examples"] > 0
  # A random model never writes a label; after 40 steps it answers with the labels.
  predictions = {
      json.loads(line)["prediction"]
      for line in (out_dir / evaluate.PREDICTIONS_FILE).open()
  }
  assert predictions <= {"positive", "negative"}
  assert row["exact_match"] >= 30.0
