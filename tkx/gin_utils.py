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
- A macro that nothing reads (`--gin.TRAIN_STEP=10` for `TRAIN_STEPS`) is a typo,
  not a setting: `parse` refuses it before any work, naming the macro, where it
  was bound and the close names that are read. `MODEL` (t5x's entry macro, read
  by the commands themselves) is always read.

Contract (the names other modules rely on; change one only together with its users):
- `gin_utils.parse(gin_files, bindings, search_paths=(), clear=True)`: files resolved by `resolve_gin_file`
  (as given, search paths, checkout); never skips unknown names (gin files import the modules they name; commands
  import their run files' modules first); errors -> `GinConfigError(errors.ConfigError)` naming the file or `--gin.` flag
  (with the inner-quotes fix). `gin_utils.query(name, default=None)`.
"""

import difflib
import re
from typing import Iterator, Sequence

import gin

from tkx import errors, io_utils, storage

# Gin files on remote storage (gs://...) parse like local ones, includes too. (The
# accelerator bench's gin stand-in, bench/accel_common.py, parses no files and has no
# `config`.)
if hasattr(gin, "config"):
  gin.config.register_file_reader(
      storage.open,
      lambda path: storage.is_remote(path) and storage.isfile(path),
  )


class GinConfigError(errors.ConfigError):
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


# Macros the commands read themselves (t5x binds the model as `MODEL`).
ENTRY_MACROS = ("MODEL",)
_MACRO_SELECTOR = "gin.macro"


def _references(value) -> Iterator[str]:
  """Scoped selectors of the `%MACRO` / `@configurable` references inside a bound value."""
  if isinstance(value, gin.config.ConfigurableReference):
    yield value.scoped_selector
  elif isinstance(value, dict):
    for item in value.values():
      yield from _references(item)
  elif isinstance(value, (list, tuple, set)):
    for item in value:
      yield from _references(item)


def unread_macros() -> list:
  """Macros bound in the current config that no binding references (and that are no entry macro)."""
  defined, referenced = [], set()
  for (scope, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    if selector == _MACRO_SELECTOR:
      defined.append(scope)
    for value in params.values():
      for ref in _references(value):
        if ref.endswith("/" + _MACRO_SELECTOR):
          referenced.add(ref[: -len(_MACRO_SELECTOR) - 1])
  return [
      name
      for name in defined
      if name not in referenced and name not in ENTRY_MACROS
  ]


def _where_bound(name: str, files: Sequence[str], bindings: Sequence[str]):
  for binding in bindings:
    if binding.partition("=")[0].strip() == name:
      return binding_flag(binding)
  pattern = re.compile(rf"^\s*{re.escape(name)}\s*=", re.MULTILINE)
  for path in files:
    with storage.open(path) as f:
      if pattern.search(f.read()):
        return f"gin file {path}"
  return "gin"


def check_macros_read(files: Sequence[str] = (), bindings: Sequence[str] = ()):
  """Raises `GinConfigError` for the first macro nothing reads, naming where it is bound."""
  unread = unread_macros()
  if not unread:
    return
  known = sorted(
      scope
      for scope, selector in gin.config._CONFIG  # pylint: disable=protected-access
      if selector == _MACRO_SELECTOR and scope not in unread
  )
  name = unread[0]
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
  hint = f"; did you mean {' or '.join(close)}?" if close else ""
  raise GinConfigError(
      f"{_where_bound(name, files, bindings)}: gin macro {name} is bound but "
      f"nothing reads it{hint}"
  )


def parse(
    gin_files: Sequence[str] = (),
    bindings: Sequence[str] = (),
    *,
    search_paths: Sequence[str] = (),
    clear: bool = True,
) -> None:
  """Parses gin files, then bindings (`NAME = VALUE` strings), in order; config is not finalized.

  `clear=False` keeps what was parsed before (e.g. a run file before a checkpoint's model.gin).
  A macro that nothing reads is a `GinConfigError` (see the module docstring).
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
  check_macros_read(files, bindings or ())


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
  """Parses model gin files and builds their `MODEL` (loads the vocabulary VOCABULARY names)."""
  from tkx.models import models  # noqa: F401  (registers models.* and network.*)

  parse(gin_files, bindings, clear=clear)
  if query("%MODEL") is None:
    raise GinConfigError(
        f"gin files {list(gin_files)} bind no MODEL (e.g. MODEL = @models.EncoderDecoderModel())"
    )
  return model_from_gin()


def model_from_gin():
  """The model the parsed config's `MODEL` macro builds, evaluated as a `%MODEL` reference is (t5x's entry macro)."""
  return gin.get_configurable(f"MODEL/{_MACRO_SELECTOR}")()
