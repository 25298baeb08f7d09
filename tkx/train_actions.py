"""What runs between training steps: actions (t5x's BaseAction, with a schedule).

`trainer.Trainer.run` dispatches step n, then

  1. reads step n-1's metrics (one step late: no host wait on the step just
     dispatched) and hands them to every action's `on_metrics`;
  2. asks every action `due(n)` (every action, every step, on every host: the
     preemption watch's sync point is there);
  3. when an action is due, the step is saved or it is the last, reads step n's
     metrics now (a non-finite step stops the run before anything is saved);
  4. saves step n when the interval, the last step or an action
     (`Due.SAVE_THEN_RUN`) asks for it;
  5. runs the due actions in order; one returning True stops the run there
     (the later ones do not run) and the step it stopped at is saved.

So a feature that runs between steps is an action: a class (here, or in your
own module) and one line of gin, e.g.

    trainer.train.actions = [@train_actions.EarlyStopping()]

`trainer.train` installs `RunFiles`, `PreemptionSave` and, with
EvaluationConfig.every, `Evaluate`, then the run's `actions`, in that order.
An action sees the `Trainer` (`model`, `model_dir`, `partitioner`, `state`,
`total_steps`, `checkpoints`, `actions`, `eval_loss`). Every host runs every
action, and `run` must answer the same on every host (a stop decided by one
host alone would leave the others waiting in the next collective).

t5x's `BaseAction.run(train_state, metrics_by_task)` runs after an evaluation;
here `run(trainer, step)` runs at the steps its `due` names, so evaluation
itself, preemption and early stopping are actions alike.
"""

import enum
import inspect
import itertools
import logging
from typing import Dict, List, Mapping, Optional, Tuple

import gin

from tkx import errors, io_utils, multihost, preemption
from tkx.checkpoints import directory, layout
from tkx.data import pipeline as data_pipeline
from tkx.train_configs import DatasetConfig, EvaluationConfig

log = logging.getLogger(__name__)


class Due(enum.Enum):
  """What an action asks of the loop at a step."""

  NO = "no"  # nothing: the loop does not wait for this step's metrics
  RUN = "run"  # run() after the step's metrics are read (and any save)
  SAVE_THEN_RUN = "save_then_run"  # save this step first (forced), then run()


class BaseAction:
  """Something that runs between training steps (see the module doc for when).

  Every method does nothing by default: override the ones the feature needs.
  """

  def start(self, trainer) -> None:
    """Once, before the first step (register data, open writers)."""

  def due(self, step: int) -> Due:
    """What this action needs at `step`; cheap, and `Due.NO` on most steps
    (a due action makes the host wait for that step's metrics)."""
    del step
    return Due.NO

  def run(self, trainer, step: int) -> bool:
    """Runs at a step `due` named (the step's metrics read, any save made); True stops training."""
    del trainer, step
    return False

  def on_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
    """Every step's host metrics, in step order, once read (finite ones only)."""

  def end(self, trainer) -> None:
    """After the last step of a run that ended without an error (checkpoints written)."""

  def close(self) -> None:
    """Always, when the run ends (errors included)."""


class RunFiles(BaseAction):
  """MODEL_DIR/config.gin (the whole gin config, as t5x) and model.gin at the start,
  operative_config.gin at the end; primary host only.

  model.gin (`tkx.checkpoints.directory`) describes the model being trained,
  dtype and dropout included, so `tkx eval/infer/export-checkpoint` read
  MODEL_DIR without the training gin files.
  """

  def start(self, trainer):
    if not multihost.is_primary_host():
      return
    with io_utils.atomic_write(f"{trainer.model_dir}/config.gin") as f:
      f.write(gin.config_str())
    directory.write_model_files_for(
        trainer.model,
        trainer.model_dir,
        comment="Model of a tkx training run.",
        base_checkpoint=getattr(trainer, "base_checkpoint", None),
    )

  def end(self, trainer):
    if multihost.is_primary_host():
      with io_utils.atomic_write(
          f"{trainer.model_dir}/operative_config.gin"
      ) as f:
        f.write(gin.operative_config_str())


class PreemptionSave(BaseAction):
  """SIGTERM / JAX's preemption notice -> save the step every host agrees on, say so once, stop.

  `tkx.preemption.PreemptionWatch` decides the step; `train` then returns
  normally (`tkx train` exits 0) and the next run resumes from that checkpoint.
  """

  def __init__(self):
    self._watch = preemption.PreemptionWatch()
    self.step: Optional[int] = None  # the step it stopped at

  def start(self, trainer):
    self._watch.start()

  def due(self, step):
    if self._watch.reached(step):  # every host, every step
      self.step = step
      return Due.SAVE_THEN_RUN
    return Due.NO

  def run(self, trainer, step):
    trainer.checkpoints.wait()  # say it once it is on disk
    if multihost.is_primary_host():
      log.warning(
          "Preempted: saved %s/%s at step %d; exiting with status 0 "
          "(tkx train with the same MODEL_DIR resumes from it)",
          trainer.model_dir,
          layout.step_dir_name(step),
          step,
      )
    return True

  def close(self):
    self._watch.close()


