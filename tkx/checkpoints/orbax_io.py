"""tkx checkpoints on orbax: save every N steps, keep the last K, atomic, exact resume.

This module stores the steps of a tkx checkpoint directory (`checkpoint_<step>/state/`
and `data_state/`); `tkx.checkpoints.layout` names what lies in the directory and
`tkx.checkpoints.directory` reads and writes the rest (model.gin, vocabulary).

Atomicity: orbax writes a step into `checkpoint_<step>.orbax-checkpoint-tmp-<t>/` and
renames it to `checkpoint_<step>/` only once every item is written (and puts a
`commit_success.txt` in it); listing ignores the tmp directories and we delete
stale ones on start. A SIGKILL mid-save therefore leaves the previous checkpoint
as the latest. As a second line of defence `restore_latest` falls back to the
next older step, with a warning, if the newest one cannot be read.
"""

import logging
import os
import shutil
from typing import Any, Mapping, Optional, Tuple

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from tkx import multihost, storage
from tkx.checkpoints import layout

STATE_ITEM = layout.STATE_ITEM
DATA_ITEM = layout.DATA_ITEM
STEP_PREFIX = layout.STEP_PREFIX

log = logging.getLogger(__name__)


def _to_tree(state):
  # TrainState dataclasses and optax NamedTuples -> nested dicts orbax stores by name.
  return flax.serialization.to_state_dict(state)


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return ocp.utils.to_shape_dtype_struct(x)


def _remove_stale_tmp_dirs(directory):
  """Deletes what a killed save left (`checkpoint_<step>.orbax-checkpoint-tmp-*`), on the primary host."""
  if (
      not multihost.is_primary_host()
      or storage.is_remote(directory)
      or not os.path.isdir(directory)
  ):
    return
  for name in os.listdir(directory):
    if name.startswith(STEP_PREFIX + "_") and ".orbax-checkpoint-tmp" in name:
      log.warning("Removing incomplete checkpoint %s/%s", directory, name)
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


class CheckpointManager:
  """Saves `(train_state, data_state)` every `save_every` steps, keeping the newest `keep`.

  `save(step, ..., force=True)` saves regardless of the interval (the final step).
  Saves are asynchronous (orbax writes in a background thread once the arrays are
  copied off the device); `wait()` blocks until the last one is on disk.
  """

  def __init__(
      self,
      directory: str,
      save_every: int = 1000,
      keep: Optional[int] = None,
      async_save: bool = True,
      read_only: bool = False,
  ):
    self.directory = storage.abspath(directory)
    self.save_every = max(int(save_every), 1)
    self.keep = keep
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1,  # we decide when to save (save_every / force)
        max_to_keep=keep,
        step_prefix=STEP_PREFIX,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=async_save,
        read_only=read_only,
        create=not read_only,
    )
    if not read_only:
      _remove_stale_tmp_dirs(self.directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=(STATE_ITEM, DATA_ITEM)
    )

  # -- queries -----------------------------------------------------------------
  def all_steps(self):
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def should_save(self, step: int) -> bool:
    return step % self.save_every == 0

  # -- save ----------------------------------------------------------------------
  def save(
      self,
      step: int,
      train_state: Any,
      data_state: Optional[Mapping] = None,
      force: bool = False,
  ) -> bool:
    """Writes checkpoint_<step> when due (or forced); returns whether it did."""
    if not (force or self.should_save(step)):
      return False
    if step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(
        **{
            STATE_ITEM: ocp.args.StandardSave(_to_tree(train_state)),
            DATA_ITEM: ocp.args.JsonSave(dict(data_state or {})),
        }
    )
    self._manager.save(step, args=args, force=True)
    log.info(
        "Saving checkpoint %s/%s", self.directory, layout.step_dir_name(step)
    )
    return True

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  # -- restore -------------------------------------------------------------------
  def restore(self, step: int, abstract_train_state: Any) -> Tuple[Any, dict]:
    """Restores step `step` into the structure, dtypes and shardings of `abstract_train_state`."""
    abstract_tree = jax.tree_util.tree_map(
        _abstract, _to_tree(abstract_train_state)
    )
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardRestore(abstract_tree),
                DATA_ITEM: ocp.args.JsonRestore(),
            }
        ),
    )
    state = flax.serialization.from_state_dict(
        abstract_train_state, restored[STATE_ITEM]
    )
    return state, dict(restored[DATA_ITEM] or {})

  def restore_latest(
      self, abstract_train_state: Any
  ) -> Optional[Tuple[Any, dict]]:
    """(train_state, data_state) of the newest readable checkpoint, or None when there is none."""
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, abstract_train_state)
      except (
          Exception
      ) as e:  # an incomplete or damaged step: try the one before
        log.warning(
            "Cannot restore %s/%s (%s: %s); trying an older checkpoint.",
            self.directory,
            layout.step_dir_name(step),
            type(e).__name__,
            e,
        )
    return None


def save_params(directory: str, params: Any, step: int = 0) -> str:
  """Writes a params-only tkx checkpoint (as `tkx import-checkpoint` does); returns the step dir."""
  manager = CheckpointManager(directory, save_every=1, async_save=False)
  manager.save(step, {"params": params}, data_state={}, force=True)
  manager.close()
  return storage.join(manager.directory, layout.step_dir_name(step))


def is_tkx_checkpoint(path: str) -> bool:
  try:
    return storage.isdir(storage.join(layout.find_step_dir(path), STATE_ITEM))
  except FileNotFoundError:
    return False


def load_params(path: str, abstract_params: Any = None) -> Any:
  """The "params" subtree of a tkx checkpoint (dir or one `checkpoint_<step>` dir).

  With `abstract_params` (ShapeDtypeStructs, optionally with shardings) only the
  parameters are read (not the optimizer state), into those shardings and dtypes;
  without it they come back as host numpy arrays.
  """
  # orbax reads no metadata through a relative path (README's `ckpts/run1`).
  state_dir = storage.abspath(
      storage.join(layout.find_step_dir(path), STATE_ITEM)
  )
  checkpointer = ocp.PyTreeCheckpointer()
  if abstract_params is None:
    meta = checkpointer.metadata(state_dir)
    meta = getattr(meta, "item_metadata", meta)  # StepMetadata -> TreeMetadata
    tree = getattr(meta, "tree", meta)
    if "params" not in tree:
      raise KeyError(
          f"{state_dir} has no 'params' entry (found {sorted(tree)})"
      )
    item = {"params": jax.tree_util.tree_map(lambda _: 0, tree["params"])}
    restore_args = {
        "params": jax.tree_util.tree_map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree["params"]
        )
    }
  else:
    abstract_params = jax.tree_util.tree_map(_abstract, abstract_params)
    item = {"params": abstract_params}
    restore_args = {
        "params": jax.tree_util.tree_map(
            lambda a: ocp.ArrayRestoreArgs(
                sharding=a.sharding, global_shape=a.shape, dtype=a.dtype
            )
            if getattr(a, "sharding", None) is not None
            else ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype),
            abstract_params,
        )
    }
  restored = checkpointer.restore(
      state_dir,
      args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True
      ),
  )
  return restored["params"]
