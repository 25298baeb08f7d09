"""Names inside a tkx checkpoint directory, and finding its steps (imports only tkx.storage).

    <dir>/checkpoint_<step>/state/        orbax PyTree {"params", and for training runs
                                          "step", "opt_state", "rng"}   (orbax_io)
    <dir>/checkpoint_<step>/data_state/   JSON input position           (orbax_io)
    <dir>/model.gin                       the model config (directory.write_model_files)
    <dir>/spm.model                       the vocabulary, when it came with the weights

t5x checkpoints name their steps the same way (`checkpoint_<step>/`). Paths may be local or remote
(`tkx.storage`).
"""

import os
import posixpath
import re
from typing import List, Optional

from tkx import storage

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
  match = _STEP_DIR.match(posixpath.basename(storage.normpath(path)))
  return int(match.group(1)) if match else None


def list_steps(directory: str) -> List[int]:
  """Sorted steps of the `checkpoint_<step>` entries of `directory` (complete saves only)."""
  if not storage.isdir(directory):
    return []
  return sorted(
      step
      for step in (step_of(name) for name in storage.listdir(directory))
      if step is not None
  )


def find_step_dir(path: str) -> str:
  """`path` itself when it is a `checkpoint_<step>` dir, else its newest step dir."""
  path = os.fspath(path)
  if step_of(path) is not None:
    return path
  if not storage.isdir(path):
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  steps = list_steps(path)
  if not steps:
    raise FileNotFoundError(
        f"no {STEP_PREFIX}_<step> directory in {path} "
        f"(is it a tkx checkpoint directory?)"
    )
  return storage.join(path, step_dir_name(steps[-1]))


def root_of(path: str) -> str:
  """The directory holding `model.gin` for a checkpoint dir or one of its `checkpoint_<step>/` dirs."""
  path = storage.normpath(path)
  if not storage.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if storage.isfile(storage.join(path, MODEL_GIN)):
    return path
  parent = posixpath.dirname(path)
  if step_of(path) is not None and storage.isfile(
      storage.join(parent, MODEL_GIN)
  ):
    return parent
  raise FileNotFoundError(
      f"{path} is not a tkx checkpoint: no {MODEL_GIN} in it (a tkx checkpoint dir holds "
      f"{STEP_PREFIX}_<step>/, {MODEL_GIN} and optionally {SPM_MODEL}; make one with "
      "`tkx train` or `tkx import-checkpoint`)"
  )
