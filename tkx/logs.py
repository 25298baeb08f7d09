"""tkx's one log format: `setup_logging(level)` for every command and `python -m tkx.multihost`.

One format on stderr; libraries that log start-up details at INFO (backend
probing, plugin discovery, checkpointing internals) only at debug. Standard
library only, so every entry point can use it before importing anything heavy.
"""

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Libraries that log start-up details at INFO (backend probing, TPU/GPU plugin
# discovery, checkpointing internals): shown only with --log_level debug.
_CHATTY_LOGGERS = ("absl", "jax", "jax._src", "orbax", "tensorflow", "etils")

# Library warnings that are no news to a tkx user (tkx pads eval inputs to its length
# buckets on purpose, writes its own eval results, and exports without orbax metadata):
# shown only with --log_level debug.
_CHATTER_PREFIXES = (
    "Given sequence lengths are longer than necessary",  # seqio.Evaluator
    "'logger_cls' is empty",  # seqio.Evaluator
    "Metadata file does not exist",  # orbax, reading a params-only checkpoint
    "system_path_file_exists:",  # gin, trying an include under each search path
    "Path not found: ",  # gin, the same (the path is found under a later one)
)
# Said by every process of a job (orbax/JAX prefix "[process=N][thread=...]"): tkx's own
# "Preempted: saved ..." line says it once.
_CHATTER_PARTS = ("Reached preemption sync point",)


class _ChatterFilter(logging.Filter):
  """Drops the library warnings listed in `_CHATTER_PREFIXES` (the handler's level decides the rest)."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not message.startswith(_CHATTER_PREFIXES) and not any(
        part in message for part in _CHATTER_PARTS
    )


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever `sys.stderr` is when a record is emitted (it may be replaced, e.g. by pytest)."""

  def __init__(self):
    super().__init__()

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value


def setup_logging(level: str = "info") -> None:
  """One log format on stderr for every command; library chatter only at debug."""
  numeric = getattr(logging, level.upper())
  root = logging.getLogger()
  for handler in list(root.handlers):
    # Replaces the stderr handlers (ours or a library's basicConfig); other handlers stay.
    if isinstance(handler, logging.StreamHandler) and (
        isinstance(handler, _StderrHandler)
        or getattr(handler, "stream", None) in (sys.stderr, sys.__stderr__)
    ):
      root.removeHandler(handler)
  handler = _StderrHandler()
  handler.setFormatter(logging.Formatter(LOG_FORMAT))
  if numeric > logging.DEBUG:
    handler.addFilter(_ChatterFilter())
  root.addHandler(handler)
  root.setLevel(numeric)
  for name in _CHATTY_LOGGERS:
    logging.getLogger(name).setLevel(
        logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
    )
