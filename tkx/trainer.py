"""Training: the step, the `Trainer` that runs it, and `train`, the gin entry point.

    train(settings)  ->  Trainer.setup(...)  ->  Trainer.run()
                                                   step, step, ... with actions between

`train(...)` (`trainer.train`, bound by gin_configs/runs/finetune.gin) checks the
grouped settings (`tkx.train_configs`), chooses the row layout, opens the input,
and hands over to a `Trainer`: its `setup` restores or initialises the state and
partitions the steps, its `run` loops. What happens between steps (evaluation,
preemption save, early stopping, custom logging) is an action
(`tkx.train_actions`): a feature is added by adding an action, not by growing
the loop. docs/training.md is the user's page.

One step is

    micro-batches (lax.scan) -> summed gradients -> optimizer update

inside a single jitted function whose inputs and outputs carry explicit
shardings from `partitioning.Partitioner`, so the same gin runs on one CPU,
eight CPU devices, a GPU or many hosts.

Exact resume. The input (`tkx.data.pipeline`) is deterministic: for NI names an
exact-epoch stream over the split's one source whose position is a global
example index, reached in O(1). A checkpoint stores, next to parameters,
optimizer state, step and RNG, the input state after the last trained batch;
resuming opens the stream there (non-NI SeqIO names skip the batches consumed).
Dropout RNGs derive from (rng, step), so a run killed after checkpoint k and
resumed ends with bit-identical parameters.

Non-finite values. Every step reports whether loss, gradient norm and update norm
are finite; the loop checks it before any save, so a NaN state is never written,
and stops with `NonFiniteLossError` naming the step and the last good checkpoint.

No per-step host wait. Step n's metrics are fetched after step n+1 is dispatched
(`PendingMetrics`); only a step that is saved, acted on or last is waited for.

Preemption. SIGTERM (or JAX's preemption notice on a multi-process run) stops
every host at the same step boundary (`tkx.preemption`, the `PreemptionSave`
action); that step is saved, one line names the checkpoint, and `train` returns
(`tkx train` exits 0). See docs/clusters.md.

Contract (the names other modules rely on; change one only together with its users):
- `trainer.make_train_step(model, optimizer, learning_rate_fn, num_microbatches=1) -> train_step(state, batch[, frozen_params])
  -> (state, metrics)` (pure; jit/partition it yourself; with `frozen_params` the state's params are the trained part,
  `tkx.models.adapters.combine`d with the frozen base for the loss, gradients only w.r.t. the trained part); metrics: loss, grad_norm, update_norm, learning_rate, num_target_tokens, is_finite,
  z_loss, accuracy, and `num_real_tokens` / `num_computed_tokens` (token efficiency = their ratio; tokens/s and MFU
  should count real tokens), `num_examples` (packed segments or non-empty rows), and for a model with a `config`
  `num_useful_flops` / `num_computed_flops` (`packing.flop_counts`). `trainer.compute_gradients(model, params, batch, dropout_rng,
  num_microbatches, frozen_params=None)`.
- `trainer.train(*, model, model_dir, train_dataset_cfg, packing_cfg, checkpoint_cfg, eval_cfg, logging_cfg,
  partitioner, train_steps, train_epochs, optimizer_fn, learning_rate_fn, grad_clip_norm, num_microbatches,
  random_seed, actions, trainable)` (gin `trainer.train`, bound by `gin_configs/runs/finetune.gin`; the `*_cfg` are
  `tkx.train_configs` dataclasses, each field bound to a run macro) -> `{"step", "loss", "state", "preempted",
  "last_checkpoint"}`; raises `trainer.NonFiniteLossError`. It checks, opens the input, then
  `trainer.Trainer.setup(...)` (state resumed / initial / random, partitioned steps) and `.run()`; `Trainer.step(batch)`,
  `Trainer.eval_loss(host_batches)`, `Trainer.params` (the whole model's: the state's, or adapters over the frozen base),
  `Trainer.base_checkpoint` (an adapter run's base, recorded in model.gin; None otherwise). Step metrics are read one step late (`trainer.PendingMetrics`: step n's after
  step n+1 is dispatched); a step to be saved, acted on or the last is read first (never save a non-finite step).
- `train_actions.BaseAction`: `start(trainer)`, `due(step) -> Due.{NO, RUN, SAVE_THEN_RUN}` (every step, every host),
  `run(trainer, step) -> stop?` (after the step's read and save; a stop saves that step, later actions skipped),
  `on_metrics(step, metrics)`, `end(trainer)`, `close()`. Built-in: `RunFiles`, `PreemptionSave`, `Evaluate` (with
  `EvaluationConfig.every`; hook `generation_eval_fn(*, model, params, step, model_dir) -> {name: float}`), then
  the run's `actions` (e.g. `EarlyStopping`). docs/training.md.
- A training run's `data_state` JSON: `{"input_by_shard": [state of data shard k], "input": the primary's state,
  "batch_size", "data_seed", "mixture"}` (`TrainInput.checkpoint_data_state`, all-gathered at the save: call it on
  every host at the same step); `TrainInput.state_from_checkpoint` takes this host's shard's, and on another number
  of shards resumes only the unpacked NI index (global) and refuses packed/SeqIO input with a ValueError naming both
  numbers. Older checkpoints (`input` only, `consumed_batches`) are read where valid for every host.
- `MODEL_DIR` of a run is a tkx checkpoint directory (`model.gin` written by the trainer) plus `config.gin`,
  `operative_config.gin`, `train/` and `eval/` TensorBoard logs, and for packed runs `packed_layout.json` (the row
  layout and rows per step the run trains with; `packing_plan.resolve_layout` reuses it on resume).
"""

