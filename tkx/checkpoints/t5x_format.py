"""Reading (and, for tests, writing) t5x checkpoints.

Layout, as t5x's `checkpoints.Checkpointer.save` writes it (t5x/checkpoints.py):

    <dir>/checkpoint_<step>/checkpoint      msgpack (flax.serialization) of
        {"version": 3, "optimizer": train_state.state_dict()}
        where state_dict = {"target": <params>, "state": {"step": ..., "param_states": ...}}
    <dir>/checkpoint_<step>/target.encoder.layers_0.attention.query.kernel/   zarr array (tensorstore)
    ...

Newer t5x (its orbax-based `CheckpointManager`) saves the same state dict as the
orbax PyTree item `state`: `<dir>/checkpoint_<step>/state/` (or flat in
`checkpoint_<step>/`), read here with orbax; older orbax versions wrote a msgpack
`checkpoint` file whose array leaves are `PLACEHOLDER://<name>` strings pointing
at zarr dirs, also read.

Each leaf of the msgpack tree is either the array itself (small, unpartitioned
arrays are stored inline) or a TensorStore spec (a dict with `driver: zarr`,
`kvstore: {driver: file|gcs, path: <relative>}`, `metadata`) whose path is
relative to the `checkpoint_<step>` directory (tensorstore < 0.1.14 specs keep the
path at the top level instead; both are read). The param names are t5x's
(`token_embedder/embedding`, `encoder/layers_0/attention/query/kernel`, ...), the
same tree as tkx's `network.Transformer`.

The checkpoint may be local or remote (`gs://`): files go through `tkx.storage`;
each array's kvstore is re-rooted under the `checkpoint_<step>` dir being read, as
t5x does when it reads a copied checkpoint (`file` driver locally, `gcs` with the
dir's bucket remotely, whatever driver the spec was written with).

What was verified here (offline, tests/test_t5x_format.py): a checkpoint written
by `save_params` below, which follows the layout above as read from t5x's source
(msgpack keys, spec dicts with relative `file` kvstore paths, zarr with gzip
chunks, a `param_states` optimizer subtree, inline arrays next to tensorstore
ones, the pre-0.1.14 spec form, `PLACEHOLDER://` leaves, bfloat16 arrays), reads
back bit-exactly, and loads into the tkx model; so does a `{"target", "state"}`
tree saved with orbax's PyTreeCheckpointer in `checkpoint_<step>/state/`. What was NOT verified: a checkpoint written by t5x
itself (none is reachable offline), real Cloud Storage (a `gs://` checkpoint is
read through `tkx.storage` and tensorstore's `gcs` driver against a GCS emulator,
tests/test_storage.py), scanned-layer t5x models (stacked `layers` params), and the
`params_axes` / partitioning metadata, which is ignored.
"""

import logging
import os
from typing import Any, Dict, Mapping, Optional

import numpy as np
from flax import serialization, traverse_util

from tkx import errors, storage
from tkx.checkpoints import layout

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint"
T5X_VERSION = 3
# Where the params sit in the restored state dict, by t5x version / train state kind.
_PARAM_PATHS = (
    ("optimizer", "target"),
    ("target",),
    ("optimizer", "params"),
    ("state", "params"),
    ("optimizer", "state", "params"),
    ("params",),
)


class T5xCheckpointError(errors.UserError):
  """The path is not a readable t5x checkpoint (message names the file and the field)."""


_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")
_PLACEHOLDER = "PLACEHOLDER://"


def _is_orbax_dir(path: str) -> bool:
  return storage.isdir(path) and any(
      storage.exists(storage.join(path, m)) for m in _ORBAX_MARKERS
  )


def find_orbax_state_dir(path: str) -> Optional[str]:
  """The orbax PyTree dir of a t5x (orbax-era) checkpoint under `path`, or None."""
  path = storage.abspath(path)
  candidates = [path, storage.join(path, "state")]
  if storage.isdir(path):
    steps = layout.list_steps(path)
    if steps:
      newest = storage.join(path, layout.step_dir_name(steps[-1]))
      candidates += [storage.join(newest, "state"), newest]
  for candidate in candidates:
    if _is_orbax_dir(candidate) and not storage.isfile(
        storage.join(candidate, CHECKPOINT_FILE)
    ):
      return candidate
  return None


def _restore_orbax(state_dir: str) -> Dict[str, Any]:
  import jax
  import orbax.checkpoint as ocp

  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(state_dir)
  meta = getattr(meta, "item_metadata", meta)
  tree = getattr(meta, "tree", meta)
  restore_args = jax.tree_util.tree_map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree
  )
  return checkpointer.restore(
      state_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args)
  )


