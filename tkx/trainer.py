"""The train loop: partitioned steps, gradient accumulation, checkpoints, eval, logging.

`train(...)` is the gin-configurable entry point (`trainer.train`, bound by
gin_configs/runs/finetune.gin). One step is

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
(`PendingMetrics`); only a step that is saved, evaluated or last is waited for.

Preemption. SIGTERM (or JAX's preemption notice on a multi-process run) stops
every host at the same step boundary (`tkx.preemption`); that step is saved, one
line names the checkpoint, and `train` returns (`tkx train` exits 0). See
docs/clusters.md.
"""

import logging
import os
import time
from typing import Any, Callable, Mapping, Optional, Union

import gin
import jax
import jax.numpy as jnp
import optax

from tkx import errors, io_utils, multihost, optimizers, preemption, storage
from tkx.checkpoints import directory, layout, orbax_io
from tkx.step_logger import StepLogger
from tkx.train_state import TrainState, TrainStateInitializer
from tkx.data import pipeline as data_pipeline
from tkx.data import packing
from tkx.data import packing_plan

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
    model, params, batch, dropout_rng, num_microbatches: int = 1
):
  """(loss, grads, metrics) of the whole batch, accumulated over micro-batches.

  The model normalises each call's loss by that call's target tokens; scaling a
  micro-batch's loss by its share of the batch's target tokens makes the sum over
  micro-batches equal the large-batch loss (and so its gradients), exactly as one
  big batch would give. With a fixed `loss_normalizing_factor` the plain sum is it.
  """
  per_token = model.loss_normalizing_factor is None
  total_tokens = jnp.maximum(_num_tokens(batch), 1.0)

  def micro_loss(p, micro, rng):
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
    inject_nan_at_step: Optional[int] = None,
):
  """train_step(state, batch) -> (state, metrics); pure, to be jitted by the partitioner."""
  model_config = model.config  # None: a model without T5 shapes, no FLOP counts

  def train_step(state: TrainState, batch):
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    loss, grads, model_metrics = compute_gradients(
        model, state.params, batch, dropout_rng, num_microbatches
    )
    if (
        inject_nan_at_step is not None
    ):  # fault injection for tests (gin: trainer.train.inject_nan_at_step)
      poison = jnp.where(state.step + 1 == inject_nan_at_step, jnp.nan, 0.0)
      loss = loss + poison
      grads = jax.tree_util.tree_map(
          lambda g: g + poison.astype(g.dtype), grads
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
# Data (the input itself lives in tkx.data.pipeline)
# ------------------------------------------------------------------------------
def _data_shard_info(partitioner):
  """This host's SeqIO shard (hosts of one model-parallel replica read the same one)."""
  return partitioner.get_data_shard_info() if jax.process_count() > 1 else None


def _check_run_values(
    model_dir, batch_size, batch_name, train_steps, task_feature_lengths
):
  """Errors naming the gin macro for values of the wrong kind (instead of a failure deep in the run)."""

  def positive_int(name, value, allow_none=False):
    if value is None and allow_none:
      return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise errors.ConfigError(
          f"{name} must be a positive integer, got {value!r}"
      )

  if not isinstance(model_dir, (str, os.PathLike)):
    raise errors.ConfigError(
        f"MODEL_DIR must be a string (--gin.MODEL_DIR=\"'/path'\"), got {model_dir!r}"
    )
  positive_int(batch_name, batch_size)
  positive_int("TRAIN_STEPS", train_steps, allow_none=True)
  if not isinstance(task_feature_lengths, Mapping) or set(
      task_feature_lengths
  ) != {"inputs", "targets"}:
    raise errors.ConfigError(
        'TASK_FEATURE_LENGTHS must be {"inputs": N, "targets": M}, got '
        f"{task_feature_lengths!r}"
    )
  for key, value in task_feature_lengths.items():
    positive_int(f"TASK_FEATURE_LENGTHS[{key!r}]", value)


# ------------------------------------------------------------------------------
# Run files and throughput
# ------------------------------------------------------------------------------
def _write_run_files(model_dir, model):
  """MODEL_DIR/config.gin (the whole gin config, as t5x) and the trained model's model.gin.

  model.gin (`tkx.checkpoints.directory`) describes the model being trained,
  dtype and dropout included, so `tkx eval/infer/export-checkpoint` read MODEL_DIR
  without the training gin files.
  """
  if not multihost.is_primary_host():
    return
  with io_utils.atomic_write(os.path.join(model_dir, "config.gin")) as f:
    f.write(gin.config_str())
  directory.write_model_files_for(
      model, model_dir, comment="Model of a tkx training run."
  )


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


# ------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------
@gin.configurable(module="trainer")
def train(
    *,
    model,
    model_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    train_steps: Optional[int],
    batch_size: int,
    train_epochs: Optional[float] = None,
    optimizer_fn: Callable[
        ..., optax.GradientTransformation
    ] = optimizers.adafactor,
    learning_rate_fn: Any = 1e-3,
    grad_clip_norm: Optional[float] = None,
    num_microbatches: int = 1,
    partitioner=None,
    initial_checkpoint_path: Optional[str] = None,
    pack: bool = False,
    packed_batch_size: Union[int, str, None] = None,
    packing_window: int = packing.DEFAULT_WINDOW,
    packed_encoder_blocks: Union[int, str] = 1,
    packed_targets_length: Union[int, str, None] = None,
    use_cached: bool = False,
    ni_dir: Optional[str] = None,
    data_seed: int = 0,
    random_seed: int = 0,
    save_every: int = 1000,
    keep_checkpoints: Optional[int] = None,
    async_checkpointing: bool = True,
    log_every: int = 10,
    eval_mixture_or_task_name: Optional[str] = None,
    eval_split: Optional[str] = None,
    eval_every: Optional[int] = None,
    eval_batches: int = 10,
    generation_eval_fn: Optional[Callable[..., Mapping[str, float]]] = None,
    peak_flops_per_device: Optional[float] = None,
    inject_nan_at_step: Optional[int] = None,
    stop_after_step: Optional[int] = None,
) -> dict:
  """Trains `model` on a SeqIO mixture; resumes from MODEL_DIR's latest checkpoint when there is one.

  TRAIN_STEPS may be None with `train_epochs` set: steps = floor(epochs x examples / batch),
  the examples being the mixture's instance count (NI mixtures' rates are instance counts).

  Returns {"step": last step run, "loss": its loss, "state": the final TrainState}.
  `stop_after_step` ends the loop early without changing the schedule (used to
  simulate preemption); `inject_nan_at_step` poisons one step (tests).
  """
  t_setup = time.time()
  required = {
      "MODEL": model,
      "MODEL_DIR": model_dir,
      "MIXTURE_OR_TASK_NAME": mixture_or_task_name,
      "TASK_FEATURE_LENGTHS": task_feature_lengths,
      "BATCH_SIZE": batch_size,
      "INITIAL_CHECKPOINT_PATH": initial_checkpoint_path,
      "NI_DIR": ni_dir,
  }
  missing = [name for name, value in required.items() if value is gin.REQUIRED]
  if missing:
    raise errors.ConfigError(
        f"trainer.train: set {', '.join(missing)} (e.g. --gin.{missing[0]}=...); "
        "the gin files leave them required"
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
  model_dir = storage.abspath(model_dir)
  if partitioner is None:
    from tkx import partitioning

    partitioner = partitioning.Partitioner()
  batch_name = "BATCH_SIZE"
  # The shape of a row of the batch (packed: several examples per row, see finetune.gin).
  row_layout = packing.RowLayout.for_lengths(task_feature_lengths)
  if pack:
    # A step is PACKED_BATCH_SIZE packed rows, not BATCH_SIZE examples.
    _check_run_values(
        model_dir, batch_size, "BATCH_SIZE", train_steps, task_feature_lengths
    )
    row_layout, batch_size = packing_plan.resolve_layout(
        model_dir=model_dir,
        resuming=bool(layout.list_steps(model_dir)),
        mixture_or_task_name=mixture_or_task_name,
        ni_dir=ni_dir,
        vocabulary=model.output_vocabulary,
        feature_lengths=task_feature_lengths,
        config=config,
        encoder_blocks=packed_encoder_blocks,
        targets_length=packed_targets_length,
        rows_per_step=packed_batch_size,
        examples_per_step=batch_size,
        row_multiple=partitioner.data_axis_size * max(num_microbatches, 1),
        window=packing_window,
        seed=data_seed,
    )
    batch_name = "PACKED_BATCH_SIZE"
  _check_run_values(
      model_dir, batch_size, batch_name, train_steps, task_feature_lengths
  )
  if batch_size % (partitioner.data_axis_size * max(num_microbatches, 1)):
    hint = (
        "; or let tkx choose the packed rows for these devices: "
        "--gin.PACKED_ENCODER_BLOCKS=\"'auto'\" --gin.PACKED_TARGETS_LENGTH=\"'auto'\" "
        "--gin.PACKED_BATCH_SIZE=\"'auto'\" (docs/packing.md)"
        if pack
        else ""
    )
    raise errors.ConfigError(
        f"{batch_name}={batch_size} must be divisible by the data-parallel size "
        f"{partitioner.data_axis_size} x NUM_MICROBATCHES={num_microbatches}{hint}"
    )
  learning_rate = learning_rate_fn
  optimizer = optimizers.create_optimizer(
      optimizer_fn=optimizer_fn,
      learning_rate=learning_rate,
      grad_clip_norm=grad_clip_norm,
  )

  train_input = data_pipeline.train_input(
      mixture_or_task_name,
      ni_dir=ni_dir,
      vocabulary=model.output_vocabulary,
      feature_lengths=task_feature_lengths,
      batch_size=batch_size,
      data_seed=data_seed,
      pack=pack,
      packing_window=packing_window,
      row_layout=row_layout if pack else None,
      use_cached=use_cached,
      shard_info=_data_shard_info(partitioner),
  )
  if train_epochs:
    train_steps = train_input.steps_for_epochs(train_epochs)
  if not train_steps:
    raise errors.ConfigError(
        "set TRAIN_STEPS (trainer.train.train_steps) or trainer.train.train_epochs"
    )

  # --- state: resumed from MODEL_DIR, else from INITIAL_CHECKPOINT_PATH, else random ---
  initializer = TrainStateInitializer(
      model, optimizer, partitioner, random_seed
  )
  state_shardings = initializer.state_shardings
  params_shardings = initializer.params_shardings
  replicated = partitioner.replicated
  checkpoints = orbax_io.CheckpointManager(
      model_dir,
      save_every=save_every,
      keep=keep_checkpoints,
      async_save=async_checkpointing,
  )
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
  elif initial_checkpoint_path:
    state = initializer.from_params_checkpoint(initial_checkpoint_path)
    start_step, input_state = 0, train_input.initial_state()
  else:
    state = initializer.from_scratch()
    start_step, input_state = 0, train_input.initial_state()
  if start_step >= train_steps:
    log.info(
        "Checkpoint step %d >= TRAIN_STEPS=%d: nothing to do.",
        start_step,
        train_steps,
    )
    checkpoints.close()
    return {"step": start_step, "loss": None, "state": state}

  # --- input ---
  if eval_every:
    if not eval_mixture_or_task_name:
      log.warning(
          "eval_every is set but no eval mixture: evaluating on the training mixture"
      )
      eval_mixture_or_task_name = mixture_or_task_name
    data_pipeline.register_ni_for(
        eval_mixture_or_task_name,
        ni_dir,
        model.output_vocabulary,
        task_feature_lengths["inputs"],
    )
  batches = train_input.batches(input_state)

  # --- compiled step ---
  data_sharding = partitioner.data_sharding
  train_step = make_train_step(
      model, optimizer, learning_rate, num_microbatches, inject_nan_at_step
  )
  p_train_step = partitioner.partition(
      train_step,
      in_shardings=(state_shardings, data_sharding),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,),
  )
  eval_step = make_eval_step(model)
  p_eval_step = (
      partitioner.partition(
          eval_step,
          in_shardings=(params_shardings, data_sharding),
          out_shardings=replicated,
      )
      if eval_every
      else None
  )

  _write_run_files(model_dir, model)
  eval_summaries = (
      io_utils.ScalarWriter(f"{model_dir}/eval") if eval_every else None
  )
  steps_logger = StepLogger(
      model_dir=model_dir,
      total_steps=train_steps,
      start_step=start_step,
      tokens_per_batch=batch_size
      * (row_layout.encoder_blocks * row_layout.inputs + row_layout.targets),
      flops_per_step=_model_flops_per_step(model, row_layout, batch_size),
      peak_flops=_peak_flops(peak_flops_per_device),
      log_every=log_every,
  )
  log.info(
      "Training %s for steps %d..%d, batch %d, %s; setup %.1fs",
      mixture_or_task_name,
      start_step + 1,
      train_steps,
      batch_size,
      f"{num_microbatches} micro-batches"
      if num_microbatches > 1
      else "no accumulation",
      time.time() - t_setup,
  )

  def next_batch():
    t0 = time.time()
    try:
      host_batch, state_after = next(batches)
    except StopIteration:
      raise errors.ConfigError(  # a user's data/settings problem: one line, no traceback
          f"MIXTURE_OR_TASK_NAME={mixture_or_task_name!r} ran out of batches of "
          f"{batch_name}={batch_size} (an empty split, or fewer examples than a batch)"
      ) from None
    return (
        partitioner.host_local_to_global(host_batch),
        state_after,
        time.time() - t0,
    )

  last_step = (
      train_steps
      if stop_after_step is None
      else min(train_steps, stop_after_step)
  )
  batch, batch_input_state, input_wait = next_batch()
  steps_logger.add_input_wait(input_wait)
  metrics_host = {}
  step = start_step
  pending = PendingMetrics()

  def step_read(read):
    """A step's fetched metrics: stop before any save if non-finite, else log them."""
    nonlocal metrics_host
    for read_step, host_metrics in read:
      if not bool(host_metrics["is_finite"]):
        raise _non_finite_error(read_step, host_metrics, checkpoints, model_dir)
      metrics_host = host_metrics
      steps_logger.step_done(
          read_step, host_metrics, force=read_step == last_step
      )

  watch = preemption.PreemptionWatch().start()
  try:
    for step in range(start_step + 1, last_step + 1):
      state, metrics = p_train_step(state, batch)
      input_state = (
          batch_input_state  # the input position after the trained batch
      )
      if (
          step < last_step
      ):  # overlap reading the next batch with this step's compute
        batch, batch_input_state, wait = next_batch()
        steps_logger.add_input_wait(wait)
      # Step n's numbers are read once step n+1 is dispatched (no per-step host wait).
      step_read(pending.push(step, metrics))
      preempted = watch.reached(step)
      evaluate_now = eval_every and (
          step % eval_every == 0 or step == train_steps
      )
      save_now = (
          checkpoints.should_save(step) or step == train_steps or preempted
      )
      if save_now or evaluate_now or step == last_step:
        step_read(pending.flush())  # this step is finite before it is saved
      if save_now:
        checkpoints.save(
            step,
            state,
            train_input.checkpoint_data_state(input_state),
            force=step == train_steps or preempted,
        )
      if preempted:
        _log_preemption_save(checkpoints, model_dir, step)
        break
      if evaluate_now:
        results = evaluate_loss(
            p_eval_step,
            state.params,
            partitioner,
            eval_mixture_or_task_name,
            task_feature_lengths,
            batch_size,
            eval_split,
            eval_batches,
            pack=pack,
        )
        if generation_eval_fn is not None:
          results.update(
              generation_eval_fn(
                  model=model,
                  params=state.params,
                  step=step,
                  model_dir=model_dir,
              )
              or {}
          )
        log.info(
            "eval step %d: %s",
            step,
            ", ".join(f"{k} {v:.4f}" for k, v in results.items()),
        )
        eval_summaries.scalars(step, results)
    checkpoints.wait()
    last_good = checkpoints.latest_step()
    if multihost.is_primary_host():
      with io_utils.atomic_write(
          os.path.join(model_dir, "operative_config.gin")
      ) as f:
        f.write(gin.operative_config_str())
  finally:
    watch.close()
    checkpoints.close()
    steps_logger.close()
    if eval_summaries:
      eval_summaries.close()
  log.info(
      "Done at step %d (last checkpoint %s) in %s",
      step,
      last_good,
      io_utils.format_seconds(time.time() - t_setup),
  )
  return {
      "step": step,
      "loss": float(metrics_host["loss"]) if metrics_host else None,
      "state": state,
      "preempted": watch.step is not None,
  }


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


def _log_preemption_save(checkpoints, model_dir, step):
  """Waits for the preemption checkpoint, then says once which it is."""
  checkpoints.wait()
  if multihost.is_primary_host():
    log.warning(
        "Preempted: saved %s/%s at step %d; exiting with status 0 "
        "(tkx train with the same MODEL_DIR resumes from it)",
        model_dir,
        layout.step_dir_name(step),
        step,
    )


def evaluate_loss(
    p_eval_step,
    params,
    partitioner,
    mixture_or_task_name,
    task_feature_lengths,
    batch_size,
    split,
    max_batches,
    pack=False,
):
  """Token-weighted loss over up to `max_batches` batches of the held-out split."""
  ds = data_pipeline.get_dataset(
      mixture_or_task_name,
      task_feature_lengths,
      batch_size,
      split=split,
      shuffle=False,
      seed=0,
      pack=pack,
      num_epochs=1,
      shard_info=_data_shard_info(partitioner),
  )
  loss_sum, tokens = 0.0, 0.0
  for i, host_batch in enumerate(ds.as_numpy_iterator()):
    if i >= max_batches:
      break
    out = jax.device_get(
        p_eval_step(params, partitioner.host_local_to_global(host_batch))
    )
    loss_sum += float(out["loss_sum"])
    tokens += float(out["num_target_tokens"])
  if not tokens:
    log.warning(
        "Eval split %r of %s gave no full batch of %d",
        split,
        mixture_or_task_name,
        batch_size,
    )
    return {}
  return {"loss": loss_sum / tokens, "num_target_tokens": tokens}