import functools
import logging
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import optax

from tkx import errors, io_utils, multihost, optimizers, storage, train_actions
from tkx import train_configs
from tkx.checkpoints import layout, orbax_io
from tkx.data import packing
from tkx.data import packing_plan
from tkx.data import pipeline as data_pipeline
from tkx.models import adapters
from tkx.step_logger import StepLogger
from tkx.train_actions import BaseAction, Due, PreemptionSave
from tkx.train_configs import (
    CheckpointConfig,
    DatasetConfig,
    EvaluationConfig,
    LoggingConfig,
    PackingConfig,
    Trainable,
)
from tkx import train_state
from tkx.train_state import TrainState, TrainStateInitializer

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  """Raised when a step produces a non-finite loss, gradient or update."""


# ------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------
def _num_tokens(batch):
  return jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32))


def _split_microbatches(batch, num_microbatches):
  """[B, ...] -> [n, B/n, ...], micro-batch i taking rows i, i+n, i+2n, ...

  The strided split keeps every micro-batch spread evenly over the data-parallel
  devices (each device already holds a contiguous block of B/devices rows).
  """

  def split(x):
    b = x.shape[0]
    if b % num_microbatches:
      raise ValueError(
          f"batch size {b} is not divisible by num_microbatches={num_microbatches}"
      )
    x = x.reshape((b // num_microbatches, num_microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree_util.tree_map(split, batch)


def compute_gradients(
    model,
    params,
    batch,
    dropout_rng,
    num_microbatches: int = 1,
    frozen_params=None,
):
  """(loss, grads, metrics) of the whole batch, accumulated over micro-batches.

  With `frozen_params` the model runs on `params` combined with them
  (`tkx.models.adapters.combine`) and the gradients are `params`' only.

  The model normalises each call's loss by that call's target tokens; scaling a
  micro-batch's loss by its share of the batch's target tokens makes the sum over
  micro-batches equal the large-batch loss (and so its gradients), exactly as one
  big batch would give. With a fixed `loss_normalizing_factor` the plain sum is it.
  """
  per_token = model.loss_normalizing_factor is None
  total_tokens = jnp.maximum(_num_tokens(batch), 1.0)

  def micro_loss(p, micro, rng):
    if frozen_params is not None:
      p = adapters.combine(p, frozen_params)
    loss, metrics = model.loss_fn(p, micro, rng)
    share = _num_tokens(micro) / total_tokens if per_token else 1.0
    return loss * share, metrics

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
  if num_microbatches <= 1:
    (loss, metrics), grads = grad_fn(params, batch, dropout_rng)
    return loss, grads, metrics

  micro_batches = _split_microbatches(batch, num_microbatches)

  def body(carry, xs):
    loss_acc, grads_acc = carry
    index, micro = xs
    rng = (
        None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
    )
    (loss, metrics), grads = grad_fn(params, micro, rng)
    grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, grads)
    return (loss_acc + loss, grads_acc), metrics

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  (loss, grads), metrics = jax.lax.scan(
      body,
      (jnp.zeros((), jnp.float32), zeros),
      (jnp.arange(num_microbatches), micro_batches),
  )
  return loss, grads, _combine_micro_metrics(metrics, per_token)


def _combine_micro_metrics(metrics, per_token: bool):
  """The large batch's metrics from per-micro-batch ones ([n] each).

  Counts add up. Per-token means (accuracy; the losses when normalised per token)
  are weighted by each micro-batch's target tokens; losses normalised by a fixed
  factor add up.
  """
  tokens = metrics.get("num_tokens")
  if tokens is None:
    return {
        k: jnp.sum(v) if k.startswith("num") else jnp.mean(v)
        for k, v in metrics.items()
    }
  share = tokens / jnp.maximum(jnp.sum(tokens), 1.0)
  combined = {}
  for key, value in metrics.items():
    if key.startswith("num"):
      combined[key] = jnp.sum(value)
    elif key == "accuracy" or per_token:
      combined[key] = jnp.sum(value * share)
    else:
      combined[key] = jnp.sum(value)
  return combined


def make_train_step(
    model,
    optimizer: optax.GradientTransformation,
    learning_rate_fn,
    num_microbatches: int = 1,
):
  """train_step(state, batch[, frozen_params]) -> (state, metrics); pure, to be jitted by the partitioner.

  With `frozen_params` (an adapter run) `state.params` are the adapters: only
  they get gradients and optimizer updates; the frozen base is an input.
  """
  model_config = model.config  # None: a model without T5 shapes, no FLOP counts

  def train_step(state: TrainState, batch, frozen_params=None):
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    loss, grads, model_metrics = compute_gradients(
        model,
        state.params,
        batch,
        dropout_rng,
        num_microbatches,
        frozen_params=frozen_params,
    )
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    update_norm = optax.global_norm(updates)
    is_finite = (
        jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    )
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "update_norm": update_norm,
        "learning_rate": optimizers.learning_rate_at(
            learning_rate_fn, state.step
        ),
        "num_target_tokens": _num_tokens(batch),
        "is_finite": is_finite,
    }
    # Token efficiency = num_real_tokens / num_computed_tokens (padding is computed,
    # not real); tokens/s and MFU should count the real ones.
    real, computed = packing.token_counts(batch)
    metrics["num_real_tokens"] = jnp.asarray(real, jnp.float32)
    metrics["num_computed_tokens"] = jnp.asarray(computed, jnp.float32)
    metrics["num_examples"] = jnp.asarray(
        packing.num_examples(batch), jnp.float32
    )
    # FLOP efficiency = useful / computed model FLOPs (docs/packing.md).
    if model_config is not None:
      useful, computed = packing.flop_counts(batch, model_config)
      metrics["num_useful_flops"] = jnp.asarray(useful, jnp.float32)
      metrics["num_computed_flops"] = jnp.asarray(computed, jnp.float32)
    for key in ("z_loss", "accuracy", "cross_ent_loss"):
      if key in model_metrics:
        metrics[key] = jnp.asarray(model_metrics[key], jnp.float32)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state
    )
    return new_state, metrics

  return train_step


