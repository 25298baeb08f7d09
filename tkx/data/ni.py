"""Reading a Super-NaturalInstructions checkout.

A checkout holds `tasks/<task>.json` and `splits/<track>/<split>_tasks.txt`
(tracks `default` and `xlingual`). Two task-file schemas occur in the wild: the
current one (with language fields, `Domains`, `Instance License`, a list
`Definition`, instance ids) and an older one (no language fields, a string
`Definition`, instances without ids). Both are accepted; only the fields the
Tk-Instruct pipeline uses are required, and each is type-checked so that bad
input fails loudly with the file, the task and the field in the message.

Instance selection follows Tk-Instruct's `ni_dataset.py`: test tasks keep their
first 100 instances (the official evaluation instances are stored first); then,
for every split, an optional cap is applied after a shuffle. Two shuffles
(`Selection`):
  tk_instruct  Tk-Instruct's own: ONE `random.Random(seed)` stream (run_s2s.py's
               `set_seed(42)`), `shuffle` on each task's full list in split-file
               order. Reproduces the published selection exactly; a task's
               selection depends on the instance counts of the tasks before it.
  per_task     each task shuffled by its own stream seeded from (seed, task name):
               adding or removing a task leaves every other task's selection
               unchanged (for ablations over task sets).

The checkout may be local or remote (`gs://...`): every file access goes through
`tkx.storage`; which task files exist is read from one listing of `tasks/`.

Contract (the names other modules rely on; change one only together with its users):
- `class NIDataError(errors.UserError)` — message names file, task and field (also `.file`, `.task`, `.field`).
- `read_split(ni_dir, track, split) -> list[str]` task names of `splits/<track>/<split>_tasks.txt`
  (a repeated name is read once, with a warning).
- `split_tasks(ni_dir, track, split, *, skip_missing=False) -> list[str]` the same, every task file checked
  to exist (one listing of `tasks/`, `existing_task_names(ni_dir)`): missing -> `NIDataError`, or with
  `skip_missing` ONE warning listing them all. `ni_dir` may be local or remote (`gs://`, through `tkx.storage`).
- `load_task(ni_dir, task_name) -> dict` the validated task JSON, plus `"Task": task_name`,
  `Definition` kept as in the file (string or list); instances without `id` (older schema) get
  `<task>-<index in file>`.
- `Selection` enum: `TK_INSTRUCT` (default, `DEFAULT_SELECTION`): one `random.Random(seed)` stream, each task
  of the split file in order (repeats included) `shuffle`d in full then capped — Tk-Instruct's exact choice;
  `PER_TASK`: each task its own stream seeded by `(seed, task name)`. `Selection.parse(str|Selection)`.
- `SplitSelector(split, cap, seed, selection).select(task) -> list[instance]`, called for every split-file
  line in order; test splits `test`/`official_test` first keep 100. `iter_split_instances(ni_dir, track,
  split, *, max_num_instances_per_task, seed, selection, skip_missing, task_names, progress)` yields
  `(task, instance)` under it. `select_instances(task, split, cap, seed)` is the `per_task` rule for one task.
  `read_split_lines(...) -> (lines with repeats, distinct names)`. `default_max_num_instances(split)`: 100 for
  `train`, None otherwise (Tk-Instruct's defaults).
- `task_category(task) -> str` first `Categories` entry; `task_definition(task) -> str` the string used.
"""

import enum
import json
import logging
import os
import random
from typing import Any, Dict, Iterable, List, Optional, Sequence

from tkx import enums, errors, io_utils, storage

TRACKS = ("default", "xlingual")
# Splits whose tasks keep only their first 100 instances (Tk-Instruct's `subset == "test"`).
EVAL_SPLITS = ("test", "official_test")
NUM_EVAL_INSTANCES = 100
# Tk-Instruct's default `max_num_instances_per_task` for training.
DEFAULT_MAX_NUM_INSTANCES = {"train": 100}


class Selection(enum.Enum):
  """How a capped split picks its instances (see the module docstring)."""

  TK_INSTRUCT = "tk_instruct"
  PER_TASK = "per_task"

  @classmethod
  def parse(cls, value) -> "Selection":
    return enums.parse_enum(cls, value, "instance selection")


