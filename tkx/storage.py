"""Paths on local disk or in a bucket (`gs://`, and the other schemes fsspec serves), one file layer for all.

Every path a user gives tkx (MODEL_DIR, `--checkpoint`, INITIAL_CHECKPOINT_PATH, NI_DIR, outputs, gin
files, TFDS `data_dir`) goes through these functions, which take `str` (or `os.PathLike`) paths and
return `str` paths, like `os.path`:

- `is_remote(path)`: a `scheme://` path.
- `exists`, `isdir`, `isfile`, `listdir`, `makedirs`, `remove`, `rmtree`, `copy`, `copy_tree`, `glob`,
  `open`, `read_text`, `read_bytes`, `abspath`, `normpath`, `join`.
- `file_versions(directory)`: `{name: "size:version"}` of a directory's files in one listing (cache
  keys that change when a file does: mtime locally, the object's generation remotely).
- `local_copy(path)` (a context) / `cached_local_copy(path)` (once per process, `forget_local_copy`):
  a local file or directory to hand to readers that only read local files (TensorFlow's event and
  TFRecord readers, SentencePiece); the path itself when it is local.
- `configure_environment(environ)` (called by `import tkx`): `EPATH_USE_TF=false`, so etils.epath
  (and orbax, which writes through it) uses fsspec/gcsfs for `gs://`; with `STORAGE_EMULATOR_HOST`
  (the variable Google's client libraries read) it hands the emulator to tensorstore
  (`TENSORSTORE_GCS_HTTP_URL`, a test token) and turns off gcsfs's bucket-layout probe (an API
  emulators lack). Values the user set are kept.

The layer is etils.epath over fsspec (gcsfs for `gs://`): the one orbax already uses, and the only
one that honours `STORAGE_EMULATOR_HOST`; TensorFlow's GCS file system has its endpoint compiled
in, so tkx never hands a remote path to TensorFlow (docs/storage.md).
"""

import builtins
import contextlib
import os
import posixpath
import shutil
import tempfile
from typing import Iterator, List, MutableMapping, Union

PathLike = Union[str, os.PathLike]

EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"
# tensorstore's gcs driver reads its own endpoint and skips credential discovery with a test token.
TENSORSTORE_URL_VARIABLE = "TENSORSTORE_GCS_HTTP_URL"
TENSORSTORE_TOKEN_VARIABLE = "GOOGLE_AUTH_TOKEN_FOR_TESTING"
# gcsfs asks the Storage Control API for a bucket's layout, which no emulator serves.
GCSFS_LAYOUT_PROBE_VARIABLE = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"


def configure_environment(
    environ: MutableMapping[str, str] = os.environ,
) -> dict:
  """Points every storage client at one place; returns the variables it set (user values are kept)."""
  wanted = {"EPATH_USE_TF": "false"}
  emulator = environ.get(EMULATOR_VARIABLE)
  if emulator:
    url = emulator if "://" in emulator else f"http://{emulator}"
    wanted.update(
        {
            TENSORSTORE_URL_VARIABLE: url.rstrip("/"),
            TENSORSTORE_TOKEN_VARIABLE: "emulator",
            GCSFS_LAYOUT_PROBE_VARIABLE: "false",
        }
    )
  added = {k: v for k, v in wanted.items() if k not in environ}
  environ.update(added)
  return added


def is_remote(path: PathLike) -> bool:
  """True for `scheme://...` paths (gs://, s3://, memory://, ...)."""
  return "://" in os.fspath(path)


def _epath(path: PathLike):
  from etils import epath

  return epath.Path(os.fspath(path))


def abspath(path: PathLike) -> str:
  """`os.path.abspath` for local paths; remote paths unchanged (normalised)."""
  return normpath(path) if is_remote(path) else os.path.abspath(path)


def normpath(path: PathLike) -> str:
  """`os.path.normpath`, keeping `scheme://` intact."""
  path = os.fspath(path)
  if not is_remote(path):
    return os.path.normpath(path)
  scheme, rest = path.split("://", 1)
  return f"{scheme}://{posixpath.normpath(rest)}" if rest else path


def join(path: PathLike, *parts: str) -> str:
  return os.path.join(os.fspath(path), *parts)


def exists(path: PathLike) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  return _epath(path).exists()


def isdir(path: PathLike) -> bool:
  if not is_remote(path):
    return os.path.isdir(path)
  return _epath(path).is_dir()


def isfile(path: PathLike) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  return _epath(path).is_file()


def listdir(path: PathLike) -> List[str]:
  """Entry names (not paths), like `os.listdir`."""
  if not is_remote(path):
    return os.listdir(path)
  return sorted(p.name for p in _epath(path).iterdir())


