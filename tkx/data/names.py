"""NI mixture names, `<prefix>_<track>_<split>_<encoding>`, parsed in one place.

Every command (train, infer, eval, generate) and the registry use `MixtureName`
so that they accept the same names. A per-task SeqIO name appends the NI task
(`<mixture>_<taskname>`, task names start with `task<digits>`); the task holding
all of a split's instances is `<mixture>_all_tasks`.

Contract (the names other modules rely on; change one only together with its users):
- `MixtureName(prefix, track, split, encoding)` (frozen; validates track and encoding): `.name`,
  `.all_tasks_name` (`<name>_all_tasks`), `.task_name(ni_task)`, `MixtureName.parse(name, splits=None)`.
  `parse_name(name, splits=None) -> (MixtureName, ni_task | None, is_all_tasks)`; ValueError for non-NI names.
  Train, infer, eval and generate all go through it (via `pipeline.register_ni_for`).
"""

import dataclasses
import difflib
import re
from typing import Iterable, Optional, Tuple

from tkx import errors
from tkx.data import encodings as enc
from tkx.data import ni

DEFAULT_PREFIX = "ni"
ALL_TASKS_SUFFIX = "all_tasks"
_INVALID_NAME_CHARS = re.compile(r"[^\w.:#]")
_TASK_SUFFIX = re.compile(r"_(task\d+.*)$")


def seqio_name(*parts: str) -> str:
  """Joins name parts with "_", mapping characters SeqIO rejects (e.g. "-") to "_"."""
  return _INVALID_NAME_CHARS.sub("_", "_".join(parts))


@dataclasses.dataclass(frozen=True)
class MixtureName:
  """One NI mixture: the selected instances of a (track, split) under one encoding."""

  prefix: str
  track: str
  split: str
  encoding: str

  def __post_init__(self):
    if self.track not in ni.TRACKS:
      raise errors.ConfigError(
          f"NI track must be one of {ni.TRACKS}, got {self.track!r}"
      )
    enc.parse_encoding(self.encoding)  # raises naming the bad part

  @property
  def name(self) -> str:
    return seqio_name(self.prefix, self.track, self.split, self.encoding)

  @property
  def all_tasks_name(self) -> str:
    """The SeqIO Task over the one source (the mixture is this one task)."""
    return seqio_name(self.name, ALL_TASKS_SUFFIX)

  def task_name(self, ni_task: str) -> str:
    """The per-task SeqIO Task of one NI task."""
    return seqio_name(self.name, ni_task)

  def __str__(self) -> str:
    return self.name

  @classmethod
  def parse(
      cls, name: str, splits: Optional[Iterable[str]] = None
  ) -> "MixtureName":
    """`<prefix>_<track>_<split>_<encoding>` -> MixtureName; ValueError if it is not one.

    The split is the shortest (or, with `splits`, a listed) name after the track
    that leaves a valid encoding.
    """
    parsed = parse_name(name, splits)
    if parsed[1] is not None or parsed[2]:
      raise errors.ConfigError(
          f"{name!r} names one NI task or the all-tasks task, not a mixture; "
          f"the mixture is {parsed[0].name!r}"
      )
    return parsed[0]


def _try_parse(
    name: str, splits: Optional[Iterable[str]]
) -> Optional[MixtureName]:
  allowed = set(splits) if splits is not None else None
  for track in ni.TRACKS:
    marker = f"_{track}_"
    start = name.find(marker)
    while start > 0:
      prefix, rest = name[:start], name[start + len(marker) :]
      parts = rest.split("_")
      for i in range(1, len(parts)):
        split, encoding = "_".join(parts[:i]), "_".join(parts[i:])
        if allowed is not None and split not in allowed:
          continue
        try:
          return MixtureName(prefix, track, split, encoding)
        except ValueError:
          continue
      start = name.find(marker, start + 1)
  return None


def parse_name(
    name: str, splits: Optional[Iterable[str]] = None
) -> Tuple[MixtureName, Optional[str], bool]:
  """Any NI SeqIO name -> (mixture, sanitized NI task name or None, is the all-tasks task).

  Raises ValueError (naming the expected shape) when `name` is no NI name.
  """
  splits = list(splits) if splits is not None else None
  all_tasks = name.endswith("_" + ALL_TASKS_SUFFIX)
  if all_tasks:
    parsed = _try_parse(name[: -len(ALL_TASKS_SUFFIX) - 1], splits)
    if parsed is not None:
      return parsed, None, True
  match = _TASK_SUFFIX.search(name)
  if match:
    parsed = _try_parse(name[: match.start()], splits)
    if parsed is not None:
      return parsed, match.group(1), False
  parsed = _try_parse(name, splits)
  if parsed is not None:
    return parsed, None, False
  raise errors.ConfigError(
      f"{name!r} is not an NI name <prefix>_<track>_<split>_<encoding>[_<task>] "
      f"(tracks {', '.join(ni.TRACKS)}; e.g. ni_default_train_def_pos2)"
  )


def close_matches_message(kind: str, name: str, known: Iterable[str]) -> str:
  """`unknown <kind> '<name>'` with the close known names (or a few known ones) to pick from."""
  known = sorted(known)
  close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
  hint = (
      f"; did you mean {', '.join(close)}?"
      if close
      else (
          f"; known {kind}s include {', '.join(known[:5])}"
          if known
          else f"; no {kind} is registered"
      )
  )
  return f"unknown {kind} {name!r}{hint}"