DEFAULT_SELECTION = Selection.TK_INSTRUCT


class NIDataError(errors.UserError):
  """Bad NI input; the message names the file, the task and the field."""

  def __init__(
      self,
      message: str,
      *,
      file: Optional[str] = None,
      task: Optional[str] = None,
      field: Optional[str] = None,
  ):
    where = ", ".join(
        f"{k}={v}"
        for k, v in (("file", file), ("task", task), ("field", field))
        if v is not None
    )
    super().__init__(f"{message} [{where}]" if where else message)
    self.file, self.task, self.field = file, task, field


def task_path(ni_dir, task_name: str) -> str:
  return storage.join(ni_dir, "tasks", f"{task_name}.json")


def split_path(ni_dir, track: str, split: str) -> str:
  return storage.join(ni_dir, "splits", track, f"{split}_tasks.txt")


def existing_task_names(ni_dir) -> set:
  """Names of the task files in `tasks/` (one listing, also remote)."""
  tasks_dir = storage.join(ni_dir, "tasks")
  if not storage.isdir(tasks_dir):
    return set()
  return {
      name[: -len(".json")]
      for name in storage.listdir(tasks_dir)
      if name.endswith(".json")
  }


def list_splits(ni_dir, track: str) -> List[str]:
  """Split names `<split>` for which `splits/<track>/<split>_tasks.txt` exists."""
  track_dir = storage.join(ni_dir, "splits", track)
  if not storage.isdir(track_dir):
    return []
  return sorted(
      f[: -len("_tasks.txt")]
      for f in storage.listdir(track_dir)
      if f.endswith("_tasks.txt")
  )


def read_split(ni_dir, track: str, split: str) -> List[str]:
  """Task names listed in `splits/<track>/<split>_tasks.txt` (blank lines ignored), each once."""
  return read_split_lines(ni_dir, track, split, warn_repeats=True)[1]


def read_split_lines(
    ni_dir, track: str, split: str, *, warn_repeats: bool = False
) -> tuple:
  """(every task line in file order, repeats included; the distinct names in first-seen order)."""
  path = split_path(ni_dir, track, split)
  if not storage.isfile(path):
    available = list_splits(ni_dir, track)
    raise NIDataError(
        f"split file not found; splits available for track {track!r}: {available or 'none'}",
        file=path,
        field=f"splits/{track}/{split}_tasks.txt",
    )
  lines, names, seen, repeated = [], [], set(), []
  with storage.open(path) as f:
    for line_no, line in enumerate(f, 1):
      name = line.strip()
      if not name:
        continue
      if name.endswith(".json"):
        name = name[: -len(".json")]
      if os.sep in name or "/" in name:
        raise NIDataError(
            f"line {line_no} is not a task name: {name!r}",
            file=path,
            task=name,
            field="task name",
        )
      lines.append(name)
      if name in seen:
        repeated.append(f"{name} (line {line_no})")
        continue
      seen.add(name)
      names.append(name)
  if repeated and warn_repeats:
    # Real split files repeat a task now and then; a task is one SeqIO task, so it is
    # read once (Tk-Instruct would have read its instances twice). Said once per run.
    _warn_once(
        "%s lists %d task(s) more than once; each is read once: %s",
        path,
        len(repeated),
        ", ".join(repeated),
    )
  return lines, names


_SAID = set()


def _warn_once(message: str, *args) -> None:
  """A warning about the data, logged the first time only (the split is read by several users)."""
  if (message, args) not in _SAID:
    _SAID.add((message, args))
    logging.warning(message, *args)