def make_eval_step(model):
  """eval_step(params, batch) -> {loss_sum, num_target_tokens} (dropout off)."""

  def eval_step(params, batch):
    loss, _ = model.loss_fn(params, batch, None)
    tokens = _num_tokens(batch)
    per_token = model.loss_normalizing_factor is None
    return {
        "loss_sum": loss * tokens if per_token else loss,
        "num_target_tokens": tokens,
    }

  return eval_step


# ------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------
def _data_shard_info(partitioner):
  """This host's SeqIO shard (hosts of one model-parallel replica read the same one)."""
  return partitioner.get_data_shard_info() if jax.process_count() > 1 else None


class PendingMetrics:
  """Step metrics read one step late, so the host never waits on the step it just dispatched.

  `push(n, metrics)` after dispatching step n returns step n-1's metrics, fetched
  (`jax.device_get`) while step n runs; `flush()` fetches the held step now
  (before a save: a non-finite step is never saved). Both return a list of
  `(step, host metrics)`, empty when nothing was held.
  """

  def __init__(self):
    self._held = None

  def push(self, step: int, metrics) -> list:
    held, self._held = self._held, (step, metrics)
    return self._fetch(held)

  def flush(self) -> list:
    held, self._held = self._held, None
    return self._fetch(held)

  @staticmethod
  def _fetch(held) -> list:
    return [] if held is None else [(held[0], jax.device_get(held[1]))]


def _non_finite_error(step, metrics_host, checkpoints, model_dir):
  checkpoints.wait()
  good = checkpoints.latest_step()
  return NonFiniteLossError(
      f"non-finite value at step {step} (loss={float(metrics_host['loss'])}, "
      f"grad_norm={float(metrics_host['grad_norm'])}, "
      f"update_norm={float(metrics_host['update_norm'])}, "
      f"learning_rate={float(metrics_host['learning_rate'])}); stopping without saving it. "
      + (
          f"Last good checkpoint: {model_dir}/{layout.step_dir_name(good)}."
          if good is not None
          else f"No checkpoint was written to {model_dir}."
      )
  )


