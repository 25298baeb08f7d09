"""The Trainer's loop and its actions over a fake step, input and checkpoint manager (no model, no compile).

What the loop promises (tkx.train_actions' module doc): every step's metrics reach
the actions once, in order; a due action runs after the step's metrics are read
and after its save; a stop ends the run at that step, saved, without the later
actions; `Due.SAVE_THEN_RUN` saves first. The real runs (test_train_loop.py)
check the same loop with a model.
"""

import os
import signal

import numpy as np
import pytest

from tkx import trainer as trainer_lib
from tkx.train_actions import BaseAction, Due, EarlyStopping, Evaluate
from tkx.train_actions import PreemptionSave
from tkx.train_configs import DatasetConfig, EvaluationConfig


class FakeInput:
  """Host batches numbered 1, 2, ...; the state is the number of the last batch read."""

  mixture_or_task_name, batch_size, pack = "fake_mixture", 2, False

  def batches(self, state):
    index = state["read"]
    while True:
      index += 1
      yield {"batch": np.full((2,), index)}, {"read": index}

  def checkpoint_data_state(self, state):
    return {"input": dict(state)}


class FakeCheckpoints:
  """Records saves in `events` (as ('save', step)); the interval rule of orbax_io's manager."""

  def __init__(self, events, save_every):
    self.events, self.save_every, self.saved = events, save_every, {}
    self.closed = False

  def should_save(self, step):
    return step % self.save_every == 0

  def save(self, step, state, data_state, force=False):
    if not (force or self.should_save(step)) or step in self.saved:
      return False
    self.saved[step] = (state, data_state)
    self.events.append(("save", step))
    return True

  def wait(self):
    pass

  def latest_step(self):
    return max(self.saved, default=None)

  def close(self):
    self.closed = True


class FakePartitioner:

  def host_local_to_global(self, batch):
    return batch


def fake_step(state, batch):
  """The state counts steps; the batch trained is part of the metrics."""
  state = state + 1
  return state, {
      "loss": 10.0 / state,
      "learning_rate": 0.1,
      "grad_norm": 1.0,
      "update_norm": 1.0,
      "is_finite": True,
      "batch": int(batch["batch"][0]),
  }


class Recorder(BaseAction):
  """Notes what the loop hands it; due at `run_at`, stops at `stop_at`."""

  def __init__(self, events, name, run_at=(), stop_at=None, when=Due.RUN):
    self.events, self.name = events, name
    self.run_at, self.stop_at, self.when = set(run_at), stop_at, when
    self.ended = self.closed = False

  def due(self, step):
    return self.when if step in self.run_at or step == self.stop_at else Due.NO

  def on_metrics(self, step, metrics):
    assert metrics["batch"] == step  # step n trained batch n
    self.events.append((f"{self.name}.metrics", step))

  def run(self, trainer, step):
    assert int(trainer.state) == step  # the state after the step
    self.events.append((f"{self.name}.run", step))
    return step == self.stop_at

  def end(self, trainer):
    self.ended = True

  def close(self):
    self.closed = True


def _trainer(events, actions, total_steps=5, save_every=2, step=fake_step):
  return trainer_lib.Trainer(
      state=0,
      start_step=0,
      input_state={"read": 0},
      total_steps=total_steps,
      train_step=step,
      train_input=FakeInput(),
      checkpoints=FakeCheckpoints(events, save_every),
      partitioner=FakePartitioner(),
      actions=actions,
  )


def test_actions_see_every_step_once_and_run_after_its_save():
  events = []
  action = Recorder(events, "a", run_at={3, 4})
  trainer = _trainer(events, [action])
  result = trainer.run()
  assert events == [
      ("a.metrics", 1),
      ("a.metrics", 2),
      ("save", 2),
      ("a.metrics", 3),
      ("a.run", 3),
      ("a.metrics", 4),
      ("save", 4),
      ("a.run", 4),
      ("a.metrics", 5),
      ("save", 5),
  ]
  assert result["step"] == 5 and result["loss"] == 2.0
  assert result["last_checkpoint"] == 5 and not result["preempted"]
  # The saved input position is the one after the saved step's batch.
  assert trainer.checkpoints.saved[4] == (4, {"input": {"read": 4}})
  assert action.ended and action.closed and trainer.checkpoints.closed


def test_a_stop_saves_that_step_and_skips_the_later_actions():
  events = []
  stopper = Recorder(events, "stop", stop_at=3)
  later = Recorder(events, "later", run_at={3})
  trainer = _trainer(events, [stopper, later], save_every=100)
  result = trainer.run()
  assert ("later.run", 3) not in events
  assert events[-2:] == [("stop.run", 3), ("save", 3)]
  assert result["step"] == 3 and trainer.stopped_by is stopper
  assert trainer.checkpoints.saved[3] == (3, {"input": {"read": 3}})
  assert later.closed and later.ended


def test_save_then_run_saves_first_and_once():
  events = []
  action = Recorder(events, "a", stop_at=2, when=Due.SAVE_THEN_RUN)
  result = _trainer(events, [action], save_every=2).run()
  assert events[-3:] == [("a.metrics", 2), ("save", 2), ("a.run", 2)]
  assert [e for e in events if e[0] == "save"] == [("save", 2)]
  assert result["step"] == 2