def split_tasks(
    ni_dir, track: str, split: str, *, skip_missing: bool = False
) -> List[str]:
  """`read_split` with every task file checked to exist (a stat, not a read).

  A missing task file is an `NIDataError`; with `skip_missing=True` the missing
  tasks are dropped with ONE warning that lists all of them.
  """
  names = read_split(ni_dir, track, split)
  existing = existing_task_names(ni_dir)
  missing = [n for n in names if n not in existing]
  if missing and not skip_missing:
    raise NIDataError(
        f"{len(missing)} task file(s) named by the split do not exist: {', '.join(missing)} "
        "(pass skip_missing=True / --skip_missing to skip them)",
        file=split_path(ni_dir, track, split),
        task=missing[0],
        field="tasks/<task>.json",
    )
  if missing:
    _warn_once(
        "Skipping %d task(s) of %s whose task file does not exist: %s",
        len(missing),
        split_path(ni_dir, track, split),
        ", ".join(missing),
    )
  missing_set = set(missing)
  return [n for n in names if n not in missing_set]


# ---------------------------------------------------------------------------
# Validation


def _check_string_list(value, *, nonempty, path, task, field):
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise NIDataError(
        f"expected a list of strings, got {_describe(value)}",
        file=path,
        task=task,
        field=field,
    )
  if nonempty and not value:
    raise NIDataError(
        "expected a non-empty list of strings, got []",
        file=path,
        task=task,
        field=field,
    )


def _describe(value) -> str:
  text = (
      json.dumps(value, ensure_ascii=False)
      if not isinstance(value, (bytes, set))
      else repr(value)
  )
  if len(text) > 60:
    text = text[:57] + "..."
  return f"{type(value).__name__} {text}"


def _check_string(value, *, path, task, field):
  if not isinstance(value, str):
    raise NIDataError(
        f"expected a string, got {_describe(value)}",
        file=path,
        task=task,
        field=field,
    )


def _check_nonempty_string_list(value, *, path, task, field):
  _check_string_list(value, nonempty=True, path=path, task=task, field=field)


def _check_record(record, *, required, optional, path, task, field):
  """An example or instance: an object whose `required` keys are present and whose present keys
  pass their checks (in the order given: the first bad one is named)."""
  if not isinstance(record, dict):
    raise NIDataError(
        f"expected an object with input/output, got {_describe(record)}",
        file=path,
        task=task,
        field=field,
    )
  for key, check in {**required, **optional}.items():
    if key in record:
      check(record[key], path=path, task=task, field=f"{field}.{key}")
    elif key in required:
      raise NIDataError(
          "missing field", file=path, task=task, field=f"{field}.{key}"
      )


_EXAMPLE_FIELDS = {"input": _check_string, "output": _check_string}
# `explanation` is optional (Tk-Instruct adds it only when present).
_EXAMPLE_OPTIONAL = {"explanation": _check_string}
_INSTANCE_FIELDS = {
    "input": _check_string,
    "output": _check_nonempty_string_list,
}
_INSTANCE_OPTIONAL = {"id": _check_string}


def _check_examples(examples, *, kind, path, task):
  if not isinstance(examples, list):
    raise NIDataError(
        f"expected a list of examples, got {_describe(examples)}",
        file=path,
        task=task,
        field=kind,
    )
  for i, example in enumerate(examples):
    _check_record(
        example,
        required=_EXAMPLE_FIELDS,
        optional=_EXAMPLE_OPTIONAL,
        path=path,
        task=task,
        field=f"{kind}[{i}]",
    )