def find_checkpoint_file(path: str) -> str:
  """The msgpack `checkpoint` file of `path`: that file, a `checkpoint_<step>` dir, or a dir of them (newest)."""
  path = storage.abspath(path)
  if storage.isfile(path):
    return path
  if not storage.isdir(path):
    raise FileNotFoundError(f"t5x checkpoint {path} does not exist")
  direct = storage.join(path, CHECKPOINT_FILE)
  if storage.isfile(direct):
    return direct
  steps = [
      step
      for step in layout.list_steps(path)
      if storage.isfile(
          storage.join(path, layout.step_dir_name(step), CHECKPOINT_FILE)
      )
  ]
  if not steps:
    raise FileNotFoundError(
        f"{path}: no t5x checkpoint (neither a '{CHECKPOINT_FILE}' msgpack file nor "
        "checkpoint_<step>/checkpoint in it)"
    )
  return storage.join(path, layout.step_dir_name(steps[-1]), CHECKPOINT_FILE)


def _is_ts_spec(value) -> bool:
  return (
      isinstance(value, Mapping) and "driver" in value and "kvstore" in value
  ) or (isinstance(value, str) and value.startswith(_PLACEHOLDER))


def _kvstore(path: str, ckpt_dir: str) -> Dict[str, str]:
  """The tensorstore kvstore of `path` (under `ckpt_dir`): `file` locally, `gcs` for gs://."""
  if not storage.is_remote(path):
    return {"driver": "file", "path": path}
  if path.startswith("gs://"):
    bucket, _, key = path[len("gs://") :].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": key}
  raise T5xCheckpointError(
      f"{ckpt_dir}: t5x checkpoints are read from local disk or gs:// "
      f"(tensorstore has no driver for {path.split('://')[0]}://)"
  )


def _localize_spec(spec, ckpt_dir: str) -> Dict[str, Any]:
  """Spec with its (relative) path re-rooted under `ckpt_dir` (local or gs://)."""
  if isinstance(
      spec, str
  ):  # orbax's aggregate-file placeholder: a zarr dir beside the msgpack file
    return {
        "driver": "zarr",
        "kvstore": _kvstore(
            storage.join(ckpt_dir, spec[len(_PLACEHOLDER) :]), ckpt_dir
        ),
    }
  spec = {k: dict(v) if isinstance(v, Mapping) else v for k, v in spec.items()}
  kvstore = spec["kvstore"]
  if kvstore.get("driver") in ("gcs", "gfile", "file"):
    relative = kvstore.get("path")
    if (
        relative is None and "path" in spec
    ):  # tensorstore < 0.1.14: path at the top level
      relative = spec.pop("path")
    if relative is None:
      raise T5xCheckpointError(
          f"{ckpt_dir}/{CHECKPOINT_FILE}: TensorStore spec has no 'path': {spec}"
      )
    if (
        not storage.is_remote(ckpt_dir)
        and os.path.isabs(relative)
        and os.path.exists(relative)
    ):
      candidate = relative
    else:
      candidate = storage.join(ckpt_dir, relative.lstrip("/"))
      if not storage.exists(
          candidate
      ):  # a copied checkpoint keeps its arrays beside the msgpack
        candidate = storage.join(
            ckpt_dir, os.path.basename(relative.rstrip("/"))
        )
    spec["kvstore"] = _kvstore(candidate, ckpt_dir)
  else:
    raise T5xCheckpointError(
        f"{ckpt_dir}/{CHECKPOINT_FILE}: unsupported TensorStore kvstore driver "
        f"{kvstore.get('driver')!r}"
    )
  return spec


def _read_ts(spec: Mapping[str, Any], ckpt_dir: str, name: str) -> np.ndarray:
  import tensorstore as ts

  local = _localize_spec(spec, ckpt_dir)
  try:
    store = ts.open(local, open=True, read=True).result()
    return np.asarray(store.read().result())
  except Exception as e:  # tensorstore raises ValueError / its own errors
    raise T5xCheckpointError(
        f"{ckpt_dir}: cannot read array {name!r} from {local['kvstore']['path']}: {e}"
    ) from e


def read_state_dict(path: str) -> Dict[str, Any]:
  """The whole t5x state dict (msgpack tree with every TensorStore array read in), as numpy."""
  ckpt_file = find_checkpoint_file(path)
  ckpt_dir = os.path.dirname(ckpt_file)
  state = _read_msgpack(ckpt_file)
  if not isinstance(state, Mapping):
    raise T5xCheckpointError(
        f"{ckpt_file}: expected a dict at the top level, got {type(state).__name__}"
    )
  version = state.get("version")
  if version is not None and int(version) > T5X_VERSION:
    log.warning(
        "%s: t5x checkpoint version %s is newer than the known %d",
        ckpt_file,
        version,
        T5X_VERSION,
    )

  def load(tree, prefix):
    if _is_ts_spec(tree):
      return _read_ts(tree, ckpt_dir, prefix)
    if isinstance(tree, Mapping):
      return {
          k: load(v, f"{prefix}/{k}" if prefix else k) for k, v in tree.items()
      }
    return tree

  return load(state, "")