class Trainer:
  """A training run as an object (t5x's Trainer): `setup`, `step`, `run`.

  `Trainer.setup(...)` builds one from the run's parts: the state (resumed from
  MODEL_DIR's newest checkpoint, else INITIAL_CHECKPOINT_PATH's parameters,
  else random), the input position after that state's last batch, and the
  partitioned train and eval steps. `run()` trains steps start_step+1 ..
  total_steps, saving every `save_every` steps and the last; `step(batch)` is
  one step. What runs between steps (evaluation, preemption, early stopping,
  your own logging) is `actions` (`tkx.train_actions`, whose module doc gives
  the loop's order). The constructor takes the parts already built, so the loop
  runs over any step function, input and checkpoint manager of the same shape.

  Attributes for actions: `model`, `model_dir`, `partitioner`, `state`,
  `params`, `start_step`, `total_steps`, `checkpoints`, `actions`,
  `data_shard_info`, `base_checkpoint`, `eval_loss(host_batches)`.

  An adapter run (`Trainable.ADAPTERS`) holds `frozen_params`, the base model,
  beside the state and hands them to every step (not donated, never copied).
  """

  def __init__(
      self,
      *,
      state,
      start_step: int,
      input_state,
      total_steps: int,
      train_step: Callable,
      train_input,
      checkpoints,
      partitioner,
      actions: Sequence[BaseAction] = (),
      model=None,
      model_dir: Optional[str] = None,
      eval_step: Optional[Callable] = None,
      num_microbatches: int = 1,
      step_logger: Optional[Callable[[int, int], StepLogger]] = None,
      started: Optional[float] = None,
      frozen_params=None,
      base_checkpoint: Optional[str] = None,
  ):
    self.state = state
    self.frozen_params, self.base_checkpoint = frozen_params, base_checkpoint
    self.start_step, self.input_state = start_step, input_state
    self.total_steps = total_steps
    self.train_input, self.checkpoints = train_input, checkpoints
    self.partitioner, self.actions = partitioner, list(actions)
    self.model, self.model_dir = model, model_dir
    self.num_microbatches = num_microbatches
    self._train_step, self._eval_step = train_step, eval_step
    self._make_step_logger = step_logger or _quiet_step_logger
    self.started = time.time() if started is None else started
    self.step_logger: Optional[StepLogger] = None
    self.stopped_by: Optional[BaseAction] = None
    self.last_metrics: Mapping[str, Any] = {}
    self._batches = None

  @classmethod
  def setup(
      cls,
      *,
      model,
      model_dir: str,
      partitioner,
      optimizer: optax.GradientTransformation,
      learning_rate_fn,
      num_microbatches: int,
      random_seed: int,
      train_input,
      total_steps: int,
      checkpoint_cfg: CheckpointConfig,
      actions: Sequence[BaseAction],
      step_logger: Callable[[int, int], StepLogger],
      started: Optional[float] = None,
      trainable: Trainable = Trainable.ALL,
  ) -> "Trainer":
    """The run's state (restored, initial or random) and partitioned steps; nothing is written yet."""
    initializer = TrainStateInitializer(
        model, optimizer, partitioner, random_seed, trainable
    )
    adapter_run = initializer.trainable is Trainable.ADAPTERS
    base_checkpoint = None
    if adapter_run and checkpoint_cfg.initial_checkpoint_path:
      base_checkpoint = storage.abspath(checkpoint_cfg.initial_checkpoint_path)
    checkpoints = orbax_io.CheckpointManager(
        model_dir,
        save_every=checkpoint_cfg.save_every,
        keep=checkpoint_cfg.keep,
        async_save=checkpoint_cfg.async_save,
    )
    try:
      frozen = (
          initializer.load_frozen_base(base_checkpoint)
          if base_checkpoint
          else None
      )
      state, start_step, input_state = cls._initial_state(
          initializer,
          checkpoints,
          checkpoint_cfg,
          train_input,
          model_dir,
          frozen,
      )
    except BaseException:
      checkpoints.close()  # no save thread left behind a bad INITIAL_CHECKPOINT_PATH
      raise
    data_sharding = partitioner.data_sharding
    in_shardings = (initializer.state_shardings, data_sharding)
    if (
        adapter_run
    ):  # the frozen base: an input, not donated (it is reused every step)
      in_shardings += (initializer.frozen_shardings,)
    train_step = partitioner.partition(
        make_train_step(model, optimizer, learning_rate_fn, num_microbatches),
        in_shardings=in_shardings,
        out_shardings=(initializer.state_shardings, partitioner.replicated),
        donate_argnums=(0,),
    )
    eval_step = partitioner.partition(
        make_eval_step(model),
        in_shardings=(initializer.params_shardings, data_sharding),
        out_shardings=partitioner.replicated,
    )
    return cls(
        state=state,
        start_step=start_step,
        input_state=input_state,
        total_steps=total_steps,
        train_step=train_step,
        eval_step=eval_step,
        train_input=train_input,
        checkpoints=checkpoints,
        partitioner=partitioner,
        actions=actions,
        model=model,
        model_dir=model_dir,
        num_microbatches=num_microbatches,
        step_logger=step_logger,
        started=started,
        frozen_params=frozen,
        base_checkpoint=base_checkpoint,
    )

  @staticmethod
  def _initial_state(
      initializer,
      checkpoints,
      checkpoint_cfg,
      train_input,
      model_dir,
      frozen=None,
  ):
    """(state, its step, the input position after it): MODEL_DIR's newest checkpoint,
    else INITIAL_CHECKPOINT_PATH's parameters (an adapter run: fresh adapters over
    the `frozen` base read from it), else random."""
    restored = initializer.restore(checkpoints)
    if restored is not None:
      state, data_state = restored
      start_step = int(state.step)
      input_state = train_input.state_from_checkpoint(data_state, start_step)
      log.info(
          "Resumed from %s/%s (input at %s)",
          model_dir,
          layout.step_dir_name(start_step),
          input_state,
      )
    elif frozen is not None:
      state = initializer.from_frozen_base(frozen)
      start_step, input_state = 0, train_input.initial_state()
    elif checkpoint_cfg.initial_checkpoint_path:
      state = initializer.from_params_checkpoint(
          checkpoint_cfg.initial_checkpoint_path
      )
      start_step, input_state = 0, train_input.initial_state()
    else:
      state = initializer.from_scratch()
      start_step, input_state = 0, train_input.initial_state()
    return state, start_step, input_state

  # -- what actions use ----------------------------------------------------------
  @property
  def data_shard_info(self):
    return _data_shard_info(self.partitioner)

  @property
  def params(self):
    """The whole model's parameters: the state's, or the adapters over the frozen base."""
    if self.frozen_params is None:
      return self.state.params
    return adapters.combine(self.state.params, self.frozen_params)

  def step(self, batch):
    """One training step on a global batch: updates `state`; returns the step's metrics
    (device arrays, not waited for)."""
    frozen = () if self.frozen_params is None else (self.frozen_params,)
    self.state, metrics = self._train_step(self.state, batch, *frozen)
    return metrics

  def eval_loss(self, host_batches: Iterable[Mapping[str, Any]]) -> dict:
    """Token-weighted loss of the current parameters over host batches (dropout off);
    {} when they hold no target token."""
    loss_sum, tokens = 0.0, 0.0
    for host_batch in host_batches:
      out = jax.device_get(
          self._eval_step(
              self.params,
              self.partitioner.host_local_to_global(host_batch),
          )
      )
      loss_sum += float(out["loss_sum"])
      tokens += float(out["num_target_tokens"])
    if not tokens:
      return {}
    return {"loss": loss_sum / tokens, "num_target_tokens": tokens}

  # -- the run -------------------------------------------------------------------
  @property
  def finished(self) -> bool:
    return self.start_step >= self.total_steps

  def run(self) -> dict:
    """Trains to `total_steps` (or until an action stops it); always closes what it opened.

    Returns {"step": last step run, "loss": its loss, "state", "preempted",
    "last_checkpoint"}; raises `NonFiniteLossError` at a non-finite step.
    """
    if self.finished:
      log.info(
          "Checkpoint step %d >= TRAIN_STEPS=%d: nothing to do.",
          self.start_step,
          self.total_steps,
      )
      self.checkpoints.close()
      # The step it resumed from is the run's last checkpoint.
      return self._result(self.start_step, self.start_step)
    try:
      self._begin()
      step = self._loop()
      self.checkpoints.wait()
      last_good = self.checkpoints.latest_step()
      for action in self.actions:
        action.end(self)
    finally:
      self._close()
    if multihost.is_primary_host():  # once per job
      log.info(
          "Done at step %d (last checkpoint %s) in %s",
          step,
          last_good,
          io_utils.format_seconds(time.time() - self.started),
      )
    return self._result(step, last_good)

  def _begin(self):
    for action in self.actions:
      action.start(self)
    self._batches = self.train_input.batches(self.input_state)
    self.step_logger = self._make_step_logger(self.start_step, self.total_steps)
    log.info(
        "Training %s for steps %d..%d, batch %d, %s; setup %.1fs",
        self.train_input.mixture_or_task_name,
        self.start_step + 1,
        self.total_steps,
        self.train_input.batch_size,
        f"{self.num_microbatches} micro-batches"
        if self.num_microbatches > 1
        else "no accumulation",
        time.time() - self.started,
    )

  def _loop(self) -> int:
    """Steps start_step+1..total_steps in the order train_actions' module doc gives; the last step run."""
    batch, batch_input_state = self._next_batch()
    pending = PendingMetrics()
    step = self.start_step
    for step in range(self.start_step + 1, self.total_steps + 1):
      metrics = self.step(batch)
      # The input position after the trained batch.
      self.input_state = batch_input_state
      # Read the next batch while this step computes.
      if step < self.total_steps:
        batch, batch_input_state = self._next_batch()
      # Step n's numbers are read once step n+1 is dispatched (no per-step host wait).
      self._read(pending.push(step, metrics))
      due = [(action, action.due(step)) for action in self.actions]
      to_run = [action for action, when in due if when is not Due.NO]
      forced = step == self.total_steps or any(
          when is Due.SAVE_THEN_RUN for _, when in due
      )
      save_now = forced or self.checkpoints.should_save(step)
      if save_now or to_run:
        # This step is finite before it is saved or acted on.
        self._read(pending.flush())
      if save_now:
        self._save(step, force=forced)
      for action in to_run:
        if action.run(self, step):
          self.stopped_by = action
          break
      if self.stopped_by is not None:
        if not save_now:
          self._save(step, force=True)
        break
    return step

  def _next_batch(self):
    t0 = time.time()
    try:
      host_batch, state_after = next(self._batches)
    except StopIteration:
      batch_name = (
          "PACKED_BATCH_SIZE" if self.train_input.pack else "BATCH_SIZE"
      )
      raise errors.ConfigError(  # a user's data/settings problem: one line, no traceback
          f"MIXTURE_OR_TASK_NAME={self.train_input.mixture_or_task_name!r} ran out of "
          f"batches of {batch_name}={self.train_input.batch_size} (an empty split, or "
          "fewer examples than a batch)"
      ) from None
    batch = self.partitioner.host_local_to_global(host_batch)
    self.step_logger.add_input_wait(time.time() - t0)
    return batch, state_after

  def _read(self, read):
    """Fetched step metrics: stop before any save if non-finite, else log them and hand them to the actions."""
    for step, host_metrics in read:
      if not bool(host_metrics["is_finite"]):
        raise _non_finite_error(
            step, host_metrics, self.checkpoints, self.model_dir
        )
      self.last_metrics = host_metrics
      self.step_logger.step_done(
          step, host_metrics, force=step == self.total_steps
      )
      for action in self.actions:
        action.on_metrics(step, host_metrics)

  def _save(self, step: int, force: bool):
    self.checkpoints.save(
        step,
        self.state,
        self.train_input.checkpoint_data_state(self.input_state),
        force=force,
    )

  def _close(self):
    for action in self.actions:
      action.close()
    self.checkpoints.close()
    if self.step_logger is not None:
      self.step_logger.close()

  def _result(self, step: int, last_checkpoint: Optional[int]) -> dict:
    loss = self.last_metrics.get("loss")
    return {
        "step": step,
        "loss": None if loss is None else float(loss),
        "state": self.state,
        "preempted": isinstance(self.stopped_by, PreemptionSave),
        "last_checkpoint": last_checkpoint,
    }