def validate_task(task: Dict[str, Any], *, path: str, task_name: str) -> None:
  """Checks the fields the pipeline reads; raises `NIDataError` naming the first bad one."""
  if not isinstance(task, dict):
    raise NIDataError(
        f"expected a JSON object at top level, got {_describe(task)}",
        file=path,
        task=task_name,
        field="<root>",
    )
  for field in (
      "Definition",
      "Positive Examples",
      "Negative Examples",
      "Instances",
      "Categories",
  ):
    if field not in task:
      raise NIDataError("missing field", file=path, task=task_name, field=field)

  definition = task["Definition"]
  if isinstance(definition, list):
    # Tk-Instruct uses the first element of a list Definition.
    _check_string_list(
        definition, nonempty=True, path=path, task=task_name, field="Definition"
    )
  elif not isinstance(definition, str):
    raise NIDataError(
        f"expected a string or a list of strings, got {_describe(definition)}",
        file=path,
        task=task_name,
        field="Definition",
    )

  _check_string_list(
      task["Categories"],
      nonempty=True,
      path=path,
      task=task_name,
      field="Categories",
  )
  _check_examples(
      task["Positive Examples"],
      kind="Positive Examples",
      path=path,
      task=task_name,
  )
  _check_examples(
      task["Negative Examples"],
      kind="Negative Examples",
      path=path,
      task=task_name,
  )

  instances = task["Instances"]
  if not isinstance(instances, list):
    raise NIDataError(
        f"expected a list of instances, got {_describe(instances)}",
        file=path,
        task=task_name,
        field="Instances",
    )
  if not instances:
    raise NIDataError(
        "task has no instances (empty list)",
        file=path,
        task=task_name,
        field="Instances",
    )
  for i, instance in enumerate(instances):
    _check_record(
        instance,
        required=_INSTANCE_FIELDS,
        optional=_INSTANCE_OPTIONAL,
        path=path,
        task=task_name,
        field=f"Instances[{i}]",
    )


def load_task(ni_dir, task_name: str) -> Dict[str, Any]:
  """Reads and validates `tasks/<task_name>.json`.

  Returns the task dict with `"Task": task_name` added; `Definition` is kept as
  in the file. Instances without an `id` (older schema) get `<task>-<index>`,
  the index being the position in the file, so ids never depend on selection.
  """
  return load_task_file(task_path(ni_dir, task_name), task_name)


def iter_tasks(ni_dir, names: Sequence[str], *, lookahead: int = 16):
  """`load_task` of each name, in order, with up to `lookahead` files read ahead in threads.

  A bucket answers each read in a round trip; reading ahead overlaps them (the
  order, and so the selection, is unchanged; an error is raised at its task).
  """
  import collections
  from concurrent import futures

  names = list(names)
  with futures.ThreadPoolExecutor(max_workers=lookahead) as pool:
    pending = collections.deque(
        pool.submit(load_task, ni_dir, n) for n in names[:lookahead]
    )
    for i in range(len(names)):
      task = pending.popleft().result()
      if i + lookahead < len(names):
        pending.append(pool.submit(load_task, ni_dir, names[i + lookahead]))
      yield task


def load_task_file(path: str, task_name: str) -> Dict[str, Any]:
  """`load_task` for a task file at any path (e.g. one outside a checkout)."""
  try:
    with storage.open(path) as f:
      task = json.load(f)
  except (FileNotFoundError, IsADirectoryError) as e:
    raise NIDataError(
        "task file does not exist",
        file=path,
        task=task_name,
        field="tasks/<task>.json",
    ) from e
  except json.JSONDecodeError as e:
    raise NIDataError(
        f"malformed JSON: {e}", file=path, task=task_name, field="<json>"
    ) from e
  except UnicodeDecodeError as e:
    raise NIDataError(
        f"not UTF-8 text: {e}", file=path, task=task_name, field="<json>"
    ) from e
  validate_task(task, path=path, task_name=task_name)
  task["Task"] = task_name
  task.pop("Instruction Source", None)  # as Tk-Instruct's reader does
  for index, instance in enumerate(task["Instances"]):
    if "id" not in instance:
      instance["id"] = f"{task_name}-{index}"
  return task


def task_category(task: Dict[str, Any]) -> str:
  """The first `Categories` entry."""
  return task["Categories"][0]


def task_definition(task: Dict[str, Any]) -> str:
  """The definition string Tk-Instruct uses: the first element of a list Definition."""
  definition = task["Definition"]
  return definition[0] if isinstance(definition, list) else definition


def default_max_num_instances(split: str) -> Optional[int]:
  """Tk-Instruct's defaults: 100 for training tasks, no cap otherwise."""
  return DEFAULT_MAX_NUM_INSTANCES.get(split)


def _capped(cap: Optional[int]) -> bool:
  return cap is not None and cap >= 0


