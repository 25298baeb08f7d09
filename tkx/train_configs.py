"""A training run's settings, grouped as t5x groups them (gin-configurable dataclasses).

`trainer.train` takes one of each (t5x's `DatasetConfig` / `CheckpointConfig`
shape, tkx's fields):

  DatasetConfig     the training input: mixture, feature lengths, batch size, checkout, seed
  PackingConfig     packed rows: on/off, rows per step, encoder blocks, decoder row, window
  CheckpointConfig  where a new run starts from, how often it saves, how many it keeps
  EvaluationConfig  held-out loss (and a generation hook) every N steps
  LoggingConfig     the step line and TensorBoard scalars every N steps; peak FLOP/s for MFU

and which parameters it trains (`Trainable`, TRAINABLE: all of them, or only
the adapters over a frozen base; docs/adapters.md).

gin_configs/runs/finetune.gin binds every field to a run macro (BATCH_SIZE,
SAVE_EVERY, EVAL_EVERY, ...), so `--gin.MACRO=...` is how a user sets them; a
field without a macro is bound directly (`--gin.LoggingConfig.log_every=20`).
A dataclass is a value: checks that name the macro (`check_*`) run in
`trainer.train`, after gin has built them, so a required macro left unset is
reported with its name (not as gin's error about an argument).
"""

import dataclasses
import enum
import os
from typing import Callable, Mapping, Optional, Union

import gin

from tkx import errors
from tkx.data import packing

# A packed-layout setting: a number, 'auto' (chosen from the data) or None (see PackingConfig).
Setting = Union[int, str, None]


@gin.configurable(module="train_configs")
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """The training input (t5x's DatasetConfig of the train split).

  `batch_size` is examples per step (BATCH_SIZE); a packed step is
  `PackingConfig.batch_size` rows instead. `ni_dir` is the NI checkout the
  `ni_*` names are registered from (None: the embedded tasks/). `seed` orders
  the examples (DATA_SEED): each epoch a permutation seeded by (seed, epoch).
  """

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int
  ni_dir: Optional[str] = None
  use_cached: bool = False
  seed: int = 0


@gin.configurable(module="train_configs")
@dataclasses.dataclass(frozen=True)
class PackingConfig:
  """Packed rows (tkx.data.packing, docs/packing.md); `pack=False` pads each example to a row.

  A row is `encoder_blocks` encoder blocks of TASK_FEATURE_LENGTHS inputs
  sharing one decoder row of `targets_length` tokens; a step is `batch_size`
  rows; rows are filled over a window of `window` examples. 'auto' (each of the
  three) chooses from a sample of the run's examples (tkx.data.packing_plan);
  `batch_size=None` means BATCH_SIZE rows.
  """

  pack: bool = False
  batch_size: Setting = None
  encoder_blocks: Setting = 1
  targets_length: Setting = None
  window: int = packing.DEFAULT_WINDOW


@gin.configurable(module="train_configs")
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Checkpoints of the run in MODEL_DIR (t5x's CheckpointConfig: restore + save).

  A run resumes from MODEL_DIR's newest checkpoint; without one it starts from
  `initial_checkpoint_path` (a tkx or t5x checkpoint: parameters only) or at
  random. It saves every `save_every` steps and the last, keeping the newest
  `keep` (None: all); `async_save` writes in the background.
  """

  initial_checkpoint_path: Optional[str] = None
  save_every: int = 1000
  keep: Optional[int] = None
  async_save: bool = True


@gin.configurable(module="train_configs")
@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
  """Held-out loss every `every` steps and at the last (None: never).

  Over up to `batches` batches of `mixture_or_task_name` (None: the training
  mixture, with a warning) and its `split` (None: the name's own split);
  `generation_eval_fn(*, model, params, step, model_dir) -> {name: float}`
  (e.g. `evaluate.generation_eval`) adds decoded metrics.
  """

  mixture_or_task_name: Optional[str] = None
  split: Optional[str] = None
  every: Optional[int] = None
  batches: int = 10
  generation_eval_fn: Optional[Callable[..., Mapping[str, float]]] = None


@gin.configurable(module="train_configs")
@dataclasses.dataclass(frozen=True)
class LoggingConfig:
  """One step line and TensorBoard scalars (MODEL_DIR/train) every `log_every` steps.

  `peak_flops_per_device` is the denominator of MFU where the device kind is
  not known to `tkx.models.model_info` (None: look it up; unknown: no MFU).
  """

  log_every: int = 10
  peak_flops_per_device: Optional[float] = None


class Trainable(enum.Enum):
  """Which parameters a run trains (TRAINABLE; `trainer.train.trainable`)."""

  # Full fine-tuning: every parameter has gradients and optimizer state.
  ALL = "all"
  # Parameter-efficient: only the adapters (LoRA's lora_a/lora_b, the tuned prompt;
  # `tkx.models.adapters`). The base is read from INITIAL_CHECKPOINT_PATH, held
  # outside the train state (no gradients, no optimizer state, not copied per step)
  # and named in model.gin; checkpoints hold the adapters only.
  ADAPTERS = "adapters"

  @classmethod
  def parse(cls, value) -> "Trainable":
    if isinstance(value, cls):
      return value
    try:
      return cls(str(value).lower())
    except ValueError:
      raise errors.ConfigError(
          f"TRAINABLE must be one of {[m.value for m in cls]}, got {value!r}"
      ) from None


# ------------------------------------------------------------------------------
# Checks that name the macro (one line, before anything is built)
# ------------------------------------------------------------------------------
def check_required(**values_by_macro):
  """A ConfigError naming every macro still bound to %gin.REQUIRED (in the order given)."""
  missing = [
      name for name, value in values_by_macro.items() if value is gin.REQUIRED
  ]
  if missing:
    raise errors.ConfigError(
        f"trainer.train: set {', '.join(missing)} (e.g. --gin.{missing[0]}=...); "
        "the gin files leave them required"
    )


def check_positive_int(name, value, allow_none=False):
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise errors.ConfigError(
        f"{name} must be a positive integer, got {value!r}"
    )


def check_run_values(
    model_dir, batch_size, batch_name, train_steps, task_feature_lengths
):
  """Errors naming the gin macro for values of the wrong kind (instead of a failure deep in the run)."""
  if not isinstance(model_dir, (str, os.PathLike)):
    raise errors.ConfigError(
        f"MODEL_DIR must be a string (--gin.MODEL_DIR=\"'/path'\"), got {model_dir!r}"
    )
  check_positive_int(batch_name, batch_size)
  check_positive_int("TRAIN_STEPS", train_steps, allow_none=True)
  if not isinstance(task_feature_lengths, Mapping) or set(
      task_feature_lengths
  ) != {"inputs", "targets"}:
    raise errors.ConfigError(
        'TASK_FEATURE_LENGTHS must be {"inputs": N, "targets": M}, got '
        f"{task_feature_lengths!r}"
    )
  for key, value in task_feature_lengths.items():
    check_positive_int(f"TASK_FEATURE_LENGTHS[{key!r}]", value)