class Evaluate(BaseAction):
  """Held-out loss every `EvaluationConfig.every` steps and at the last, plus the generation hook.

  Logs one line `eval step N: loss ..., ...` and writes the values as
  TensorBoard scalars in MODEL_DIR/eval; `history` keeps `(step, results)`.
  """

  def __init__(
      self, config: EvaluationConfig, data: DatasetConfig, pack: bool = False
  ):
    self.config, self.data, self.pack = config, data, pack
    self.mixture_or_task_name = config.mixture_or_task_name
    self.history: List[Tuple[int, Dict[str, float]]] = []
    self.total_steps: Optional[int] = None
    self._summaries = None
    self._predict_fns = None  # the generation hook's compiled decoding, kept between evaluations

  def start(self, trainer):
    if not self.mixture_or_task_name:
      if multihost.is_primary_host():  # once per job
        log.warning(
            "EVAL_EVERY is set but EVAL_MIXTURE_OR_TASK_NAME is None: evaluating on the training mixture"
        )
      self.mixture_or_task_name = self.data.mixture_or_task_name
    data_pipeline.register_ni_for(
        self.mixture_or_task_name,
        self.data.ni_dir,
        trainer.model.output_vocabulary,
        self.data.task_feature_lengths["inputs"],
    )
    self.total_steps = trainer.total_steps
    self._summaries = io_utils.ScalarWriter(f"{trainer.model_dir}/eval")

  def due(self, step):
    every = self.config.every
    if every and (step % every == 0 or step == self.total_steps):
      return Due.RUN
    return Due.NO

  def run(self, trainer, step):
    results = self.held_out_loss(trainer)
    fn = self.config.generation_eval_fn
    if fn is not None:
      results.update(fn(**self._hook_arguments(fn, trainer, step)) or {})
    if multihost.is_primary_host():  # once per job
      log.info(
          "eval step %d: %s",
          step,
          ", ".join(f"{k} {v:.4f}" for k, v in results.items()),
      )
    if self._summaries is not None:
      self._summaries.scalars(step, results)
    self.history.append((step, results))
    return False

  def _hook_arguments(self, fn, trainer, step) -> Dict:
    """The generation hook's arguments; a hook that takes `predict_fns` (as
    `evaluate.generation_eval` does) gets this action's, so each evaluation reuses the
    decoding programs the first one compiled."""
    arguments = dict(
        model=trainer.model,
        # An adapter run's whole model is the adapters over the frozen base
        # (`Trainer.params`); a Trainer-like object without it: its state's.
        params=getattr(trainer, "params", None) or trainer.state.params,
        step=step,
        model_dir=trainer.model_dir,
    )
    parameters = inspect.signature(fn).parameters
    if "partitioner" in parameters:
      arguments["partitioner"] = (
          trainer.partitioner
      )  # the run's mesh, not a new one
    if "predict_fns" in parameters:
      from tkx import infer  # pylint: disable=g-import-not-at-top

      if self._predict_fns is None:
        self._predict_fns = infer.PredictFns(trainer.model, trainer.partitioner)
      arguments["predict_fns"] = self._predict_fns
    return arguments

  def held_out_loss(self, trainer) -> Dict[str, float]:
    """Token-weighted loss of the current parameters over up to `batches` batches of the held-out split.

    Batches of the run's own rows per step (PACKED_BATCH_SIZE rows when packed), the shape the
    eval step was compiled for and the data axis divides."""
    batch_size = trainer.train_input.batch_size
    ds = data_pipeline.get_dataset(
        self.mixture_or_task_name,
        self.data.task_feature_lengths,
        batch_size,
        split=self.config.split,
        shuffle=False,
        seed=0,
        pack=self.pack,
        num_epochs=1,
        shard_info=trainer.data_shard_info,
    )
    results = trainer.eval_loss(
        itertools.islice(ds.as_numpy_iterator(), self.config.batches)
    )
    if not results:
      log.warning(
          "Eval split %r of %s gave no full batch of %d",
          self.config.split,
          self.mixture_or_task_name,
          batch_size,
      )
    return results

  def close(self):
    if self._summaries is not None:
      self._summaries.close()


@gin.configurable(module="train_actions")
class EarlyStopping(BaseAction):
  """Stops when an evaluation metric has not improved for `patience` evaluations (t5x's EarlyStoppingAction).

  Runs after each `Evaluate` (so it needs EVAL_EVERY); `metric` is a key of the
  evaluation's results (`loss`, `generation/rougeL`, ...), `mode` 'min' or
  'max'; an improvement is a change beyond `min_delta`. The step it stops at
  is saved.
  """

  def __init__(
      self,
      metric: str = "loss",
      mode: str = "min",
      patience: int = 3,
      min_delta: float = 0.0,
  ):
    if mode not in ("min", "max"):
      raise errors.ConfigError(
          f"EarlyStopping.mode must be 'min' or 'max', got {mode!r}"
      )
    if patience < 1:
      raise errors.ConfigError(
          f"EarlyStopping.patience must be >= 1, got {patience!r}"
      )
    self.metric, self.mode = metric, mode
    self.patience, self.min_delta = patience, min_delta
    self._evaluation: Optional[Evaluate] = None
    self._best: Optional[float] = None
    self._without_improvement = 0

  def start(self, trainer):
    evaluations = [a for a in trainer.actions if isinstance(a, Evaluate)]
    if not evaluations:
      raise errors.ConfigError(
          "train_actions.EarlyStopping needs an evaluation: set EVAL_EVERY"
      )
    self._evaluation = evaluations[0]

  def due(self, step):
    return self._evaluation.due(step)

  def run(self, trainer, step):
    history = self._evaluation.history
    if (
        not history
        or history[-1][0] != step
        or self.metric not in history[-1][1]
    ):
      return False
    value = float(history[-1][1][self.metric])
    sign = 1.0 if self.mode == "min" else -1.0
    if self._best is None or sign * (self._best - value) > self.min_delta:
      self._best, self._without_improvement = value, 0
      return False
    self._without_improvement += 1
    if self._without_improvement < self.patience:
      return False
    if multihost.is_primary_host():
      log.warning(
          "Early stop at step %d: eval %s has not improved on %.4f for %d evaluations",
          step,
          self.metric,
          self._best,
          self.patience,
      )
    return True