def select_instances(
    task: Dict[str, Any],
    split: str,
    max_num_instances_per_task: Optional[int],
    seed: int,
) -> List[Dict[str, Any]]:
  """One task's instances under the `per_task` rule (its own seeded shuffle).

  Test splits keep the first 100 instances. Then, when `max_num_instances_per_task`
  is not None and >= 0, the instances are shuffled (seeded by `seed` and the task
  name) and cut to the cap. The task dict is not modified. A whole split under
  Tk-Instruct's rule is `iter_split_instances(..., selection="tk_instruct")`.
  """
  instances = list(task["Instances"])
  if split in EVAL_SPLITS:
    instances = instances[:NUM_EVAL_INSTANCES]
  if _capped(max_num_instances_per_task):
    # A string seed is hashed with SHA-512 by `random`, so this is stable across runs.
    random.Random(f"{seed}:{task['Task']}").shuffle(instances)
    instances = instances[:max_num_instances_per_task]
  return instances


class SplitSelector:
  """Selects a split's instances task by task, in split-file order, under one rule.

  Tk-Instruct's rule draws from one stream: `random.Random(seed)` is the stream
  `random.seed(seed)` gives the module-level functions, and shuffling the indices
  0..n-1 consumes it exactly as shuffling the n instances does. Call `select`
  for every line of the split file in order (repeats included: Tk-Instruct
  shuffles a repeated task again, so the stream advances for it too).
  """

  def __init__(
      self,
      split: str,
      max_num_instances_per_task: Optional[int],
      seed: int,
      selection=DEFAULT_SELECTION,
  ):
    self.split, self.cap, self.seed = split, max_num_instances_per_task, seed
    self.selection = Selection.parse(selection)
    self._stream = random.Random(seed)

  def indices(self, task_name: str, num_instances: int) -> List[int]:
    """Positions (in the task file) of the selected instances, in selection order."""
    order = list(range(num_instances))
    if self.split in EVAL_SPLITS:
      order = order[:NUM_EVAL_INSTANCES]
    if not _capped(self.cap):
      return order
    if self.selection is Selection.TK_INSTRUCT:
      self._stream.shuffle(order)
    else:
      random.Random(f"{self.seed}:{task_name}").shuffle(order)
    return order[: self.cap]

  def select(self, task: Dict[str, Any]) -> List[Dict[str, Any]]:
    instances = task["Instances"]
    return [instances[i] for i in self.indices(task["Task"], len(instances))]


def iter_split_instances(
    ni_dir,
    track: str,
    split: str,
    *,
    max_num_instances_per_task: Optional[int] = None,
    seed: int = 42,
    selection=DEFAULT_SELECTION,
    skip_missing: bool = False,
    task_names: Optional[Sequence[str]] = None,
    progress: bool = False,
) -> Iterable[tuple]:
  """Yields `(task, instance)` for every selected instance of a split, task by task.

  `task_names` restricts the output to those tasks; the selection is still the
  split's (under `tk_instruct` the tasks before them are read to advance the stream).
  """
  lines, _ = read_split_lines(
      ni_dir, track, split, warn_repeats=task_names is None
  )
  if task_names is None:
    present = set(split_tasks(ni_dir, track, split, skip_missing=skip_missing))
  else:  # the caller chose (and reported) the tasks
    present = set(lines) & existing_task_names(ni_dir)
  wanted = set(task_names) if task_names is not None else present
  unknown = sorted(wanted - present)
  if unknown:
    raise NIDataError(
        f"task(s) not in the split: {', '.join(unknown)}",
        file=split_path(ni_dir, track, split),
        task=unknown[0],
    )
  selector = SplitSelector(split, max_num_instances_per_task, seed, selection)
  stream_matters = selector.selection is Selection.TK_INSTRUCT and _capped(
      max_num_instances_per_task
  )
  done = set()
  iterator = io_utils.track(
      lines, len(lines), f"{track}/{split} tasks", "tasks", enabled=progress
  )
  for name in iterator:
    if name not in present or (name not in wanted and not stream_matters):
      continue
    task = load_task(ni_dir, name)
    chosen = selector.select(task)
    if name in wanted and name not in done:
      done.add(name)
      for instance in chosen:
        yield task, instance
