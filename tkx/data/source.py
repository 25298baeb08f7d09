"""One data source per (checkout, track, split, selection): every selected instance of the split.

`SplitSource` holds, in split-file order, the selected instances of all the
split's tasks (`id`, `input`, `output`) plus one record per task (the task file
without its instances: definition, examples, categories, ...). Encodings are
applied later, per example, so one source serves every encoding. FLAN's NIv2
shape: rows with `task`, `category`, `id`, `references`.

Building it parses each task file once. The result is cached on disk
(`cache_dir()`, a pickle per source) under a key made of the checkout's path,
the split file's bytes, every listed task file's size and mtime, the selection
settings and `CACHE_VERSION`; a changed, added or removed task file, split line
or setting gives another key, so a stale cache is never read. A run on the same
checkout and settings loads the pickle instead of the JSON (for the full
1,616-task checkout: seconds instead of minutes). Set TKX_NI_CACHE=off to
disable, or to a directory to move it (local or remote, e.g. `gs://bucket/ni-cache`).

The checkout and the cache may be remote (`gs://...`): both are read through
`tkx.storage`, the task files' versions come from one listing of `tasks/` (the
object generation remotely), and a cache file is written with
`io_utils.atomic_write` (renamed locally, uploaded whole remotely).

Contract (the names other modules rely on; change one only together with its users):
- `check_checkout(ni_dir) -> abspath`: `NIDataError` naming the path unless it is a directory with
  `splits/<track>/*_tasks.txt`. Every command calls it on a checkout the user named.
- `SourceKey(ni_dir, track, split, max_num_instances_per_task, seed, selection, skip_missing)`;
  `source_for(ni_dir, track, split, *, max_num_instances_per_task, seed, selection, skip_missing) -> SplitSource`
  (memory, then disk cache keyed by a fingerprint of key + split-file bytes + task files' size and mtime
  (object generation remotely; `storage.file_versions`) + `CACHE_VERSION`, then the JSON). `cache_dir()` from
  `TKX_NI_CACHE` (`off` disables; local or remote, written with `io_utils.atomic_write`). `tfds_source(...)`
  for prepared records.
- `SplitSource`: `len`, `row(i) -> (task dict without Instances, instance {id,input,output})`, `tasks`,
  `row_task` (int32 row -> task index), `task_rows(ni_task) -> range` (contiguous), `lookup(ni_task, id)`.
"""

import dataclasses
import hashlib
import logging
import os
import pickle
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from tkx import io_utils, storage
from tkx.data import ni

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_CACHE_ENV = "TKX_NI_CACHE"
_OFF = ("off", "0", "none", "")


def cache_dir() -> Optional[str]:
  """Where sources are cached (TKX_NI_CACHE; default ~/.cache/tkx/ni); None when disabled."""
  value = os.environ.get(_CACHE_ENV)
  if value is None:
    return os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
        "tkx",
        "ni",
    )
  return None if value.strip().lower() in _OFF else value


def check_checkout(ni_dir, what: str = "NI checkout") -> str:
  """The absolute checkout path; NIDataError naming it unless it has `splits/<track>/*_tasks.txt`.

  Every command calls this before using a checkout the user named, so a typo is
  an error instead of a silent fall-back to another dataset.
  """
  path = storage.abspath(ni_dir)
  if not storage.isdir(path):
    raise ni.NIDataError(
        f"{what} not found: {path} does not exist or is not a directory"
    )
  if not any(ni.list_splits(path, track) for track in ni.TRACKS):
    raise ni.NIDataError(
        f"{what} {path} has no split files (expected "
        f"splits/<{'|'.join(ni.TRACKS)}>/<split>_tasks.txt and tasks/<task>.json)"
    )
  return path


@dataclasses.dataclass(frozen=True)
class SourceKey:
  """What determines a source's rows."""

  ni_dir: str
  track: str
  split: str
  max_num_instances_per_task: Optional[int]
  seed: int
  selection: ni.Selection = ni.DEFAULT_SELECTION
  skip_missing: bool = False


