"""Evaluation of a test mixture with `seqio.Evaluator` and the NI metrics.

`seqio.Evaluator` builds and caches each task's examples, calls our predict
function, decodes the tokens with the task vocabulary, applies the task
postprocessor (which hands the metric functions every reference) and runs the
task's metric functions (`tkx.metrics.seqio_metrics.ni_metrics`): that gives
per-task metrics exactly as SeqIO computes them. All tasks are decoded in one
length-bucketed pass first (`tkx.infer.Predictor`), so batches stay full across
task boundaries; the evaluator's per-task predict calls then read the result.

The predictions are also written as Tk-Instruct's `predicted_examples.jsonl`
and scored with `tkx.metrics.ni_metrics.score_predictions` for the overall,
per-category and per-task tables (the numbers the Tk-Instruct scoring script
gives on the same file). Outputs in `output_dir`:
  predicted_examples.jsonl   one record per instance
  metrics.json               {"overall", "per_category", "per_task", "official_categories",
                              "flat", "seqio_task_metrics", "settings"}
  eval/                      TensorBoard summaries (tf.summary) at the checkpoint's step
"""

import dataclasses
import json
import logging
import os
import re
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import gin
import numpy as np

from tkx import errors, infer, io_utils, jsonl, multihost, storage
from tkx.checkpoints import directory, layout

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predicted_examples.jsonl"
METRICS_FILE = "metrics.json"
SUMMARY_DIR = "eval"


def _input_ids(features: Mapping[str, Any]) -> List[int]:
  """The unpadded encoder ids of a cached task example (they end in EOS)."""
  return [int(t) for t in features["inputs"]]


def _decode_every_task(
    predictor,
    evaluator,
    eval_tasks,
    mixture_or_task_name,
    split,
    max_input_length,
    progress,
):
  """One decoding pass over every task's examples (an NI mixture: one stream over its source).

  Returns ({SeqIO task: [((NI task, instance id), input ids)]}, {SeqIO task: output ids}).
  """
  examples = {}
  for task in eval_tasks:
    examples[task.name] = [
        (infer.example_key(ex), _input_ids(ex))
        for ex in evaluator.cached_task_datasets[task.name].as_numpy_iterator()
    ]
  flat = [ids for task in eval_tasks for _, ids in examples[task.name]]
  log.info(
      "%s: %d examples of %d NI tasks (split %s)",
      mixture_or_task_name,
      len(flat),
      len({k[0] for t in eval_tasks for k, _ in examples[t.name]}),
      split,
  )
  infer.warn_full_budget(flat, max_input_length, mixture_or_task_name)
  outputs = predictor.predict_ids(
      flat, progress=progress, desc=f"eval {mixture_or_task_name}"
  )
  outputs_by_task, offset = {}, 0
  for task in eval_tasks:
    n = len(examples[task.name])
    outputs_by_task[task.name] = outputs[offset : offset + n]
    offset += n
  return examples, outputs_by_task


def _seqio_metrics(evaluator, eval_tasks, outputs_by_task, predictor, step):
  """SeqIO's own metrics of the decoded outputs, {task: {metric: value}}."""
  # The evaluator hands predict_fn each task's cached, enumerated model dataset.
  task_of_dataset = {
      id(evaluator.cached_model_datasets[t.name]): t.name for t in eval_tasks
  }
  width = predictor.decode_config.max_decode_length + 1
  eos = predictor.eos_id

  def predict_fn(dataset, model_feature_shapes=None):
    # Fixed-width rows as t5x returns them (SeqIO stacks them): ids, EOS, padding.
    del model_feature_shapes
    task_outputs = outputs_by_task[task_of_dataset[id(dataset)]]
    rows = []
    for index, _ in dataset.as_numpy_iterator():
      row = np.zeros(width, np.int32)
      ids = task_outputs[int(index)] + [eos]
      row[: len(ids)] = ids
      rows.append((int(index), row))
    return rows

  metrics_future, _ = evaluator.evaluate(
      compute_metrics=True, step=step, predict_fn=predict_fn
  )
  seqio_task_metrics = {
      name: {k: float(v) for k, v in metrics.items()}
      for name, metrics in metrics_future.result().items()
  }
  evaluator.close()
  return seqio_task_metrics


