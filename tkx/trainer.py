"""The train loop: partitioned steps, gradient accumulation, checkpoints, eval, logging.

`train(...)` is the gin-configurable entry point (`trainer.train`, bound by
gin_configs/runs/finetune.gin). One step is

    micro-batches (lax.scan) -> summed gradients -> optimizer update

inside a single jitted function whose inputs and outputs carry explicit
shardings from `partitioning.Partitioner`, so the same gin runs on one CPU,
eight CPU devices, a GPU or many hosts.

Exact resume. The input is a deterministic SeqIO pipeline (fixed shuffle seed,
deterministic tf.data); a checkpoint stores, next to parameters, optimizer state,
step and RNG, the number of batches consumed. Resuming rebuilds the same pipeline
and skips that many batches. We chose skipping over tf.data iterator checkpoints
because it is exact by construction, survives changes to tf.data internals and
costs nothing to store (iterator checkpoints of shuffle buffers are large); its
price is replaying the input pipeline on resume (a few seconds per thousand
batches for NI-sized examples). Dropout RNGs derive from (rng, step), so a run
killed after checkpoint k and resumed ends with bit-identical parameters.

Non-finite values. Every step reports whether loss, gradient norm and update norm
are finite; the loop checks it before any save, so a NaN state is never written,
and stops with `NonFiniteLossError` naming the step and the last good checkpoint.
"""

import logging
import os
import re
import time
from typing import Any, Callable, Mapping, Optional

import flax.struct
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tkx import optimizers
from tkx.checkpoints import orbax_io
from tkx.data import packing

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  """Raised when a step produces a non-finite loss, gradient or update."""


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # number of optimizer updates applied
  params: Any
  opt_state: Any
  rng: jnp.ndarray  # base key; dropout keys are fold_in(rng, step)


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
  per_token = getattr(model, "loss_normalizing_factor", None) is None
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
  # Per-micro-batch metrics: counts add up, everything else is averaged.
  metrics = {
      k: jnp.sum(v) if k.startswith("num") else jnp.mean(v)
      for k, v in metrics.items()
  }
  return loss, grads, metrics


def make_train_step(
    model,
    optimizer: optax.GradientTransformation,
    learning_rate_fn,
    num_microbatches: int = 1,
    inject_nan_at_step: Optional[int] = None,
):
  """train_step(state, batch) -> (state, metrics); pure, to be jitted by the partitioner."""

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
    per_token = getattr(model, "loss_normalizing_factor", None) is None
    return {
        "loss_sum": loss * tokens if per_token else loss,
        "num_target_tokens": tokens,
    }

  return eval_step


# ------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------
_NI_TASK_SUFFIX = re.compile(r"_(task\d+.*)$")


def register_ni_for(
    mixture_or_task_name: str,
    ni_dir: Optional[str] = None,
    vocabulary=None,
    max_source_length: Optional[int] = None,
) -> None:
  """(Re-)registers the NI tasks behind `<prefix>_<track>_<split>_<encoding>[_<task>]` names.

  Registration uses the model's vocabulary and the run's input length as token
  budget, so a run on the real T5 vocabulary never trains on the embedded one.
  Names that are not NI names must already be registered with SeqIO.
  """
  import seqio
  from tkx.data import ni
  from tkx.data import tasks as ni_tasks

  checkout = ni_dir or ni_tasks.EMBEDDED_NI_DIR
  name = _NI_TASK_SUFFIX.sub("", mixture_or_task_name)
  parsed = None
  for track in ni.TRACKS:
    marker = f"_{track}_"
    if marker not in name:
      continue
    prefix, rest = name.split(marker, 1)
    for split in sorted(ni.list_splits(checkout, track), key=len, reverse=True):
      if rest.startswith(split + "_"):
        parsed = (prefix, track, split, rest[len(split) + 1 :])
        break
    if parsed:
      break
  if parsed:
    prefix, track, split, encoding = parsed
    kwargs = {}
    if max_source_length:
      kwargs["max_source_length"] = max_source_length
    ni_tasks.register_ni(
        ni_dir=checkout,
        tracks=(track,),
        encodings=(encoding,),
        vocabulary=vocabulary,
        splits=(split,),
        prefix=prefix,
        **kwargs,
    )
  known = set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names())
  if mixture_or_task_name not in known:
    raise ValueError(
        f"MIXTURE_OR_TASK_NAME={mixture_or_task_name!r} is not a registered SeqIO task or mixture "
        f"(NI names look like ni_default_train_def_pos2; NI_DIR={checkout!r})"
    )


