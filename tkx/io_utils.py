"""Small I/O helpers every run shares: the checkout root, atomic writes, TensorBoard scalars, progress.

- `REPO_ROOT`: the tkx checkout (gin_configs/ and tasks/ live there).
- `atomic_write(path)`: a file appears complete or not at all (temporary file
  beside it, renamed at the end; on `gs://` one whole-object upload at the end), so a
  failed run never leaves half a file over an old one.
- `ScalarWriter(log_dir)`: TensorBoard scalars (written by the primary host,
  `tkx.multihost.is_primary_host`, the one rule for who writes shared files), with the core
  `tf.summary.write` and the scalars plugin's metadata (the `tensorboard`
  package is not needed; the event files are the same).
- `Progress` / `track(iterable, ...)`: a tqdm bar only when stderr is a terminal
  (never into a log file), and a log line every `log_every_s` seconds either way.
- `return_large_buffers_to_os()`: freed large host buffers go back to the OS (glibc), so the
  read buffers of a checkpoint leave no lasting peak (called by the checkpoint readers).

Contract (the names other modules rely on; change one only together with its users):
- `io_utils.atomic_write(path, mode="w")` (context manager; temp file + rename; gfile for `gs://`),
  `io_utils.ScalarWriter(log_dir).scalars(step, {tag: value})` (primary host only; `None` values skipped),
  `io_utils.Progress(total, desc, enabled)`, `io_utils.REPO_ROOT`. Who writes shared files:
  `multihost.is_primary_host()`. `jsonl.iter_json_objects(path)`, `jsonl.write_jsonl(path, records) -> count`.
"""

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Iterable, Iterator, Mapping, Optional, TypeVar

log = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# glibc's default mmap threshold: allocations from 128 KiB up are mmapped and unmapped when freed.
_MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
_large_buffers_returned = False


def return_large_buffers_to_os() -> None:
  """Fixes glibc's mmap threshold at its default, once per process (a no-op without glibc).

  glibc raises the threshold after the first large buffer is freed (up to 32 MiB),
  after which freed buffers below it stay in the process's heap: reading a checkpoint
  shard by shard then keeps about the read buffers' total (measured: +0.3 x the model
  per process, bench/shard_loading.py) although each is freed. Fixed, every large
  buffer is unmapped when freed.
  """
  global _large_buffers_returned
  if _large_buffers_returned:
    return
  _large_buffers_returned = True
  try:
    import ctypes

    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
  except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to fix
    pass


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", encoding: Optional[str] = "utf-8"):
  """Opens a temporary file and puts it at `path` only when the block ends without error.

  Local paths: the temporary file lies beside `path` and is renamed over it. Remote paths
  (`gs://...`, `tkx.storage`): the block writes a local temporary file, uploaded whole at the
  end; an object store publishes an object only when its upload completes, so a failed or
  killed run never leaves half a file over an old one there either.
  """
  from tkx import storage

  path = os.fspath(path)
  remote = storage.is_remote(path)
  directory = (
      tempfile.gettempdir()
      if remote
      else os.path.dirname(os.path.abspath(path))
  )
  if not remote:
    path = os.path.abspath(path)
    os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(
      prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory
  )
  try:
    with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
      yield f
    if remote:
      with open(tmp_path, "rb") as f:
        storage.write_bytes_whole(path, f.read())
    else:
      os.replace(tmp_path, path)
  finally:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)


class ScalarWriter:
  """TensorBoard scalars in `log_dir` (written by the primary host only; a no-op elsewhere)."""

  def __init__(self, log_dir: Optional[str]):
    self._writer = None
    self._remote_dir = None
    self._uploaded = float("-inf")  # the first scalars are uploaded at once
    from tkx import multihost, storage

    if log_dir and multihost.is_primary_host():
      import tensorflow as tf
      from tensorflow.core.framework import summary_pb2

      self._tf = tf
      self._metadata = summary_pb2.SummaryMetadata(
          plugin_data=summary_pb2.SummaryMetadata.PluginData(
              plugin_name="scalars"
          )
      )
      self._remote_dir = log_dir if storage.is_remote(log_dir) else None
      if self._remote_dir:
        # TensorFlow's own GCS client cannot reach an emulator and appends are object rewrites
        # anyway: events go to a local file, uploaded whole after each flush.
        self._staging = tempfile.mkdtemp(prefix="tkx_events_")
        log_dir = self._staging
      self._writer = tf.summary.create_file_writer(log_dir)

  def scalars(self, step: int, values: Mapping[str, Optional[float]]):
    """Writes every value that is not None at `step`."""
    if self._writer is None:
      return
    tf = self._tf
    with self._writer.as_default():
      for tag, value in values.items():
        if value is not None:
          tf.summary.write(
              tag,
              tf.constant(float(value), tf.float32),
              step=int(step),
              metadata=self._metadata,
          )
    self._writer.flush()
    if self._remote_dir and time.time() - self._uploaded >= self.UPLOAD_EVERY_S:
      self._upload()

  # A remote event file is rewritten whole on each upload: at most this often (and at close).
  UPLOAD_EVERY_S = 60.0

  def _upload(self):
    if self._remote_dir:
      from tkx import storage

      self._uploaded = time.time()
      for name in os.listdir(self._staging):
        storage.copy(
            os.path.join(self._staging, name),
            storage.join(self._remote_dir, name),
        )

  def close(self):
    if self._writer is not None:
      self._writer.close()
      self._writer = None
      self._upload()
      if self._remote_dir:
        shutil.rmtree(self._staging, ignore_errors=True)


def stderr_is_terminal() -> bool:
  """Whether a progress bar would reach a person (not a log file or a pipe)."""
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):  # replaced or closed stderr
    return False


class Progress:
  """Progress of `total` items: a tqdm bar on a terminal; a log line every `log_every_s` seconds in any case."""

  def __init__(
      self,
      total: int,
      desc: str,
      enabled: bool = True,
      log_every_s: float = 30.0,
      unit: str = "examples",
  ):
    self.total, self.desc, self.done, self.unit = total, desc, 0, unit
    self.start = self.last_log = time.time()
    self.log_every_s = log_every_s
    self.bar = None
    self.enabled = enabled and total > 0
    if self.enabled and stderr_is_terminal():
      import tqdm

      self.bar = tqdm.tqdm(
          total=total,
          desc=desc,
          unit=unit,
          dynamic_ncols=True,
          mininterval=1.0,
          smoothing=0.1,
      )

  def update(self, n: int):
    self.done += n
    if self.bar is not None:
      self.bar.update(n)
    now = time.time()
    if self.enabled and (
        now - self.last_log >= self.log_every_s or self.done == self.total
    ):
      self.last_log = now
      rate = self.done / max(now - self.start, 1e-9)
      eta = (self.total - self.done) / rate if rate > 0 else float("inf")
      log.info(
          "%s: %d/%d %s, %.2f %s/s, ETA %.0f s",
          self.desc,
          self.done,
          self.total,
          self.unit,
          rate,
          self.unit,
          eta,
      )

  def close(self):
    if self.bar is not None:
      self.bar.close()


_Item = TypeVar("_Item")


def track(
    items: Iterable[_Item],
    total: int,
    desc: str,
    unit: str,
    enabled: bool = True,
    log_every_s: float = 30.0,
) -> Iterator[_Item]:
  """Yields `items`, showing their progress as `Progress` does."""
  progress = Progress(total, desc, enabled, log_every_s, unit)
  try:
    for item in items:
      yield item
      progress.update(1)
  finally:
    progress.close()


def format_seconds(seconds: float) -> str:
  """H:MM:SS."""
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}"
