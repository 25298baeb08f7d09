"""A toy training action: the whole feature is this one class (docs/training.md).

Registered with one gin line, nothing else changed:

    trainer.train.actions = [@toy_train_action.LossLog()]

It writes MODEL_DIR/loss_log.jsonl, every step's loss as the loop reads it.
"""

import gin

from tkx import jsonl, multihost, train_actions


@gin.configurable(module="toy_train_action")
class LossLog(train_actions.BaseAction):
  """Every step's loss, written to MODEL_DIR/loss_log.jsonl at the end of the run.

  Never due (BaseAction.due's default), so it never makes the loop wait.
  """

  def __init__(self):
    self.rows = []

  def on_metrics(self, step, metrics):
    self.rows.append({"step": step, "loss": float(metrics["loss"])})

  def end(self, trainer):
    if multihost.is_primary_host():
      jsonl.write_jsonl(f"{trainer.model_dir}/loss_log.jsonl", self.rows)