def test_sigterm_through_the_preemption_action(caplog):
  """The built-in PreemptionSave: SIGTERM during step 2 -> step 3 saved, one line, 'preempted'."""

  class SendSigterm(BaseAction):

    def due(self, step):
      return Due.RUN if step == 2 else Due.NO

    def run(self, trainer, step):
      os.kill(os.getpid(), signal.SIGTERM)
      return False

  events = []
  previous = signal.getsignal(signal.SIGTERM)
  try:
    result = _trainer(
        events,
        [PreemptionSave(), SendSigterm()],
        total_steps=10,
        save_every=100,
    ).run()
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert result["preempted"] and result["step"] == 3
  assert events == [("save", 3)]
  assert [
      r.getMessage() for r in caplog.records if "Preempted" in r.getMessage()
  ] == [
      "Preempted: saved None/checkpoint_3 at step 3; exiting with status 0 "
      "(tkx train with the same MODEL_DIR resumes from it)"
  ]


class ScriptedEvaluate(Evaluate):
  """Evaluate with scripted held-out losses (no data, no model)."""

  def __init__(self, losses, every=1):
    super().__init__(
        EvaluationConfig(every=every),
        DatasetConfig("fake_mixture", {"inputs": 8, "targets": 4}, 2),
    )
    self._losses = iter(losses)

  def start(self, trainer):
    self.total_steps = trainer.total_steps

  def held_out_loss(self, trainer):
    return {"loss": next(self._losses)}


def test_early_stopping_after_patience_evaluations_without_improvement():
  events = []
  evaluation = ScriptedEvaluate([3.0, 2.0, 2.5, 1.99, 2.6, 2.7, 9.0])
  stopping = EarlyStopping(
      metric="loss", mode="min", patience=2, min_delta=0.05
  )
  trainer = _trainer(
      events, [evaluation, stopping], total_steps=7, save_every=100
  )
  result = trainer.run()
  # Best 2.0 at step 2; 2.5 and 1.99 (within min_delta) do not improve on it: stop at 4.
  assert [step for step, _ in evaluation.history] == [1, 2, 3, 4]
  assert result["step"] == 4 and trainer.stopped_by is stopping
  assert events == [("save", 4)]


def test_early_stopping_needs_an_evaluation():
  trainer = _trainer([], [EarlyStopping()])
  with pytest.raises(ValueError, match="needs an evaluation: set EVAL_EVERY"):
    trainer.run()
  assert trainer.checkpoints.closed
  with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
    EarlyStopping(mode="lowest")


def test_a_non_finite_step_is_never_saved_or_handed_to_actions():
  events = []

  def nan_at_4(state, batch):
    state, metrics = fake_step(state, batch)
    return state, dict(metrics, is_finite=state != 4, loss=float("nan"))

  action = Recorder(events, "a")
  trainer = _trainer(events, [action], save_every=2, step=nan_at_4)
  with pytest.raises(
      trainer_lib.NonFiniteLossError, match="step 4 .*checkpoint_2"
  ):
    trainer.run()
  assert events == [
      ("a.metrics", 1),
      ("a.metrics", 2),
      ("save", 2),
      ("a.metrics", 3),
  ]
  assert action.closed and not action.ended


def test_generation_evaluations_share_one_set_of_compiled_decoding(monkeypatch):
  """Every evaluation hands the hook the same PredictFns (the programs the first compiled);
  a hook without that parameter is called as before."""
  from types import SimpleNamespace

  from tkx import infer

  made = []

  class CountedPredictFns:

    def __init__(self, model, partitioner):
      made.append((model, partitioner))

  monkeypatch.setattr(infer, "PredictFns", CountedPredictFns)
  trainer = SimpleNamespace(
      model="model",
      partitioner="mesh",
      state=SimpleNamespace(params={}),
      model_dir="d",
  )
  seen = []

  def sharing_hook(
      *, model, params, step, model_dir, partitioner=None, predict_fns=None
  ):
    assert partitioner == "mesh"  # the run's, so predict_fns' programs fit it
    seen.append(predict_fns)

  def plain_hook(*, model, params, step, model_dir):
    seen.append(step)

  action = Evaluate(
      EvaluationConfig(), DatasetConfig("mix", {"inputs": 8, "targets": 4}, 8)
  )
  for step in (10, 20):
    sharing_hook(**action._hook_arguments(sharing_hook, trainer, step))  # pylint: disable=protected-access
  plain_hook(**action._hook_arguments(plain_hook, trainer, 30))  # pylint: disable=protected-access
  assert made == [("model", "mesh")]
  assert seen[0] is seen[1] and isinstance(seen[0], CountedPredictFns)
  assert seen[2] == 30


def test_a_run_resumed_at_its_last_step_reports_that_checkpoint():
  events = []
  trainer = trainer_lib.Trainer(
      state=0,
      start_step=5,
      input_state={"read": 5},
      total_steps=5,
      train_step=fake_step,
      train_input=FakeInput(),
      checkpoints=FakeCheckpoints(events, 2),
      partitioner=FakePartitioner(),
      actions=[],
  )
  result = trainer.run()
  assert result["step"] == 5 and result["last_checkpoint"] == 5
  assert events == []  # nothing trained, nothing saved