def _quiet_step_logger(start_step, total_steps):
  """A StepLogger that logs lines but writes no scalars (a Trainer built without one)."""
  return StepLogger(
      model_dir=None,
      total_steps=total_steps,
      start_step=start_step,
      tokens_per_batch=0,
      flops_per_step=None,
      peak_flops=None,
      log_every=10,
  )


# ------------------------------------------------------------------------------
# Set-up helpers of `train`
# ------------------------------------------------------------------------------
def _model_flops_per_step(model, row_layout, batch_size):
  """Model FLOPs of a step of `batch_size` rows from `model_info` (None for a model without a T5Config)."""
  from tkx.models import model_info

  config = model.config
  if config is None:
    return None
  return model_info.train_step_flops(
      config,
      batch_size,
      row_layout.inputs,
      row_layout.targets,
      encoder_blocks=row_layout.encoder_blocks,
  )["train_step"]


def _peak_flops(configured_per_device):
  """Peak FLOP/s of all devices (None when the device kind is unknown, e.g. a CPU)."""
  from tkx.models import model_info

  per_device = configured_per_device or model_info.peak_flops_per_device(
      jax.devices()[0].device_kind
  )
  return float(per_device) * jax.device_count() if per_device else None


def _check_settings(model, model_dir, data, checkpoint_cfg):
  """One line naming the macro left required, or a vocabulary larger than the model's."""
  train_configs.check_required(
      MODEL=model,
      MODEL_DIR=model_dir,
      MIXTURE_OR_TASK_NAME=data.mixture_or_task_name,
      TASK_FEATURE_LENGTHS=data.task_feature_lengths,
      BATCH_SIZE=data.batch_size,
      INITIAL_CHECKPOINT_PATH=checkpoint_cfg.initial_checkpoint_path,
      NI_DIR=data.ni_dir,
  )
  vocab_size = getattr(model.output_vocabulary, "vocab_size", None)
  config = model.config
  if (
      vocab_size is not None
      and config is not None
      and vocab_size > config.vocab_size
  ):
    # Ids past the embedding would be clamped silently by the lookup.
    raise errors.ConfigError(
        f"the vocabulary has {vocab_size} ids but network.T5Config.vocab_size = "
        f"{config.vocab_size} (check vocab.get_vocabulary.extra_ids and the model gin files)"
    )


