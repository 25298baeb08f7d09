"""tkx checkpoints on orbax: save every N steps, keep the last K, atomic, exact resume.

This module stores the steps of a tkx checkpoint directory (`checkpoint_<step>/state/`
and `data_state/`); `tkx.checkpoints.layout` names what lies in the directory and
`tkx.checkpoints.directory` reads and writes the rest (model.gin, vocabulary).

Atomicity: orbax writes a step into `checkpoint_<step>.orbax-checkpoint-tmp-<t>/` and
renames it to `checkpoint_<step>/` only once every item is written (and puts a
`commit_success.txt` in it); listing ignores the tmp directories and we delete
stale ones on start. A SIGKILL mid-save therefore leaves the previous checkpoint
as the latest.

Restore is agreed: `restore_latest` restores the newest step that every process
can read (`agreed_step`: each checks a step's committed metadata, the processes
all-gather their newest readable step until they agree), so an incomplete or
damaged newest step is skipped by all processes together and said once.
"""

import json
import logging
import os
import shutil
from typing import Any, Mapping, Optional, Tuple

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from tkx import errors, io_utils, multihost, storage
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
    self._unreadable = (
        {}
    )  # step -> why this process cannot read it (None: it can)
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
      chunk_byte_size: Optional[int] = None,
  ) -> bool:
    """Writes checkpoint_<step> when due (or forced); returns whether it did.

    `chunk_byte_size` caps the stored chunks (default: one chunk per written
    shard), so that a reader of a slice decodes no more than the chunks it needs.
    """
    if not (force or self.should_save(step)):
      return False
    if step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(
        **{
            STATE_ITEM: ocp.args.StandardSave(
                _to_tree(train_state),
                save_args=jax.tree_util.tree_map(
                    lambda _: ocp.SaveArgs(chunk_byte_size=chunk_byte_size),
                    _to_tree(train_state),
                )
                if chunk_byte_size
                else None,
            ),
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
    io_utils.return_large_buffers_to_os()  # read buffers leave no lasting peak
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
    """(train_state, data_state) of the newest step every process can read, or None when there is none.

    The step is agreed by all processes (`agreed_step`), so they restore the same
    one. One process falls back to the next older step when a restore fails; with
    several a failed restore raises (a process leaving orbax's restore early would
    leave the others waiting at its barrier).
    """
    step = self.agreed_step()
    while step is not None:
      try:
        return self.restore(step, abstract_train_state)
      except Exception as e:  # pylint: disable=broad-except
        reason = f"{type(e).__name__}: {e}"
        if jax.process_count() > 1:
          raise CheckpointReadError(
              f"{self.directory}/{layout.step_dir_name(step)}: cannot restore "
              f"({reason}); move it away to resume from the step before"
          ) from e
        self._unreadable[step] = reason
        log.warning(
            "Cannot restore %s/%s (%s); trying an older checkpoint.",
            self.directory,
            layout.step_dir_name(step),
            reason,
        )
        step = self.agreed_step()
    return None

  def agreed_step(self) -> Optional[int]:
    """The newest step that every process finds readable (`unreadable_reason`); the same on all.

    Each process proposes its newest readable step at most the last agreed bound;
    the minimum of the proposals becomes the bound until every process proposes
    it (one all-gather per round; one round when all read the newest). Steps skipped
    are said once, by the primary process; each process warns of what it cannot read.
    """
    steps = self.all_steps()
    bound, first_proposals = None, None
    while True:
      mine = next(
          (
              s
              for s in reversed(steps)
              if (bound is None or s <= bound)
              and self.unreadable_reason(s) is None
          ),
          -1,
      )
      proposals = _all_processes(mine)
      first_proposals = first_proposals or proposals
      bound = min(proposals)
      if bound == max(proposals):
        break
    agreed = None if bound < 0 else bound
    skipped = sorted(
        {s for s in first_proposals if s > bound}
        | {s for s in steps if s > bound}
    )
    if skipped and multihost.is_primary_host():
      log.warning(
          "Skipping checkpoint(s) %s of %s: not readable on every process; all "
          "processes restore %s",
          ", ".join(str(s) for s in skipped),
          self.directory,
          layout.step_dir_name(agreed) if agreed is not None else "none",
      )
    return agreed

  def unreadable_reason(self, step: int) -> Optional[str]:
    """Why this process cannot read step `step` (None: it can), from the step's files.

    Checked: the step was committed and the metadata of the checkpoint and of both
    items parses (what orbax reads before any array), and the state's array store
    is there. Memoised per manager.
    """
    if step not in self._unreadable:
      self._unreadable[step] = _step_problem(
          os.path.join(self.directory, layout.step_dir_name(step))
      )
      if self._unreadable[step] is not None:
        log.warning(
            "Cannot read %s/%s on process %d: %s",
            self.directory,
            layout.step_dir_name(step),
            jax.process_index(),
            self._unreadable[step],
        )
    return self._unreadable[step]


class CheckpointReadError(errors.UserError):
  """An agreed checkpoint step failed to restore (message names the step dir and the cause)."""


# Files orbax reads of a step before any array: (path in the step dir, must parse as JSON).
_STEP_FILES = (
    ("_CHECKPOINT_METADATA", True),
    (f"{STATE_ITEM}/_METADATA", True),
    (f"{STATE_ITEM}/manifest.ocdbt", False),
    (f"{DATA_ITEM}/metadata", True),
)


def _step_problem(step_dir: str) -> Optional[str]:
  """What is wrong with a step's files (None when the metadata reads), for `unreadable_reason`."""
  if "://" in step_dir:  # remote: let orbax's restore find out
    return None
  for name, is_json in _STEP_FILES:
    path = os.path.join(step_dir, name)
    try:
      with open(path, "rb") as f:
        data = f.read()
      if is_json:
        json.loads(data)
      elif not data:
        return f"{name} is empty"
    except (OSError, ValueError) as e:
      return f"{name}: {type(e).__name__}: {e}"
  return None


def _all_processes(value: int) -> list:
  """`value` of every process (itself alone with one process)."""
  if jax.process_count() == 1:
    return [int(value)]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return [
      int(v)
      for v in np.asarray(multihost_utils.process_allgather(np.int64(value)))
  ]


def _read_window_bytes(stored_params) -> int:
  """Bytes of params reads in flight (orbax's default is 96 GB: every array at once).

  `stored_params`: the stored arrays' metadata (`.shape`, `.dtype`).
  The largest chunk-aligned read of one shard: at most 2**rank times its array
  (a chunk is never larger than the array, so each axis at most doubles); a
  smaller window would make orbax refuse that read.
  """
  return (
      max(
          2 ** len(a.shape) * int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
          for a in jax.tree_util.tree_leaves(
              stored_params, is_leaf=lambda x: hasattr(x, "shape")
          )
      )
      + 1
  )


# t5x's chunk cap: a slice of a big array is read without decoding the whole array.
PARAMS_CHUNK_BYTES = 64 * 2**20


def save_params(
    directory: str,
    params: Any,
    step: int = 0,
    chunk_byte_size: int = PARAMS_CHUNK_BYTES,
) -> str:
  """Writes a params-only tkx checkpoint (as `tkx import-checkpoint` does); returns the step dir.

  Arrays are stored in chunks of at most `chunk_byte_size` bytes (t5x's 64 MiB),
  so that shard-wise readers decode about their slices, not whole arrays.
  """
  manager = CheckpointManager(directory, save_every=1, async_save=False)
  manager.save(
      step,
      {"params": params},
      data_state={},
      force=True,
      chunk_byte_size=chunk_byte_size,
  )
  manager.close()
  return storage.join(manager.directory, layout.step_dir_name(step))


def is_tkx_checkpoint(path: str) -> bool:
  try:
    return storage.isdir(storage.join(layout.find_step_dir(path), STATE_ITEM))
  except FileNotFoundError:
    return False


def _state_dir(path: str) -> str:
  # orbax reads no metadata through a relative path (README's `ckpts/run1`).
  return storage.abspath(storage.join(layout.find_step_dir(path), STATE_ITEM))


def _tree_metadata(state_dir: str):
  meta = ocp.PyTreeCheckpointer().metadata(state_dir)
  meta = getattr(meta, "item_metadata", meta)  # StepMetadata -> TreeMetadata
  return getattr(meta, "tree", meta)


def params_metadata(path: str) -> Optional[Any]:
  """The stored params' tree of array metadata (`.shape`, `.dtype`; nothing read), None without "params"."""
  tree = _tree_metadata(_state_dir(path))
  return tree.get("params") if "params" in tree else None


def load_params(path: str, abstract_params: Any = None) -> Any:
  """The "params" subtree of a tkx checkpoint (dir or one `checkpoint_<step>` dir).

  With `abstract_params` (ShapeDtypeStructs, optionally with shardings) only the
  parameters are read (not the optimizer state), into those shardings and dtypes:
  each process reads only the slices its devices hold, cast as they are read.
  Without it they come back whole as host numpy arrays.
  """
  state_dir = _state_dir(path)
  io_utils.return_large_buffers_to_os()
  checkpointer = ocp.PyTreeCheckpointer()
  if abstract_params is None:
    tree = _tree_metadata(state_dir)
    if "params" not in tree:
      raise CheckpointReadError(
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
    checkpointer = ocp.Checkpointer(
        ocp.PyTreeCheckpointHandler(
            restore_concurrent_gb=_read_window_bytes(
                _tree_metadata(state_dir).get("params", abstract_params)
            )
            / 1e9
        )
    )
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
