"""Adapter parameters (LoRA, the tuned prompt) apart from the frozen base, and the base an adapter checkpoint names.

A parameter-efficient run (`trainer.train(trainable='adapters')`,
docs/adapters.md) trains only the adapter leaves of the parameter tree:
LoRA's `<projection>/lora_a`, `<projection>/lora_b` (`tkx.models.lora`) and
the prompt `encoder/prompt/prompt` (`tkx.models.prompt`). The rest, the base
model, is read from INITIAL_CHECKPOINT_PATH and never changes; the run's
checkpoints hold the adapters only, and its model.gin names the base:

    import tkx.models.adapters
    adapters.base_checkpoint.path = '/abs/path/of/the/base'

so a reader (`tkx.checkpoints.directory.load`) rebuilds the model from
model.gin, reads the base from that path and the adapters from the step.

Contract (the names other modules rely on; change one only together with its users):
- `ADAPTER_PARAM_NAMES`; `is_adapter_path(path)` (a tuple of keys from the tree root).
- `split(params) -> (adapters, base)`, `combine(adapters, base) -> params`: nested
  dicts (any leaves: arrays, ShapeDtypeStructs, shardings), no copies.
- gin `adapters.base_checkpoint.path` (`base_checkpoint()` reads it): the base of an
  adapter checkpoint, absolute; `BASE_BINDING` is its name for `gin_utils.query`.
"""

from typing import Any, Mapping, Optional, Sequence

import gin
from flax import traverse_util

from tkx.models import lora

PROMPT_PARAM_NAME = (
    "prompt"  # tkx.models.prompt's parameter (encoder/prompt/prompt)
)
ADAPTER_PARAM_NAMES = tuple(lora.ADAPTER_PARAM_NAMES) + (PROMPT_PARAM_NAME,)
BASE_BINDING = "adapters.base_checkpoint.path"


@gin.configurable(module="adapters")
def base_checkpoint(path: Optional[str] = None) -> Optional[str]:
  """The base checkpoint an adapter checkpoint's model.gin names (None: a plain checkpoint)."""
  return path


def is_adapter_path(path: Sequence[Any]) -> bool:
  """Whether a parameter at `path` (dict keys or jax key entries) is an adapter's."""
  if not path:
    return False
  last = path[-1]
  return getattr(last, "key", last) in ADAPTER_PARAM_NAMES


def split(params: Mapping) -> tuple[dict, dict]:
  """(adapter leaves, the rest) of a nested-dict parameter tree."""
  flat = traverse_util.flatten_dict(dict(params))
  adapters = {k: v for k, v in flat.items() if is_adapter_path(k)}
  base = {k: v for k, v in flat.items() if not is_adapter_path(k)}
  return (
      traverse_util.unflatten_dict(adapters),
      traverse_util.unflatten_dict(base),
  )


def combine(adapters: Mapping, base: Mapping) -> dict:
  """The whole tree from `split`'s two halves."""
  flat = traverse_util.flatten_dict(dict(base))
  flat.update(traverse_util.flatten_dict(dict(adapters)))
  return traverse_util.unflatten_dict(flat)


def num_params(tree: Mapping) -> int:
  import numpy as np

  return int(
      sum(
          np.prod(np.shape(v))
          for v in traverse_util.flatten_dict(dict(tree)).values()
      )
  )