def _row_layout_and_batch(
    *,
    model,
    model_dir,
    data,
    packing_cfg,
    train_steps,
    partitioner,
    num_microbatches,
):
  """(row layout, rows per step) of the run, checked: packed rows from `packing_plan`
  (recorded / given / 'auto'), else BATCH_SIZE rows of the feature lengths."""
  row_multiple = partitioner.data_axis_size * max(num_microbatches, 1)
  lengths = data.task_feature_lengths
  train_configs.check_run_values(
      model_dir, data.batch_size, "BATCH_SIZE", train_steps, lengths
  )
  row_layout, batch_size, batch_name = (
      packing.RowLayout.for_lengths(lengths),
      data.batch_size,
      "BATCH_SIZE",
  )
  if packing_cfg.pack:
    # A step is PACKED_BATCH_SIZE packed rows, not BATCH_SIZE examples.
    row_layout, batch_size = packing_plan.resolve_layout(
        model_dir=model_dir,
        resuming=bool(layout.list_steps(model_dir)),
        mixture_or_task_name=data.mixture_or_task_name,
        ni_dir=data.ni_dir,
        vocabulary=model.output_vocabulary,
        feature_lengths=lengths,
        config=model.config,
        encoder_blocks=packing_cfg.encoder_blocks,
        targets_length=packing_cfg.targets_length,
        rows_per_step=packing_cfg.batch_size,
        examples_per_step=data.batch_size,
        row_multiple=row_multiple,
        window=packing_cfg.window,
        seed=data.seed,
    )
    batch_name = "PACKED_BATCH_SIZE"
    train_configs.check_positive_int(batch_name, batch_size)
  if batch_size % row_multiple:
    hint = (
        "; or let tkx choose the packed rows for these devices: "
        "--gin.PACKED_ENCODER_BLOCKS=\"'auto'\" --gin.PACKED_TARGETS_LENGTH=\"'auto'\" "
        "--gin.PACKED_BATCH_SIZE=\"'auto'\" (docs/packing.md)"
        if packing_cfg.pack
        else ""
    )
    raise errors.ConfigError(
        f"{batch_name}={batch_size} must be divisible by the data-parallel size "
        f"{partitioner.data_axis_size} x NUM_MICROBATCHES={num_microbatches}{hint}"
    )
  return row_layout, batch_size