def steps_for_epochs(
    mixture_or_task_name: str, epochs: float, batch_size: int
) -> int:
  """floor(epochs x examples / batch) with examples = the mixture's summed rates (NI: instance counts)."""
  import seqio

  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  num_examples = getattr(provider, "total_rate", None)
  if num_examples is None:  # a single task: count it
    num_examples = sum(
        1
        for _ in provider.get_dataset(
            None,
            split=_split_of(mixture_or_task_name),
            shuffle=False,
            num_epochs=1,
        )
    )
  steps = int(epochs * float(num_examples) // batch_size)
  log.info(
      "%s: %d examples x %g epochs / batch %d = %d steps",
      mixture_or_task_name,
      int(num_examples),
      epochs,
      batch_size,
      steps,
  )
  return max(steps, 1)


def _split_of(mixture_or_task_name: str) -> str:
  """The one split an NI task/mixture has (its NI split name); 'train' otherwise."""
  import seqio

  splits = tuple(
      getattr(seqio.get_mixture_or_task(mixture_or_task_name), "splits", ())
      or ()
  )
  return splits[0] if len(splits) == 1 else "train"


@gin.configurable(module="trainer")
def get_dataset(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    split: Optional[str] = None,
    shuffle: bool = True,
    seed: Optional[int] = 0,
    pack: bool = False,
    use_cached: bool = False,
    num_epochs: Optional[int] = None,
    shard_info=None,
    skip_batches: int = 0,
):
  """Host-local batches (numpy dicts) of SeqIO's EncDecFeatureConverter output.

  `batch_size` is global; each of `shard_info.num_shards` hosts reads its shard
  and gets batch_size / num_shards examples per batch. `skip_batches` fast-forwards
  a deterministic pipeline to where a checkpoint left it. `split` defaults to the
  task's own (NI tasks have exactly one: their NI split).
  """
  import seqio

  split = split or _split_of(mixture_or_task_name)
  num_shards = shard_info.num_shards if shard_info is not None else 1
  if batch_size % num_shards:
    raise ValueError(
        f"BATCH_SIZE={batch_size} is not divisible by the {num_shards} data shards (hosts)"
    )
  ds = seqio.get_dataset(
      mixture_or_task_name,
      task_feature_lengths=dict(task_feature_lengths),
      feature_converter=seqio.EncDecFeatureConverter(pack=pack),
      dataset_split=split,
      use_cached=use_cached,
      shuffle=shuffle,
      num_epochs=num_epochs,
      shard_info=shard_info,
      seed=seed,
      verbose=False,
  )
  ds = ds.batch(batch_size // num_shards, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(2)


def _data_shard_info(partitioner):
  """This host's SeqIO shard (hosts of one model-parallel replica read the same one)."""
  return partitioner.get_data_shard_info() if jax.process_count() > 1 else None


# ------------------------------------------------------------------------------
# Shardings and state creation
# ------------------------------------------------------------------------------
def _input_shapes(task_feature_lengths, batch_size=1):
  return {
      "encoder_input_tokens": (batch_size, task_feature_lengths["inputs"]),
      "decoder_input_tokens": (batch_size, task_feature_lengths["targets"]),
  }


def _params_shardings(partitioner, model, input_shapes):
  """NamedShardings of the params from the model's logical axes."""
  return partitioner.logical_to_sharding(
      model.params_logical_axes(input_shapes)
  )


def _opt_state_shardings(
    partitioner, abstract_opt_state, abstract_params, params_shardings
):
  """Optimizer state follows its params (Adam mu/nu; factored Adafactor rows/cols drop a dim)."""
  return partitioner.optimizer_state_shardings(
      abstract_opt_state, abstract_params, params_shardings
  )


def _check_and_cast(loaded, abstract_params, source):
  """Clear errors for missing/extra/mis-shaped parameters; casts to the model's param dtypes."""
  flat_expected = {
      jax.tree_util.keystr(p): leaf
      for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  }
  flat_loaded = {
      jax.tree_util.keystr(p): leaf
      for p, leaf in jax.tree_util.tree_flatten_with_path(dict(loaded))[0]
  }
  missing = sorted(set(flat_expected) - set(flat_loaded))
  unexpected = sorted(set(flat_loaded) - set(flat_expected))
  if missing or unexpected:
    raise ValueError(
        f"INITIAL_CHECKPOINT_PATH={source}: parameters do not match the model: "
        f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
        f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
    )
  for key, leaf in flat_expected.items():
    if tuple(np.shape(flat_loaded[key])) != tuple(leaf.shape):
      raise ValueError(
          f"INITIAL_CHECKPOINT_PATH={source}: parameter {key} has shape "
          f"{tuple(np.shape(flat_loaded[key]))} in the checkpoint, the model expects {tuple(leaf.shape)}"
      )
  treedef = jax.tree_util.tree_structure(abstract_params)
  return jax.tree_util.tree_unflatten(
      treedef,
      [
          np.asarray(flat_loaded[k]).astype(flat_expected[k].dtype)
          for k in flat_expected
      ],
  )


def load_initial_params(path: str, abstract_params, params_shardings):
  """Params from a tkx checkpoint (also those `tkx import-checkpoint` writes) or a t5x checkpoint."""
  log.info("Initialising parameters from %s", path)
  loaded = None
  if orbax_io.is_tkx_checkpoint(path):
    try:
      loaded = orbax_io.load_params(path)
    except (
        KeyError
    ):  # an orbax-era t5x checkpoint (state/target/...): t5x_format reads those
      loaded = None
  if loaded is None:
    from tkx.checkpoints import t5x_format

    loaded = t5x_format.load_params(path)
  host = _check_and_cast(loaded, abstract_params, path)
  return jax.tree_util.tree_map(
      lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx]),
      host,
      params_shardings,
  )