def _read_msgpack(ckpt_file: str):
  """The msgpack state tree of a t5x `checkpoint` file (arrays as TensorStore references)."""
  data = storage.read_bytes(ckpt_file)
  try:
    return serialization.msgpack_restore(data)
  except Exception as e:
    raise T5xCheckpointError(
        f"{ckpt_file}: not a msgpack t5x checkpoint ({e})"
    ) from e


def _find_params(state: Mapping[str, Any], source: str) -> Mapping[str, Any]:
  for keys in _PARAM_PATHS:
    node = state
    for key in keys:
      node = node.get(key) if isinstance(node, Mapping) else None
    if isinstance(node, Mapping) and node:
      return node
  raise T5xCheckpointError(
      f"{source}: no params found; looked for field "
      f"{' or '.join('/'.join(p) for p in _PARAM_PATHS)} (top-level keys: {sorted(state)})"
  )


def _flatten_to_arrays(tree, prefix=""):
  """{"a/b/c": leaf} where a leaf is an inline array or a TensorStore spec dict."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping) and not _is_ts_spec(value):
      out.update(_flatten_to_arrays(value, name))
    else:
      out[name] = value
  return out


def load_params(path: str, dtype: Optional[Any] = None) -> Dict[str, Any]:
  """The model params (t5x names, nested dicts of numpy) of a t5x checkpoint.

  `path`: the `checkpoint` msgpack file, a `checkpoint_<step>` dir, or a dir of
  those (newest step); orbax-era layouts (`checkpoint_<step>/state/`) too. Only the params subtree's arrays are read (not the
  optimizer's). `dtype` casts every array (default: as stored).
  """
  orbax_dir = None
  try:
    ckpt_file = find_checkpoint_file(path)
  except FileNotFoundError:
    orbax_dir = find_orbax_state_dir(path)
    if orbax_dir is None:
      raise
  if orbax_dir is not None:
    log.info("Reading orbax-format t5x checkpoint %s", orbax_dir)
    try:
      state = _restore_orbax(orbax_dir)
    except Exception as e:
      raise T5xCheckpointError(
          f"{orbax_dir}: cannot restore the orbax PyTree ({type(e).__name__}: {e})"
      ) from e
    params = _find_params(state, orbax_dir)
    return traverse_util.unflatten_dict(
        {
            k: np.asarray(v) if dtype is None else np.asarray(v).astype(dtype)
            for k, v in _flatten_to_arrays(params).items()
        },
        sep="/",
    )
  ckpt_dir = os.path.dirname(ckpt_file)
  state = _read_msgpack(ckpt_file)
  params = _find_params(state, ckpt_file)
  flat = _flatten_to_arrays(params)
  log.info("Reading %d arrays from t5x checkpoint %s", len(flat), ckpt_dir)
  out = {}
  for i, (name, value) in enumerate(sorted(flat.items())):
    array = (
        _read_ts(value, ckpt_dir, name)
        if _is_ts_spec(value)
        else np.asarray(value)
    )
    if dtype is not None:
      array = array.astype(dtype)
    out[name] = array
    if (i + 1) % 50 == 0:
      log.info("  %d/%d arrays read", i + 1, len(flat))
  return traverse_util.unflatten_dict(out, sep="/")


class _TensorStoreSlices:
  """A TensorStore array read by numpy-style slices (`source[index]`); opened on first use."""

  def __init__(self, spec, ckpt_dir: str, name: str):
    self._spec, self._ckpt_dir, self._name = spec, ckpt_dir, name
    self._store = None
    self.shape = tuple(self._open().shape)
    self.dtype = np.dtype(self._open().dtype.numpy_dtype)

  def _open(self):
    if self._store is None:
      import tensorstore as ts

      local = _localize_spec(self._spec, self._ckpt_dir)
      try:
        self._store = ts.open(local, open=True, read=True).result()
      except Exception as e:  # tensorstore raises ValueError / its own errors
        raise T5xCheckpointError(
            f"{self._ckpt_dir}: cannot open array {self._name!r} at "
            f"{local['kvstore']['path']}: {e}"
        ) from e
    return self._store

  def __getitem__(self, index) -> np.ndarray:
    try:
      return np.asarray(self._open()[index].read().result())
    except Exception as e:
      raise T5xCheckpointError(
          f"{self._ckpt_dir}: cannot read array {self._name!r}: {e}"
      ) from e


def open_params(path: str) -> Optional[Dict[str, Any]]:
  """The params of a msgpack t5x checkpoint as arrays read by slice: nothing big is read yet.

  Nested dicts (t5x names) whose leaves have `.shape`, `.dtype` and `leaf[index]`:
  numpy arrays for the arrays stored inline in the msgpack file, TensorStore
  readers for the rest. None for an orbax-era checkpoint (`load_params` reads those).
  """
  try:
    ckpt_file = find_checkpoint_file(path)
  except FileNotFoundError:
    if find_orbax_state_dir(path) is not None:
      return None
    raise
  ckpt_dir = os.path.dirname(ckpt_file)
  state = _read_msgpack(ckpt_file)
  flat = _flatten_to_arrays(_find_params(state, ckpt_file))
  return traverse_util.unflatten_dict(
      {
          name: (
              _TensorStoreSlices(value, ckpt_dir, name)
              if _is_ts_spec(value)
              else np.asarray(value)
          )
          for name, value in flat.items()
      },
      sep="/",
  )


# ------------------------------------------------------------------------------
# Writer (t5x's layout; used by tests and to hand tkx params to t5x tooling)
# ------------------------------------------------------------------------------

_DESIRED_CHUNK_BYTES = 64 * 1024 * 1024


def _chunk_shape(shape, itemsize, target_bytes=_DESIRED_CHUNK_BYTES):
  """Largest chunk dividing `shape` with at most target_bytes, halving the largest dim first (as t5x)."""
  divisors = [[d for d in range(1, n + 1) if n % d == 0] for n in shape]
  while int(np.prod([d[-1] for d in divisors])) * itemsize > target_bytes:
    largest = max(range(len(shape)), key=lambda i: divisors[i][-1])
    if divisors[largest][-1] == 1:
      break
    divisors[largest].pop()
  return [d[-1] for d in divisors]


def save_params(
    directory: str,
    params: Mapping[str, Any],
    step: int = 0,
    *,
    inline: tuple = (),
    legacy_spec_paths: bool = False,
    placeholders: bool = False,
    param_states: Optional[Mapping[str, Any]] = None,
    target_chunk_bytes: int = _DESIRED_CHUNK_BYTES,
) -> str:
  """Writes `params` as a t5x checkpoint `directory/checkpoint_<step>/`; returns that dir.

  Arrays go to zarr (gzip) through TensorStore under `target.<dotted name>`,
  except names listed in `inline`, which are stored in the msgpack file as t5x
  does for unpartitioned arrays. `legacy_spec_paths` writes tensorstore < 0.1.14
  specs (path at the top level); `placeholders` writes older orbax's
  `PLACEHOLDER://<name>` leaves instead of specs. `param_states` fills `optimizer/state/param_states`.
  """
  import tensorstore as ts

  from tkx.models import scan

  params = scan.unscan_params(
      params
  )  # t5x's per-layer names, whatever the model's layout
  ckpt_dir = os.path.join(directory, layout.step_dir_name(step))
  os.makedirs(ckpt_dir, exist_ok=True)

  def write_tree(tree, prefix):
    flat = traverse_util.flatten_dict(dict(tree), sep="/")
    out = {}
    for name, value in flat.items():
      full = f"{prefix}/{name}"
      array = np.asarray(value)
      if name in inline or array.ndim == 0:
        out[name] = array
        continue
      relative = full.replace("/", ".")
      dtype = np.dtype(array.dtype).name
      metadata = {
          "compressor": {"id": "gzip"},
          "shape": list(array.shape),
          "chunks": _chunk_shape(
              array.shape, array.dtype.itemsize, target_chunk_bytes
          ),
      }
      spec = {
          "driver": "zarr",
          "dtype": dtype,
          "kvstore": {"driver": "file", "path": relative},
          "metadata": metadata,
      }
      write_spec = dict(
          spec,
          kvstore={"driver": "file", "path": os.path.join(ckpt_dir, relative)},
      )
      store = ts.open(write_spec, create=True, delete_existing=True).result()
      store.write(array).result()
      if placeholders:
        spec = _PLACEHOLDER + relative
      elif legacy_spec_paths:
        spec = {
            "driver": "zarr",
            "dtype": dtype,
            "kvstore": {"driver": "file"},
            "path": relative,
            "metadata": metadata,
        }
      out[name] = spec
    return traverse_util.unflatten_dict(out, sep="/")

  state = {
      "version": T5X_VERSION,
      "optimizer": {
          "target": write_tree(params, "target"),
          "state": {
              "step": np.asarray(int(step), np.int32),
              "param_states": (
                  write_tree(param_states, "state/param_states")
                  if param_states
                  else {}
              ),
          },
      },
  }
  with open(os.path.join(ckpt_dir, CHECKPOINT_FILE), "wb") as f:
    f.write(serialization.msgpack_serialize(state))
  return ckpt_dir