def _open_input(model, data, packing_cfg, row_layout, batch_size, partitioner):
  """The run's `TrainInput` (`tkx.data.pipeline`): host batches of `batch_size` rows."""
  return data_pipeline.train_input(
      data.mixture_or_task_name,
      ni_dir=data.ni_dir,
      vocabulary=model.output_vocabulary,
      feature_lengths=data.task_feature_lengths,
      batch_size=batch_size,
      data_seed=data.seed,
      pack=packing_cfg.pack,
      packing_window=packing_cfg.window,
      row_layout=row_layout if packing_cfg.pack else None,
      use_cached=data.use_cached,
      shard_info=_data_shard_info(partitioner),
  )


def _total_steps(train_input, train_steps, train_epochs) -> int:
  """TRAIN_STEPS, or the steps of `train_epochs` epochs of the input."""
  if train_epochs:
    train_steps = train_input.steps_for_epochs(train_epochs)
  if not train_steps:
    raise errors.ConfigError(
        "set TRAIN_STEPS (trainer.train.train_steps) or trainer.train.train_epochs"
    )
  return train_steps


def _step_logger(
    model,
    model_dir,
    row_layout,
    batch_size,
    logging_cfg,
    start_step,
    total_steps,
):
  """The run's StepLogger (throughput of rows of `row_layout`, model FLOPs, MFU)."""
  return StepLogger(
      model_dir=model_dir,
      total_steps=total_steps,
      start_step=start_step,
      tokens_per_batch=batch_size
      * (row_layout.encoder_blocks * row_layout.inputs + row_layout.targets),
      flops_per_step=_model_flops_per_step(model, row_layout, batch_size),
      peak_flops=_peak_flops(logging_cfg.peak_flops_per_device),
      log_every=logging_cfg.log_every,
  )