class SplitSource:
  """The selected instances of one split: rows in split-file order, task by task."""

  def __init__(
      self,
      key: SourceKey,
      tasks: List[Dict[str, Any]],
      row_task: np.ndarray,
      instances: List[Dict[str, Any]],
  ):
    self.key = key
    self.tasks = tasks  # task dicts without "Instances", with "Task"
    self.row_task = row_task  # int32 [rows]: index into tasks
    self.instances = instances  # {"id", "input", "output"} per row
    self._by_id = None
    self._lock = threading.Lock()

  @property
  def split(self) -> str:
    return self.key.split

  def __len__(self) -> int:
    return len(self.instances)

  def row(self, index: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(task dict, instance) of row `index`."""
    return self.tasks[int(self.row_task[index])], self.instances[index]

  def task_names(self) -> List[str]:
    return [t["Task"] for t in self.tasks]

  def task_rows(self, ni_task: str) -> range:
    """The rows of one NI task (contiguous)."""
    index = self.task_names().index(ni_task)
    rows = np.flatnonzero(self.row_task == index)
    return range(int(rows[0]), int(rows[-1]) + 1) if len(rows) else range(0)

  def lookup(self, ni_task: str, instance_id: str):
    """(task, instance) by task name and instance id; KeyError naming both when absent."""
    with self._lock:
      if self._by_id is None:
        self._by_id = {
            (self.tasks[int(t)]["Task"], inst["id"]): i
            for i, (t, inst) in enumerate(zip(self.row_task, self.instances))
        }
    try:
      return self.row(self._by_id[(ni_task, instance_id)])
    except KeyError:
      raise KeyError(
          f"instance {instance_id!r} of task {ni_task!r} is not a selected instance of "
          f"{self.key.ni_dir} {self.key.track}/{self.key.split}"
      ) from None


def _fingerprint(key: SourceKey) -> str:
  digest = hashlib.sha256()
  digest.update(repr((CACHE_VERSION, dataclasses.astuple(key))).encode())
  digest.update(
      storage.read_bytes(ni.split_path(key.ni_dir, key.track, key.split))
  )
  lines, _ = ni.read_split_lines(key.ni_dir, key.track, key.split)
  versions = storage.file_versions(storage.join(key.ni_dir, "tasks"))
  for name in dict.fromkeys(lines):
    version = versions.get(f"{name}.json", "missing")
    digest.update(f"{name}:{version};".encode())
  return digest.hexdigest()[:32]


def _build(key: SourceKey) -> SplitSource:
  """Parses the split's task files once, in split-file order, keeping only the selection."""
  lines, _ = ni.read_split_lines(key.ni_dir, key.track, key.split)
  present = set(
      ni.split_tasks(
          key.ni_dir, key.track, key.split, skip_missing=key.skip_missing
      )
  )
  if not present:
    raise ni.NIDataError(
        "the split lists no tasks",
        file=ni.split_path(key.ni_dir, key.track, key.split),
        field=f"splits/{key.track}/{key.split}_tasks.txt",
    )
  selector = ni.SplitSelector(
      key.split, key.max_num_instances_per_task, key.seed, key.selection
  )
  tasks, row_task, instances, seen = [], [], [], set()
  start, last_log = time.time(), time.time()
  tasks_in_order = ni.iter_tasks(
      key.ni_dir, [name for name in lines if name in present]
  )
  for count, name in enumerate(lines, 1):
    if name not in present:
      continue
    task = next(tasks_in_order)
    chosen = selector.select(task)
    if (
        name not in seen
    ):  # a repeated line advanced the stream; its rows are read once
      seen.add(name)
      meta = {k: v for k, v in task.items() if k != "Instances"}
      tasks.append(meta)
      for instance in chosen:
        row_task.append(len(tasks) - 1)
        instances.append(
            {
                "id": instance["id"],
                "input": instance["input"],
                "output": list(instance["output"]),
            }
        )
    if time.time() - last_log > 10 or count == len(lines):
      last_log = time.time()
      log.info(
          "%s/%s: read %d/%d task files, %d instances selected (%.0f s)",
          key.track,
          key.split,
          count,
          len(lines),
          len(instances),
          time.time() - start,
      )
  return SplitSource(key, tasks, np.asarray(row_task, np.int32), instances)


_SOURCES: Dict[str, SplitSource] = (
    {}
)  # by fingerprint: a changed checkout is re-read
_SOURCES_LOCK = threading.Lock()


def load_source(key: SourceKey) -> SplitSource:
  """The source for `key`: from this process's memory, the disk cache, or the JSON checkout."""
  with _SOURCES_LOCK:
    fingerprint = _fingerprint(key)
    if fingerprint in _SOURCES:
      return _SOURCES[fingerprint]
    directory = cache_dir()
    path = None
    if directory is not None:
      path = storage.join(directory, f"source-{fingerprint}.pkl")
      if storage.isfile(path):
        try:
          with storage.open(path, "rb") as f:
            tasks, row_task, instances = pickle.load(f)
          source = SplitSource(key, tasks, row_task, instances)
          log.info(
              "%s/%s: %d instances of %d tasks from the cache %s",
              key.track,
              key.split,
              len(source),
              len(tasks),
              path,
          )
          _SOURCES[fingerprint] = source
          return source
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
          log.warning("Ignoring unreadable NI cache %s (%s)", path, e)
    source = _build(key)
    if path is not None:
      _write_atomically(path, (source.tasks, source.row_task, source.instances))
    _SOURCES[fingerprint] = source
    return source


def _write_atomically(path: str, value) -> None:
  """Another process building the same source at once writes the same bytes; the write is atomic."""
  try:
    with io_utils.atomic_write(path, "wb") as f:
      pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
  except OSError as e:
    log.warning("Could not write the NI cache %s (%s); continuing", path, e)


def source_for(
    ni_dir,
    track: str,
    split: str,
    *,
    max_num_instances_per_task: Optional[int],
    seed: int = 42,
    selection=ni.DEFAULT_SELECTION,
    skip_missing: bool = False,
) -> SplitSource:
  return load_source(
      SourceKey(
          storage.abspath(ni_dir),
          track,
          split,
          max_num_instances_per_task,
          seed,
          ni.Selection.parse(selection),
          skip_missing,
      )
  )


def clear_memory() -> None:
  """Forgets in-process sources (tests; a changed checkout gets a new key anyway)."""
  with _SOURCES_LOCK:
    _SOURCES.clear()


def selected_ids(source: SplitSource) -> List[Tuple[str, str]]:
  return [(t["Task"], i["id"]) for t, i in map(source.row, range(len(source)))]


_TFDS_SOURCES: Dict[tuple, SplitSource] = {}


def tfds_source(
    tfds_name: str, data_dir: Optional[str], track: str, split: str
) -> SplitSource:
  """The source of a split prepared by `tkx.data.tfds_ni` (its selection was made at preparation)."""
  from tkx.data import tfds_ni  # pylint: disable=g-import-not-at-top

  cache_key = (tfds_name, data_dir, split)
  with _SOURCES_LOCK:
    if cache_key not in _TFDS_SOURCES:
      key = SourceKey(f"tfds:{data_dir}/{tfds_name}", track, split, None, 0)
      tasks, row_task, instances = [], [], []
      for task, instance in tfds_ni.iter_split(tfds_name, data_dir, split):
        if not tasks or tasks[-1]["Task"] != task["Task"]:
          tasks.append(task)
        row_task.append(len(tasks) - 1)
        instances.append(instance)
      _TFDS_SOURCES[cache_key] = SplitSource(
          key, tasks, np.asarray(row_task, np.int32), instances
      )
    return _TFDS_SOURCES[cache_key]
