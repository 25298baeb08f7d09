"""The two heuristic baselines of the Super-NaturalInstructions paper, as predictions files.

- copy_input: the prediction is the instance input itself.
- copy_demo: the prediction is the output of the task's first positive example.

Records follow Tk-Instruct's `predicted_examples.jsonl`: the task's fields
(`Task`, `Definition`, `Positive Examples`, `Negative Examples`, `Categories`, ...,
without `Instances`), the `Instance` {id, input, output} and the `prediction`,
so `tkx score` (or Tk-Instruct's own script) reads them like model predictions.
"""

from tkx import errors
from tkx.data import ni


def copy_input(task, instance):
  del task
  return instance["input"]


def copy_demo(task, instance):
  del instance
  return task["Positive Examples"][0]["output"]


BASELINES = {"copy_input": copy_input, "copy_demo": copy_demo}


def prediction_record(task, instance, prediction):
  """One Tk-Instruct predictions record: task fields + Instance + prediction."""
  record = {"id": instance["id"]}
  record.update((k, v) for k, v in task.items() if k != "Instances")
  record["Instance"] = {
      "id": instance["id"],
      "input": instance["input"],
      "output": instance["output"],
  }
  record["prediction"] = prediction
  return record


def baseline_records(
    ni_dir,
    kind,
    *,
    track="default",
    split="test",
    max_num_instances_per_task=None,
    seed=42,
    selection=ni.DEFAULT_SELECTION,
    skip_missing=False,
    progress=False,
):
  """Yields the baseline's prediction records for every selected instance of a split."""
  if kind not in BASELINES:
    raise errors.ConfigError(
        f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}"
    )
  predict = BASELINES[kind]
  for task, instance in ni.iter_split_instances(
      ni_dir,
      track,
      split,
      max_num_instances_per_task=max_num_instances_per_task,
      seed=seed,
      selection=selection,
      skip_missing=skip_missing,
      progress=progress,
  ):
    if kind == "copy_demo" and not task["Positive Examples"]:
      raise ni.NIDataError(
          "copy_demo needs at least one positive example",
          file=ni.task_path(ni_dir, task["Task"]),
          task=task["Task"],
          field="Positive Examples",
      )
    yield prediction_record(task, instance, predict(task, instance))


def write_baseline(ni_dir, kind, output_path, **kwargs):
  """Writes the baseline's predictions JSONL (atomically); returns the number of records."""
  from tkx import jsonl

  return jsonl.write_jsonl(
      output_path, baseline_records(ni_dir, kind, **kwargs)
  )
