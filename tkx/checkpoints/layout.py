"""Names inside a tkx checkpoint directory, and finding its steps (no tkx imports).

    <dir>/checkpoint_<step>/state/        orbax PyTree {"params", and for training runs
                                          "step", "opt_state", "rng"}   (orbax_io)
    <dir>/checkpoint_<step>/data_state/   JSON input position           (orbax_io)
    <dir>/model.gin                       the model config (directory.write_model_files)
    <dir>/spm.model                       the vocabulary, when it came with the weights

t5x checkpoints name their steps the same way (`checkpoint_<step>/`).
"""

import os
import re
from typing import List, Optional

STEP_PREFIX = "checkpoint"
STATE_ITEM = "state"
DATA_ITEM = "data_state"
MODEL_GIN = "model.gin"
SPM_MODEL = "spm.model"
_STEP_DIR = re.compile(rf"^{STEP_PREFIX}_(\d+)$")


def step_dir_name(step: int) -> str:
  """`checkpoint_<step>`."""
  return f"{STEP_PREFIX}_{int(step)}"


def step_of(path: str) -> Optional[int]:
  """The step of a `.../checkpoint_<step>` path, else None."""
  match = _STEP_DIR.match(os.path.basename(os.path.normpath(os.fspath(path))))
  return int(match.group(1)) if match else None


def list_steps(directory: str) -> List[int]:
  """Sorted steps of the `checkpoint_<step>` entries of `directory` (complete saves only)."""
  if not os.path.isdir(directory):
    return []
  return sorted(
      step
      for step in (step_of(name) for name in os.listdir(directory))
      if step is not None
  )


def find_step_dir(path: str) -> str:
  """`path` itself when it is a `checkpoint_<step>` dir, else its newest step dir."""
  path = os.fspath(path)
  if step_of(path) is not None:
    return path
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  steps = list_steps(path)
  if not steps:
    raise FileNotFoundError(
        f"no {STEP_PREFIX}_<step> directory in {path} "
        f"(is it a tkx checkpoint directory?)"
    )
  return os.path.join(path, step_dir_name(steps[-1]))


def root_of(path: str) -> str:
  """The directory holding `model.gin` for a checkpoint dir or one of its `checkpoint_<step>/` dirs."""
  path = os.path.normpath(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if os.path.isfile(os.path.join(path, MODEL_GIN)):
    return path
  parent = os.path.dirname(path)
  if step_of(path) is not None and os.path.isfile(
      os.path.join(parent, MODEL_GIN)
  ):
    return parent
  raise FileNotFoundError(
      f"{path} is not a tkx checkpoint: no {MODEL_GIN} in it (a tkx checkpoint dir holds "
      f"{STEP_PREFIX}_<step>/, {MODEL_GIN} and optionally {SPM_MODEL}; make one with "
      "`tkx train` or `tkx import-checkpoint`)"
  )