def run_evaluation(
    predictor: "infer.Predictor",
    vocabulary,
    mixture_or_task_name: str,
    *,
    output_dir: Optional[str] = None,
    step: Optional[int] = None,
    max_input_length: int = 1024,
    max_target_length: int = 128,
    xlingual: Optional[bool] = None,
    progress: bool = True,
    print_tables: bool = True,
    settings: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
  """Decodes and scores an NI mixture (or task) with `seqio.Evaluator`; returns the results dict.

  Usable from the trainer: build a `Predictor` on the current params and call this.
  `xlingual` (ROUGE over GPT-2 BPE tokens) defaults to whether the tasks are of the
  x-lingual track.
  """
  import seqio
  from tkx.data import tasks as tasks_lib
  from tkx.metrics import ni_metrics

  subtasks = infer.ni_subtasks(mixture_or_task_name)
  if xlingual is None:
    xlingual = all(
        tasks_lib.task_spec(t.name).track == "xlingual" for t in subtasks
    )
  splits = {task.splits[0] for task in subtasks}
  if len(splits) != 1:
    raise errors.ConfigError(
        f"{mixture_or_task_name}: its tasks have different splits {sorted(splits)}"
    )
  split = splits.pop()
  start = time.time()
  evaluator = seqio.Evaluator(
      mixture_or_task_name,
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=split,
      sequence_length={
          "inputs": max_input_length,
          "targets": max_target_length,
      },
      use_memory_cache=True,
      async_compute_metrics=False,
  )
  eval_tasks = list(evaluator.eval_tasks)
  if not eval_tasks:
    raise errors.ConfigError(
        f"{mixture_or_task_name}: no task with split {split!r} and metric functions to evaluate"
    )

  examples, outputs_by_task = _decode_every_task(
      predictor,
      evaluator,
      eval_tasks,
      mixture_or_task_name,
      split,
      max_input_length,
      progress,
  )
  decode_seconds = time.time() - start
  seqio_task_metrics = _seqio_metrics(
      evaluator, eval_tasks, outputs_by_task, predictor, step
  )

  records = []
  for task in eval_tasks:
    ids = [i for i, _ in examples[task.name]]
    texts = infer.decode_ids(vocabulary, outputs_by_task[task.name])
    records.extend(infer.records_for_task(task.name, ids, texts))
  results = ni_metrics.score_predictions(records, xlingual=xlingual)
  results["seqio_task_metrics"] = seqio_task_metrics
  results["settings"] = dict(
      settings or {},
      mixture_or_task_name=mixture_or_task_name,
      split=split,
      output_dir=storage.abspath(output_dir) if output_dir else None,
      step=step,
      num_examples=len(records),
      decode_seconds=round(decode_seconds, 2),
      examples_per_second=round(len(records) / max(decode_seconds, 1e-9), 3),
      decode_config=dataclasses.asdict(predictor.decode_config),
      batch_size=predictor.batch_size,
      input_buckets=list(predictor.input_buckets),
  )
  if print_tables and multihost.is_primary_host():  # one table per job
    print(ni_metrics.format_tables(results), end="")
  if output_dir:
    write_outputs(output_dir, records, results, step)
  return results


def write_outputs(
    output_dir: str,
    records: Sequence[dict],
    results: Mapping[str, Any],
    step: Optional[int],
) -> None:
  """Predictions file, metrics JSON and TensorBoard summaries (primary host only)."""
  if not multihost.is_primary_host():
    return
  jsonl.write_jsonl(os.path.join(output_dir, PREDICTIONS_FILE), records)
  with io_utils.atomic_write(os.path.join(output_dir, METRICS_FILE)) as f:
    json.dump(results, f, indent=2, ensure_ascii=False)
    f.write("\n")
  write_summaries(os.path.join(output_dir, SUMMARY_DIR), results, step or 0)
  log.info(
      "wrote %s, %s and TensorBoard summaries to %s",
      PREDICTIONS_FILE,
      METRICS_FILE,
      output_dir,
  )


def _summary_name(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.\-/]", "_", text)


def summary_scalars(results: Mapping[str, Any]) -> Dict[str, float]:
  """Flat {tag: value} of the tables: overall/<m>, category/<c>/<m>, task/<t>/<m>."""
  from tkx.metrics import ni_metrics

  scalars = {}
  for metric in ni_metrics.METRICS:
    scalars[f"overall/{metric}"] = results["overall"][metric]
  for category, row in results["per_category"].items():
    for metric in ni_metrics.METRICS:
      scalars[f"category/{_summary_name(category)}/{metric}"] = row[metric]
  for task, row in results["per_task"].items():
    for metric in ni_metrics.METRICS:
      scalars[f"task/{_summary_name(task)}/{metric}"] = row[metric]
  return scalars


def write_summaries(
    log_dir: str, results: Mapping[str, Any], step: int
) -> None:
  """TensorBoard scalars of the tables (`summary_scalars`) at `step`."""
  writer = io_utils.ScalarWriter(log_dir)
  writer.scalars(step, summary_scalars(results))
  writer.close()


def checkpoint_step(path: str) -> int:
  """The step of the checkpoint that `directory.load` reads (for summaries)."""
  return layout.step_of(layout.find_step_dir(path)) or 0


class SharedCheckpoint:
  """Lets several `evaluate` calls decode with one loaded checkpoint (`tkx eval --encodings`).

  The first call loads the checkpoint (and makes the partitioner); later calls reuse
  both, so each call's `Predictor` finds the parameters already on the devices and,
  from `predict_fns` (owned here), the jitted function of its decoding settings with its
  compiled programs. Each call still draws from its own decoding seed, so a sweep gives
  what separate evaluations give. Another checkpoint is an error, not a reload.
  """

  def __init__(self):
    self._key = None
    self._partitioner_and_loaded = None
    self.predict_fns: Optional[infer.PredictFns] = None

  def get(self, key, load):
    if self._key is None:
      self._partitioner_and_loaded = load()
      partitioner, loaded = self._partitioner_and_loaded
      self.predict_fns = infer.PredictFns(loaded.model, partitioner)
      self._key = key
    elif key != self._key:
      raise ValueError(
          f"a shared checkpoint serves one checkpoint: it holds {self._key}, not {key}"
      )
    return self._partitioner_and_loaded


def _register_eval_name(
    mixture_or_task_name,
    ni_dir,
    vocabulary,
    *,
    track,
    split,
    encoding,
    max_input_length,
    max_num_instances_per_task,
) -> str:
  """Registers what `evaluate` decodes (the checkout's split for `encoding`, or the named
  mixture or task as `tkx infer` registers it); returns its SeqIO name."""
  from tkx.data import pipeline
  from tkx.data import tasks as tasks_lib

  if mixture_or_task_name is not None:
    pipeline.register_ni_for(
        mixture_or_task_name,
        ni_dir,
        vocabulary,
        max_input_length,
        must_exist=False,  # run_evaluation names the close matches
    )
    return mixture_or_task_name
  from tkx.metrics import seqio_metrics

  tasks_lib.register_ni(
      ni_dir,
      tracks=(track,),
      encodings=(encoding,),
      vocabulary=vocabulary,
      splits=(split,),
      max_num_instances_per_task=max_num_instances_per_task,
      max_source_length=max_input_length,
      per_task_tasks=False,
      metric_fns=[seqio_metrics.ni_metrics_xlingual]
      if track == "xlingual"
      else None,
  )
  return tasks_lib.mixture_name(track, split, encoding)


@gin.configurable(module="evaluate")
def evaluate(
    *,
    checkpoint_path: str,
    output_dir: Optional[str] = None,
    ni_dir: Optional[str] = None,
    track: str = "default",
    split: str = "test",
    encoding: str = "def_pos2",
    mixture_or_task_name: Optional[str] = None,
    batch_size: Optional[int] = None,
    decode_config: Optional["infer.DecodeConfig"] = None,
    partitioner=None,
    input_buckets: Sequence[int] = infer.DEFAULT_INPUT_BUCKETS,
    max_input_length: int = infer.DEFAULT_MAX_INPUT_LENGTH,
    max_target_length: int = 128,
    max_num_instances_per_task: Optional[int] = None,
    vocab_path: Optional[str] = None,
    progress: bool = True,
    shared_checkpoint: Optional[SharedCheckpoint] = None,
    in_encodings_sweep: bool = False,
) -> Dict[str, Any]:
  """Evaluates a tkx checkpoint on an NI test mixture (`tkx eval`).

  Registers the checkout's `<track>/<split>` tasks for `encoding` with the
  checkpoint's vocabulary (or `mixture_or_task_name`, an NI name registered as
  `tkx infer` registers it, or any registered SeqIO name), then
  `run_evaluation`. Returns the results dict (also in output_dir/metrics.json).
  `output_dir` defaults to `<checkpoint>/eval_<track>_<split>_<encoding>`
  (`eval_<mixture>` for a mixture). Calls given one `shared_checkpoint` load the
  checkpoint once between them; `in_encodings_sweep` (`tkx eval --encodings`)
  writes `<output_dir>/<encoding>/`, output_dir by default
  `<checkpoint>/eval_<track>_<split>_encodings`.
  """
  from tkx import partitioning
  from tkx.data import tasks as tasks_lib

  if output_dir is None:
    name = mixture_or_task_name or "_".join(
        [track, split, "encodings" if in_encodings_sweep else encoding]
    )
    output_dir = storage.join(layout.root_of(checkpoint_path), f"eval_{name}")
  if in_encodings_sweep:
    output_dir = storage.join(output_dir, encoding)

  if (
      mixture_or_task_name is not None
      and max_num_instances_per_task is not None
  ):
    # A registered mixture has its instance selection fixed; silently ignoring the cap would
    # score other instances than the user asked for.
    raise errors.ConfigError(
        "max_num_instances_per_task applies when tkx eval registers the split itself "
        "(--ni_dir/--track/--split/--encoding); it cannot change the registered mixture "
        f"{mixture_or_task_name!r}"
    )

  def load():
    chosen = partitioner or partitioning.Partitioner()  # gin bindings apply
    return chosen, directory.load(
        checkpoint_path,
        partitioner=chosen,
        vocab_path=vocab_path,
        gin_bindings=infer.model_overrides(),
    )

  if shared_checkpoint is None:
    partitioner, loaded = load()
  else:
    partitioner, loaded = shared_checkpoint.get(
        (storage.abspath(checkpoint_path), vocab_path), load
    )
  mixture_or_task_name = _register_eval_name(
      mixture_or_task_name,
      ni_dir,
      loaded.vocabulary,
      track=track,
      split=split,
      encoding=encoding,
      max_input_length=max_input_length,
      max_num_instances_per_task=max_num_instances_per_task,
  )
  predictor = infer.make_predictor(
      loaded.model,
      loaded.params,
      partitioner=partitioner,
      batch_size=batch_size,
      decode_config=decode_config,
      max_input_length=max_input_length,
      input_buckets=input_buckets,
      predict_fns=shared_checkpoint and shared_checkpoint.predict_fns,
  )
  settings = {
      "checkpoint": storage.abspath(checkpoint_path),
      "ni_dir": (
          storage.abspath(ni_dir) if ni_dir else tasks_lib.EMBEDDED_NI_DIR
      ),
      "track": track,
      "encoding": encoding,
  }
  return run_evaluation(
      predictor,
      loaded.vocabulary,
      mixture_or_task_name,
      output_dir=output_dir,
      step=checkpoint_step(checkpoint_path),
      max_input_length=max_input_length,
      max_target_length=max_target_length,
      progress=progress,
      settings=settings,
  )


@gin.configurable(module="evaluate")
def generation_eval(
    *,
    model,
    params,
    step: int,
    model_dir: str,
    mixture_or_task_name: str = gin.REQUIRED,
    batch_size: Optional[int] = None,
    decode_config: Optional["infer.DecodeConfig"] = None,
    partitioner=None,
    input_buckets: Sequence[int] = infer.DEFAULT_INPUT_BUCKETS,
    max_input_length: int = infer.DEFAULT_MAX_INPUT_LENGTH,
    max_target_length: int = 128,
    predict_fns: Optional["infer.PredictFns"] = None,
) -> Dict[str, float]:
  """An `EvaluationConfig.generation_eval_fn` hook of training: decode + NI metrics on the current params.

  Writes `<model_dir>/generation_eval/step_<step>/` (predictions, metrics.json,
  summaries) and returns {"generation/<metric>": overall value}. A caller that
  evaluates every N steps passes the `infer.PredictFns` it owns (of this model and
  partitioner), so each evaluation reuses the compiled decoding programs. In gin:
    train_configs.EvaluationConfig.generation_eval_fn = @evaluate.generation_eval
    evaluate.generation_eval.mixture_or_task_name = 'ni_default_test_def_pos2'
  """
  from tkx import partitioning
  from tkx.metrics import ni_metrics

  predictor = infer.make_predictor(
      model,
      params,
      # The partitioner of `predict_fns` when given (its programs are for that mesh);
      # else gin's.
      partitioner=partitioner
      or (
          predict_fns.partitioner if predict_fns else partitioning.Partitioner()
      ),
      batch_size=batch_size,
      decode_config=decode_config,
      max_input_length=max_input_length,
      input_buckets=input_buckets,
      predict_fns=predict_fns,
  )
  output_dir = storage.join(model_dir, "generation_eval", f"step_{step}")
  results = run_evaluation(
      predictor,
      model.output_vocabulary,
      mixture_or_task_name,
      output_dir=output_dir,
      step=step,
      max_input_length=max_input_length,
      max_target_length=max_target_length,
      progress=False,
      print_tables=False,
  )
  return {
      f"generation/{m}": float(results["overall"][m])
      for m in ni_metrics.METRICS
  }