def file_versions(directory: PathLike) -> dict:
  """`{name: "size:version"}` for the files directly in `directory` ({} when it is missing), one listing.

  The version is the modification time in ns locally and the object's generation
  remotely (a new upload of the same name is a new generation).
  """
  directory = os.fspath(directory)
  if not is_remote(directory):
    if not os.path.isdir(directory):
      return {}
    with os.scandir(directory) as entries:
      return {
          e.name: f"{st.st_size}:{st.st_mtime_ns}"
          for e in entries
          if e.is_file() and (st := e.stat())
      }
  import fsspec

  fs, root = fsspec.core.url_to_fs(directory)
  try:
    infos = fs.ls(root, detail=True, refresh=True)
  except FileNotFoundError:
    return {}
  return {
      posixpath.basename(
          i["name"].rstrip("/")
      ): (
          f"{i.get('size')}:{i.get('generation') or i.get('mtime') or i.get('updated')}"
      )
      for i in infos
      if i.get("type") == "file"
  }


def glob(pattern: PathLike) -> List[str]:
  """Sorted paths matching `pattern` (a `*` in the last components)."""
  pattern = os.fspath(pattern)
  if not is_remote(pattern):
    import glob as glob_lib

    return sorted(glob_lib.glob(pattern))
  scheme, rest = pattern.split("://", 1)
  root, _, tail = rest.partition("/")
  return sorted(os.fspath(p) for p in _epath(f"{scheme}://{root}").glob(tail))


def makedirs(path: PathLike) -> None:
  """Creates `path` and its parents (a no-op for object stores' implicit directories)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)
  else:
    _epath(path).mkdir(parents=True, exist_ok=True)


def remove(path: PathLike) -> None:
  if not is_remote(path):
    os.remove(path)
  else:
    _epath(path).unlink()


def rmtree(path: PathLike) -> None:
  """Removes a directory tree; a missing one is fine."""
  if not is_remote(path):
    shutil.rmtree(path, ignore_errors=True)
  elif exists(path):
    _epath(path).rmtree()


def open(path: PathLike, mode: str = "r", encoding: str = "utf-8"):  # noqa: A001
  """Opens a local or remote file for reading (write through `io_utils.atomic_write`)."""
  if not is_remote(path):
    return builtins.open(path, mode, encoding=None if "b" in mode else encoding)
  return _epath(path).open(mode)


def read_text(path: PathLike) -> str:
  with open(path) as f:
    return f.read()


def read_bytes(path: PathLike) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def write_bytes_whole(path: PathLike, data: bytes) -> None:
  """One whole-object upload: the object appears with all of `data` or not at all."""
  _epath(path).write_bytes(data)


def copy(src: PathLike, dst: PathLike) -> None:
  """Copies one file, local or remote on either side (overwriting `dst`)."""
  if not is_remote(src) and not is_remote(dst):
    shutil.copyfile(src, dst)
    return
  if is_remote(dst):
    write_bytes_whole(dst, read_bytes(src))
  else:
    with builtins.open(dst, "wb") as f:
      f.write(read_bytes(src))


def copy_tree(src: PathLike, dst: PathLike) -> None:
  """Copies the files under `src` to `dst` (either side local or remote)."""
  src = os.fspath(src)
  makedirs(dst)
  for name in listdir(src):
    child = join(src, name)
    if isdir(child):
      copy_tree(child, join(dst, name))
    else:
      copy(child, join(dst, name))


def cached_local_copy(path: PathLike) -> str:
  """A local copy of a remote file or directory, downloaded once per process (for readers that keep the path)."""
  path = normpath(path)
  if not is_remote(path):
    return path
  if path not in _LOCAL_COPIES:
    directory = tempfile.mkdtemp(prefix="tkx_remote_")
    local = os.path.join(directory, posixpath.basename(path) or "file")
    _copy_to_local(path, local)
    _LOCAL_COPIES[path] = local
  return _LOCAL_COPIES[path]


def forget_local_copy(path: PathLike) -> None:
  """Drops `cached_local_copy(path)`'s copy (after `path` was rewritten)."""
  local = _LOCAL_COPIES.pop(normpath(path), None)
  if local is not None:
    shutil.rmtree(os.path.dirname(local), ignore_errors=True)


def _copy_to_local(path: str, local: str) -> None:
  if isdir(path):
    copy_tree(path, local)
  else:
    copy(path, local)


_LOCAL_COPIES = {}


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[str]:
  """A local path holding `path`'s contents (file or directory) for local-only readers."""
  path = os.fspath(path)
  if not is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="tkx_remote_") as tmp:
    local = os.path.join(tmp, posixpath.basename(normpath(path)) or "file")
    _copy_to_local(path, local)
    yield local