# ------------------------------------------------------------------------------
# Logging helpers
# ------------------------------------------------------------------------------
# Dense bf16 peak FLOP/s per device for model FLOP utilisation (None: not reported).
_PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
}


def _peak_flops_per_device(configured):
  if configured:
    return float(configured)
  kind = jax.devices()[0].device_kind
  for name, flops in _PEAK_FLOPS.items():
    if name in kind:
      return flops
  return None


def train_flops_per_step(params, task_feature_lengths, batch_size):
  """Model FLOPs of one training step: 6 x (encoder params x input tokens + decoder params x target tokens).

  Embedding lookups are free; the output projection (tied or `logits_dense`) counts
  per target token. Attention score FLOPs are left out (small at 1024/128 tokens),
  so MFU is slightly understated, as is usual.
  """
  sizes = {"encoder": 0, "decoder": 0, "embedding": 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    top = str(getattr(path[0], "key", path[0]))
    n = int(np.prod(leaf.shape))
    if top == "encoder":
      sizes["encoder"] += n
    elif top == "decoder":
      sizes["decoder"] += n
    else:
      sizes["embedding"] += n
  has_logits_dense = any(
      "logits_dense" in jax.tree_util.keystr(p)
      for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
  )
  decoder = sizes["decoder"] + (0 if has_logits_dense else sizes["embedding"])
  li, lt = task_feature_lengths["inputs"], task_feature_lengths["targets"]
  return 6.0 * batch_size * (sizes["encoder"] * li + decoder * lt)


def _train_step_flops(model, params, task_feature_lengths, batch_size):
  """Model FLOPs of a step: model_info's formula (attention included) when it knows the config."""
  try:
    from tkx.models import model_info

    return float(
        model_info.train_step_flops(
            model.config,
            batch_size,
            task_feature_lengths["inputs"],
            task_feature_lengths["targets"],
        )["train_step"]
    )
  except Exception:  # a model without a T5Config: parameter-count estimate
    return train_flops_per_step(params, task_feature_lengths, batch_size)


class _Summaries:
  """TensorBoard scalars in MODEL_DIR/<name> (primary host only).

  Written with the core `tf.summary.write` and the scalars plugin's metadata, so
  TensorBoard shows them while the `tensorboard` package itself is not needed.
  """

  def __init__(self, model_dir, name):
    self._writer = None
    if jax.process_index() == 0 and model_dir:
      import tensorflow as tf
      from tensorflow.core.framework import summary_pb2

      self._tf = tf
      self._metadata = summary_pb2.SummaryMetadata(
          plugin_data=summary_pb2.SummaryMetadata.PluginData(
              plugin_name="scalars"
          )
      )
      self._writer = tf.summary.create_file_writer(
          os.path.join(model_dir, name)
      )

  def scalars(self, step, values):
    if self._writer is None:
      return
    with self._writer.as_default():
      for k, v in values.items():
        if v is not None:
          self._tf.summary.write(
              k,
              self._tf.constant(float(v), self._tf.float32),
              step=int(step),
              metadata=self._metadata,
          )
    self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


def _write_configs(model_dir, initial_checkpoint_path, model):
  """MODEL_DIR/config.gin (the whole gin config, as t5x) and MODEL_DIR/model.gin (the model alone).

  `model.gin` makes MODEL_DIR a tkx checkpoint directory that `tkx eval/infer/export-checkpoint`
  read without the training gin files. An imported initial checkpoint's `model.gin` and
  `spm.model` are carried over (the vocabulary stays next to the weights).
  """
  if jax.process_index() != 0:
    return
  tf_io = _gfile()
  tf_io.makedirs(model_dir)
  with tf_io.GFile(os.path.join(model_dir, "config.gin"), "w") as f:
    f.write(gin.config_str())
  source_dir = initial_checkpoint_path
  if source_dir and _STEP_DIR_NAME.match(
      os.path.basename(os.path.normpath(source_dir))
  ):
    source_dir = os.path.dirname(os.path.normpath(source_dir))
  if source_dir and tf_io.exists(os.path.join(source_dir, "model.gin")):
    for name in ("model.gin", "spm.model"):
      if tf_io.exists(os.path.join(source_dir, name)):
        tf_io.copy(
            os.path.join(source_dir, name),
            os.path.join(model_dir, name),
            overwrite=True,
        )
    return
  with tf_io.GFile(os.path.join(model_dir, "model.gin"), "w") as f:
    f.write(model_gin_text(model))


def _gfile():
  import tensorflow as tf

  return tf.io.gfile


_STEP_DIR_NAME = re.compile(r"^checkpoint_\d+$")


def model_gin_text(model) -> str:
  """A model gin file for `model` (config + vocabulary), as `tkx import-checkpoint` writes one."""
  from tkx.checkpoints import hf
  from tkx.data import vocab as vocab_lib

  vocabulary = model.output_vocabulary
  path = getattr(vocabulary, "sentencepiece_model_file", None)
  if path and os.path.abspath(path) == os.path.abspath(
      vocab_lib.EMBEDDED_SPM_PATH
  ):
    path = None  # the embedded vocabulary: keep model.gin portable
  return hf.config_to_gin(
      model.config,
      vocab_path=path,
      extra_ids=getattr(vocabulary, "extra_ids", None),
      comment="Model of a tkx training run.",
  )


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
    raise ValueError(
        f"trainer.train: set {', '.join(missing)} (e.g. --gin.{missing[0]}=...); "
        "the gin files leave them required"
    )
  model_dir = (
      os.path.abspath(model_dir) if "://" not in model_dir else model_dir
  )
  if partitioner is None:
    from tkx import partitioning

    partitioner = partitioning.Partitioner()
  if batch_size % (partitioner.data_axis_size * max(num_microbatches, 1)):
    raise ValueError(
        f"BATCH_SIZE={batch_size} must be divisible by the data-parallel size "
        f"{partitioner.data_axis_size} x NUM_MICROBATCHES={num_microbatches}"
    )
  learning_rate = learning_rate_fn
  optimizer = optimizers.create_optimizer(
      optimizer_fn=optimizer_fn,
      learning_rate=learning_rate,
      grad_clip_norm=grad_clip_norm,
  )

  register_ni_for(
      mixture_or_task_name,
      ni_dir,
      model.output_vocabulary,
      task_feature_lengths["inputs"],
  )
  if train_epochs:
    train_steps = steps_for_epochs(
        mixture_or_task_name, train_epochs, batch_size
    )
  if not train_steps:
    raise ValueError(
        "set TRAIN_STEPS (trainer.train.train_steps) or trainer.train.train_epochs"
    )

  # --- abstract state and shardings (nothing allocated yet) ---
  rng = jax.random.PRNGKey(random_seed)
  init_rng, state_rng = jax.random.split(rng)
  input_shapes = _input_shapes(task_feature_lengths)
  abstract_variables = jax.eval_shape(
      lambda r: model.get_initial_variables(r, input_shapes), init_rng
  )
  abstract_params = abstract_variables["params"]
  params_shardings = _params_shardings(partitioner, model, input_shapes)
  abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
  opt_shardings = _opt_state_shardings(
      partitioner, abstract_opt_state, abstract_params, params_shardings
  )
  replicated = partitioner.replicated
  state_shardings = TrainState(
      step=replicated,
      params=params_shardings,
      opt_state=opt_shardings,
      rng=replicated,
  )
  abstract_state = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32),
      params=abstract_params,
      opt_state=abstract_opt_state,
      rng=jax.eval_shape(lambda: state_rng),
  )
  abstract_state = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state,
      state_shardings,
  )

  # --- resume, or initialise (from INITIAL_CHECKPOINT_PATH when given) ---
  checkpoints = orbax_io.CheckpointManager(
      model_dir,
      save_every=save_every,
      keep=keep_checkpoints,
      async_save=async_checkpointing,
  )
  restored = checkpoints.restore_latest(abstract_state)
  if restored is not None:
    state, data_state = restored
    start_step = int(state.step)
    consumed = int(data_state.get("consumed_batches", start_step))
    if (
        data_state.get("batch_size", batch_size) != batch_size
        or data_state.get("data_seed", data_seed) != data_seed
    ):
      log.warning(
          "Resuming with a different BATCH_SIZE or data seed than the checkpoint (%s): "
          "the input order will not match the interrupted run.",
          data_state,
      )
    log.info(
        "Resumed from %s/checkpoint_%d (%d batches consumed)",
        model_dir,
        start_step,
        consumed,
    )
  else:

    def init_state(init_rng, state_rng):
      params = model.get_initial_variables(init_rng, input_shapes)["params"]
      return TrainState(
          step=jnp.zeros((), jnp.int32),
          params=params,
          opt_state=optimizer.init(params),
          rng=state_rng,
      )

    def init_from(params, state_rng):
      return TrainState(
          step=jnp.zeros((), jnp.int32),
          params=params,
          opt_state=optimizer.init(params),
          rng=state_rng,
      )

    if initial_checkpoint_path:
      params = load_initial_params(
          initial_checkpoint_path, abstract_params, params_shardings
      )
      p_init = partitioner.partition(
          init_from,
          in_shardings=(params_shardings, replicated),
          out_shardings=state_shardings,
      )
      state = p_init(params, state_rng)
    else:
      p_init = partitioner.partition(
          init_state,
          in_shardings=(replicated, replicated),
          out_shardings=state_shardings,
      )
      state = p_init(init_rng, state_rng)
    start_step, consumed = 0, 0

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
    register_ni_for(
        eval_mixture_or_task_name,
        ni_dir,
        model.output_vocabulary,
        task_feature_lengths["inputs"],
    )
  ds = get_dataset(
      mixture_or_task_name,
      task_feature_lengths,
      batch_size,
      split=None,
      shuffle=True,
      seed=data_seed,
      pack=pack,
      use_cached=use_cached,
      shard_info=_data_shard_info(partitioner),
      skip_batches=consumed,
  )
  batches = ds.as_numpy_iterator()

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

  _write_configs(model_dir, initial_checkpoint_path, model)
  summaries = _Summaries(model_dir, "train")
  eval_summaries = _Summaries(model_dir, "eval") if eval_every else None
  tokens_per_batch = batch_size * (
      task_feature_lengths["inputs"] + task_feature_lengths["targets"]
  )
  flops_per_step = _train_step_flops(
      model, abstract_params, task_feature_lengths, batch_size
  )
  peak = _peak_flops_per_device(peak_flops_per_device)
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
      host_batch = next(batches)
    except StopIteration:
      raise RuntimeError(
          f"the input {mixture_or_task_name!r} ran out of batches"
      ) from None
    return partitioner.host_local_to_global(host_batch), time.time() - t0

  last_step = (
      train_steps
      if stop_after_step is None
      else min(train_steps, stop_after_step)
  )
  batch, input_wait = next_batch()
  window_start, window_steps, window_wait = time.time(), 0, input_wait
  loop_start, steps_done = time.time(), 0
  last_good = checkpoints.latest_step()
  metrics_host = {}
  step = start_step
  try:
    for step in range(start_step + 1, last_step + 1):
      state, metrics = p_train_step(state, batch)
      consumed += 1
      if (
          step < last_step
      ):  # overlap reading the next batch with this step's compute
        batch, wait = next_batch()
        window_wait += wait
      metrics_host = jax.device_get(metrics)
      if not bool(metrics_host["is_finite"]):
        checkpoints.wait()
        good = checkpoints.latest_step()
        raise NonFiniteLossError(
            f"non-finite value at step {step} (loss={float(metrics_host['loss'])}, "
            f"grad_norm={float(metrics_host['grad_norm'])}, "
            f"update_norm={float(metrics_host['update_norm'])}, "
            f"learning_rate={float(metrics_host['learning_rate'])}); stopping without saving it. "
            + (
                f"Last good checkpoint: {model_dir}/checkpoint_{good}."
                if good is not None
                else f"No checkpoint was written to {model_dir}."
            )
        )
      window_steps += 1
      steps_done += 1
      if step % log_every == 0 or step == last_step:
        elapsed = time.time() - window_start
        step_time = elapsed / max(window_steps, 1)
        eta = (time.time() - loop_start) / steps_done * (train_steps - step)
        tokens_per_s = tokens_per_batch / step_time
        tflops = flops_per_step / step_time / 1e12
        mfu = (
            flops_per_step / step_time / (peak * jax.device_count())
            if peak
            else None
        )
        log.info(
            "step %d/%d loss %.4f lr %.3g grad_norm %.3f | %.0f tokens/s %.3f TFLOP/s%s "
            "input wait %.2fs | ETA %s",
            step,
            train_steps,
            float(metrics_host["loss"]),
            float(metrics_host["learning_rate"]),
            float(metrics_host["grad_norm"]),
            tokens_per_s,
            tflops,
            f" MFU {mfu:.1%}" if mfu is not None else "",
            window_wait,
            _fmt_seconds(eta),
        )
        summaries.scalars(
            step,
            {
                "loss": metrics_host["loss"],
                "learning_rate": metrics_host["learning_rate"],
                "grad_norm": metrics_host["grad_norm"],
                "z_loss": metrics_host.get("z_loss"),
                "accuracy": metrics_host.get("accuracy"),
                "timing/tokens_per_second": tokens_per_s,
                "timing/steps_per_second": 1.0 / step_time,
                "timing/model_tflops_per_second": tflops,
                "timing/mfu": mfu,
                "timing/input_wait_seconds": window_wait,
            },
        )
        window_start, window_steps, window_wait = time.time(), 0, 0.0
      if checkpoints.should_save(step) or step == train_steps:
        checkpoints.save(
            step,
            state,
            {
                "consumed_batches": consumed,
                "batch_size": batch_size,
                "data_seed": data_seed,
                "mixture": mixture_or_task_name,
            },
            force=step == train_steps,
        )
      if eval_every and (step % eval_every == 0 or step == train_steps):
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
    if jax.process_index() == 0:
      with _gfile().GFile(
          os.path.join(model_dir, "operative_config.gin"), "w"
      ) as f:
        f.write(gin.operative_config_str())
  finally:
    checkpoints.close()
    summaries.close()
    if eval_summaries:
      eval_summaries.close()
  log.info(
      "Done at step %d (last checkpoint %s) in %s",
      step,
      last_good,
      _fmt_seconds(time.time() - t_setup),
  )
  return {
      "step": step,
      "loss": float(metrics_host["loss"]) if metrics_host else None,
      "state": state,
  }


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
  ds = get_dataset(
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


def _fmt_seconds(seconds):
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}"