def _builtin_actions(data, packing_cfg, eval_cfg) -> list:
  """The actions every run has: run files, the preemption save and, with `eval_cfg.every`, evaluation."""
  actions = [train_actions.RunFiles(), train_actions.PreemptionSave()]
  if eval_cfg.every:
    actions.append(train_actions.Evaluate(eval_cfg, data, packing_cfg.pack))
  return actions


# ------------------------------------------------------------------------------
# The entry point
# ------------------------------------------------------------------------------
@gin.configurable(module="trainer")
def train(
    *,
    model,
    model_dir: str,
    train_dataset_cfg: DatasetConfig,
    packing_cfg: Optional[PackingConfig] = None,
    checkpoint_cfg: Optional[CheckpointConfig] = None,
    eval_cfg: Optional[EvaluationConfig] = None,
    logging_cfg: Optional[LoggingConfig] = None,
    partitioner=None,
    train_steps: Optional[int] = None,
    train_epochs: Optional[float] = None,
    optimizer_fn: Callable[
        ..., optax.GradientTransformation
    ] = optimizers.adafactor,
    learning_rate_fn: Any = 1e-3,
    grad_clip_norm: Optional[float] = None,
    num_microbatches: int = 1,
    random_seed: int = 0,
    actions: Sequence[BaseAction] = (),
    trainable: Any = Trainable.ALL,
) -> dict:
  """Trains `model` on a SeqIO mixture; resumes from MODEL_DIR's latest checkpoint when there is one.

  Settings come grouped (`tkx.train_configs`, bound by gin_configs/runs/finetune.gin);
  `actions` run between steps after the built-in ones (`tkx.train_actions`).
  TRAIN_STEPS may be None with `train_epochs` set: steps = floor(epochs x examples / batch),
  the examples being the mixture's instance count (NI mixtures' rates are instance counts).
  `trainable` (TRAINABLE: 'all' or 'adapters', `train_configs.Trainable`) picks the
  parameters trained; 'adapters' trains LoRA / the prompt over INITIAL_CHECKPOINT_PATH.

  Returns {"step": last step run, "loss": its loss, "state": the final TrainState,
  "preempted", "last_checkpoint"}.
  """
  started = time.time()
  data = train_dataset_cfg
  packing_cfg = packing_cfg or PackingConfig()
  checkpoint_cfg = checkpoint_cfg or CheckpointConfig()
  eval_cfg = eval_cfg or EvaluationConfig()
  logging_cfg = logging_cfg or LoggingConfig()
  _check_settings(model, model_dir, data, checkpoint_cfg)
  trainable = Trainable.parse(trainable)
  if (
      trainable is Trainable.ADAPTERS
      and not checkpoint_cfg.initial_checkpoint_path
  ):
    raise errors.ConfigError(train_state.NO_BASE_ERROR)
  model_dir = storage.abspath(model_dir)
  if partitioner is None:
    from tkx import partitioning

    partitioner = partitioning.Partitioner()
  row_layout, batch_size = _row_layout_and_batch(
      model=model,
      model_dir=model_dir,
      data=data,
      packing_cfg=packing_cfg,
      train_steps=train_steps,
      partitioner=partitioner,
      num_microbatches=num_microbatches,
  )
  train_input = _open_input(
      model, data, packing_cfg, row_layout, batch_size, partitioner
  )
  total_steps = _total_steps(train_input, train_steps, train_epochs)
  trainer = Trainer.setup(
      model=model,
      model_dir=model_dir,
      partitioner=partitioner,
      optimizer=optimizers.create_optimizer(
          optimizer_fn, learning_rate_fn, grad_clip_norm
      ),
      learning_rate_fn=learning_rate_fn,
      num_microbatches=num_microbatches,
      random_seed=random_seed,
      train_input=train_input,
      total_steps=total_steps,
      checkpoint_cfg=checkpoint_cfg,
      actions=_builtin_actions(data, packing_cfg, eval_cfg) + list(actions),
      step_logger=functools.partial(
          _step_logger, model, model_dir, row_layout, batch_size, logging_cfg
      ),
      started=started,
      trainable=trainable,
  )
  return trainer.run()
