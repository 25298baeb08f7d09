"""Gin for tkx (t5x's gin_utils): file resolution, parsing, model and config loading.

One policy for every caller:
- A gin file path (local or remote, `tkx.storage`) is tried as given, then under each search path, then under the
  checkout (`io_utils.REPO_ROOT`), so `gin_configs/...` works from any directory.
- Names are never skipped: a gin file imports the modules whose configurables it
  names (as t5x's do), and a command imports those its run files rely on before
  parsing. An unknown name is the user's typo and an error.
- Errors from a file or a `--gin.NAME=VALUE` binding become one `GinConfigError`
  line naming the file or the flag (with the fix for a string without its inner
  quotes).
"""

import re
from typing import Sequence

import gin

from tkx import io_utils, storage

# Gin files on remote storage (gs://...) parse like local ones, includes too.
gin.config.register_file_reader(
    storage.open, lambda path: storage.is_remote(path) and storage.isfile(path)
)


class GinConfigError(ValueError):
  """A gin file or binding that cannot be parsed; the message names it and says how to fix it."""


def resolve_gin_file(path: str, search_paths: Sequence[str] = ()) -> str:
  """`path` as given, else relative to a search path or the checkout."""
  for base in ("",) + tuple(search_paths) + (io_utils.REPO_ROOT,):
    candidate = storage.join(base, path) if base else path
    if storage.isfile(candidate):
      return candidate
  raise FileNotFoundError(
      f"gin file not found: {path} (looked in the working directory"
      f"{''.join(', ' + p for p in search_paths)} and {io_utils.REPO_ROOT})"
  )


def binding_flag(binding: str) -> str:
  """The command-line spelling `--gin.NAME=VALUE` of a binding `NAME = VALUE`."""
  name, _, value = binding.partition("=")
  return f"--gin.{name.strip()}={value.strip()}"


_BARE_STRING = re.compile(r"^[^'\"@%(\[{0-9.+\-][^\s]*$")
_GIN_WORDS = ("True", "False", "None")


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


def _binding_error(binding: str, error: Exception) -> GinConfigError:
  name, _, value = binding.partition("=")
  name, value = name.strip(), value.strip()
  message = f"{binding_flag(binding)}: {_first_line(error)}"
  if (
      isinstance(error, SyntaxError)
      and _BARE_STRING.match(value)
      and value not in _GIN_WORDS
  ):
    message += (
        f"; a string value needs inner quotes: --gin.{name}=\"'{value}'\""
    )
  return GinConfigError(message)


def parse(
    gin_files: Sequence[str] = (),
    bindings: Sequence[str] = (),
    *,
    search_paths: Sequence[str] = (),
    clear: bool = True,
) -> None:
  """Parses gin files, then bindings (`NAME = VALUE` strings), in order; config is not finalized.

  `clear=False` keeps what was parsed before (e.g. a run file before a checkpoint's model.gin).
  """
  if clear:
    gin.clear_config()
  for path in tuple(search_paths) + (io_utils.REPO_ROOT,):
    gin.add_config_file_search_path(path)
  files = [resolve_gin_file(f, search_paths) for f in gin_files or ()]
  for path in files:
    try:
      gin.parse_config_file(path)
    except (SyntaxError, ValueError, KeyError, ImportError, OSError) as e:
      raise GinConfigError(f"gin file {path}: {_first_line(e)}") from e
  for binding in bindings or ():
    try:
      gin.parse_config(binding)
    except (SyntaxError, ValueError, KeyError, ImportError) as e:
      raise _binding_error(binding, e) from e


def query(name: str, default=None):
  """The value gin binds to `name` (`configurable.param` or a macro), else `default`."""
  try:
    return gin.query_parameter(name)
  except ValueError:
    return default


def load_config_from_gin(
    gin_files: Sequence[str] = (),
    bindings: Sequence[str] = (),
    *,
    clear: bool = True,
):
  """The `network.T5Config` a set of model gin files describes.

  Builds only the config: vocabularies are not loaded, so real-size files that
  name gs:// vocabularies work offline.
  """
  from tkx.models import config as config_lib
  from tkx.models import models  # noqa: F401  (registers models.* and network.*)

  parse(gin_files, bindings, clear=clear)
  try:
    return config_lib.T5Config()
  except TypeError as e:
    raise GinConfigError(
        f"gin files {list(gin_files)} do not bind network.T5Config fully: {e}"
    ) from e


def get_model_from_gin(
    gin_files: Sequence[str] = (),
    bindings: Sequence[str] = (),
    *,
    clear: bool = True,
):
  """Parses model gin files and builds `models.EncoderDecoderModel()` (loads the vocabulary VOCABULARY names)."""
  from tkx.models import models

  parse(gin_files, bindings, clear=clear)
  return models.EncoderDecoderModel()
