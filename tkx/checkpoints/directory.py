"""The tkx checkpoint directory: writing its model files and reading it back (t5x's checkpoints.py role).

A tkx checkpoint directory (names in `tkx.checkpoints.layout`) holds
`checkpoint_<step>/` (orbax; `orbax_io`), `model.gin` (the model config and
vocabulary, written here from the config of the model the weights belong to)
and, when the vocabulary came with the weights, `spm.model`.

model.gin is a model gin file like `gin_configs/models/*/*.gin`: it binds
`MODEL` (t5x's entry macro) to the model class that was trained, its
`network.T5Config` (every field, the dense layer included), the `lora.LoraConfig`
when the dense layer is "lora", and the vocabulary, and imports the modules
those names come from. Readers build the model from it (`%MODEL`), never from a
class named here. An adapter checkpoint (a `TRAINABLE='adapters'` run) holds
the adapters only and its model.gin names the base (`adapters.base_checkpoint.path`,
`tkx.models.adapters`); `load` reads the base from there and the adapters from the step.

Writers: `write_model_files` (model.gin [+ spm.model]), `write_model_files_for`
(a model's), `write_checkpoint` (params + model files; `tkx import-checkpoint`).
Readers: `read_config`, `load_vocabulary`, `load` (model built from model.gin,
sharded params, vocabulary: `tkx infer/eval/generate/serve`), `read` (config,
numpy params, spm path: `tkx export-checkpoint`), `load_initial_params` (a tkx
or t5x checkpoint into a training run's abstract params).
"""

import dataclasses
import enum
import logging
import os
from typing import Any, Optional, Sequence

from tkx import errors, gin_utils, io_utils, storage
from tkx.checkpoints import layout, orbax_io

log = logging.getLogger(__name__)


class CheckpointError(errors.UserError):
  """A checkpoint that does not fit the model or the layout; the message names the file and field."""


# ------------------------------------------------------------------------------
# Vocabulary rule
# ------------------------------------------------------------------------------
def sentinel_ids_for(spm_model: str, vocab_size: int) -> int:
  """T5's convention: 100 sentinel ids after the pieces when the embedding has room for them, else 0.

  (T5: 32,000 pieces + 100 <= 32,128; mT5: 250,000 + 100 <= 250,112; the
  embedded 1,000-piece model in a 1,024-row embedding: none.)
  """
  import sentencepiece

  pieces = sentencepiece.SentencePieceProcessor(
      model_file=spm_model
  ).get_piece_size()
  return 100 if pieces + 100 <= vocab_size else 0


# ------------------------------------------------------------------------------
# model.gin
# ------------------------------------------------------------------------------
def _gin_literal(value):
  if isinstance(value, enum.Enum):  # T5Config's modes take their values
    return repr(value.value)
  if isinstance(value, bool):
    return "True" if value else "False"
  if isinstance(value, str):
    return repr(value)
  if isinstance(value, tuple):
    return (
        "("
        + ", ".join(_gin_literal(v) for v in value)
        + ("," if len(value) == 1 else "")
        + ")"
    )
  return repr(value)


DEFAULT_MODEL_CLASS = "tkx.models.models.EncoderDecoderModel"


def gin_selector(cls) -> str:
  """The name gin knows a registered class by (`models.EncoderDecoderModel`), for a gin file to name it.

  Tried from the most qualified name down (`tkx.models.models.X`, `models.models.X`,
  `models.X`, `X`), so that the shortest name gin resolves to the class is not reached
  when a longer one already is unambiguous.
  """
  import gin

  parts = cls.__module__.split(".")
  candidates = [".".join(parts[i:] + [cls.__name__]) for i in range(len(parts))]
  for selector in candidates + [cls.__name__]:
    try:
      if gin.get_configurable(selector) is cls:
        return selector
    except ValueError:  # unknown or ambiguous under that name
      continue
  raise CheckpointError(
      f"{cls.__module__}.{cls.__qualname__} is not registered with gin; decorate it with "
      "@gin.configurable(module=...) so that model.gin can name it as MODEL"
  )


def config_to_gin(
    config,
    *,
    vocab_path: Optional[str] = None,
    extra_ids: Optional[int] = None,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    loss_normalizing_factor: Optional[float] = None,
    comment: str = "",
    model_class: str = DEFAULT_MODEL_CLASS,
    base_checkpoint: Optional[str] = None,
) -> str:
  """A complete model gin file (as `gin_configs/models/*/*.gin`) for a `T5Config`, written as `model.gin`.

  Every `T5Config` field is written. `vocab_path` (absolute, e.g. the
  checkpoint's `spm.model`) and `extra_ids` bind `vocab.get_vocabulary`; without
  a path the embedded sample vocabulary is named. `MODEL` builds `model_class`
  (`module.Class`, registered with gin; see `write_model_files_for`); the
  modules of the model class and of a non-default `config.dense_layer` are
  imported. The "lora" layer's settings are gin's `lora.LoraConfig()` now;
  `base_checkpoint` marks an adapter checkpoint and names its base. Read back
  with `read_config` / `load`.
  """
  from tkx.models import network

  module_name, class_name = model_class.rsplit(".", 1)
  imports = ["tkx.models.models", "tkx.data.vocab", module_name]
  if config.dense_layer != "dense":
    imports.append(network.dense_layer_module(config.dense_layer))
  model_selector = gin_selector(_import_class(module_name, class_name))
  lines = [f"# {line}" for line in comment.splitlines()] if comment else []
  lines += ["# Model config written by tkx (tkx.checkpoints.directory)."]
  lines += [f"import {name}" for name in dict.fromkeys(imports)]
  lines += [
      "",
      f"DROPOUT_RATE = {float(config.dropout_rate)!r}",
      f"Z_LOSS = {float(z_loss)!r}",
      f"LABEL_SMOOTHING = {float(label_smoothing)!r}",
      f"LOSS_NORMALIZING_FACTOR = {_gin_literal(loss_normalizing_factor)}",
      "",
      f"vocab.get_vocabulary.path = {_gin_literal(vocab_path) if vocab_path else 'None'}",
  ]
  if extra_ids is not None:
    lines.append(f"vocab.get_vocabulary.extra_ids = {int(extra_ids)}")
  lines += [
      "VOCABULARY = @vocab.get_vocabulary()",
      "",
      f"MODEL = @{model_selector}()",
      f"{model_selector}:",
      "  module = @network.Transformer()",
      "  input_vocabulary = %VOCABULARY",
      "  output_vocabulary = %VOCABULARY",
      "  z_loss = %Z_LOSS",
      "  label_smoothing = %LABEL_SMOOTHING",
      "  loss_normalizing_factor = %LOSS_NORMALIZING_FACTOR",
      "",
      "network.Transformer.config = @network.T5Config()",
      "network.T5Config:",
  ]
  for field in dataclasses.fields(config):
    if field.name == "dropout_rate":
      continue
    value = getattr(config, field.name)
    if isinstance(value, list):
      value = tuple(value)
    lines.append(f"  {field.name} = {_gin_literal(value)}")
  lines.append("  dropout_rate = %DROPOUT_RATE")
  lines += _adapter_lines(config, base_checkpoint)
  return "\n".join(lines) + "\n"


def _adapter_lines(config, base_checkpoint: Optional[str]) -> list:
  """model.gin's LoraConfig bindings (dense layer "lora") and an adapter checkpoint's base."""
  lines = []
  if config.dense_layer == "lora":
    from tkx.models import lora

    # gin's LoraConfig: what the model was built with.
    lines += ["", lora.gin_bindings(lora.LoraConfig()).rstrip("\n")]
  if base_checkpoint:
    lines += [
        "",
        "# The adapters of this checkpoint train over this base (tkx.models.adapters).",
        "import tkx.models.adapters",
        f"adapters.base_checkpoint.path = {_gin_literal(str(base_checkpoint))}",
    ]
  return lines


def write_model_files(
    directory: str,
    config,
    *,
    spm_model: Optional[str] = None,
    vocab_path: Optional[str] = None,
    extra_ids: Optional[int] = None,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    loss_normalizing_factor: Optional[float] = None,
    comment: str = "",
    model_class: str = DEFAULT_MODEL_CLASS,
    base_checkpoint: Optional[str] = None,
) -> None:
  """Writes `model.gin` (atomically) and, given `spm_model`, copies it to `spm.model`.

  With `spm_model` model.gin names the copy (and its sentinel ids); otherwise it
  names `vocab_path` / `extra_ids` (None: the embedded sample vocabulary).
  """
  if spm_model:
    target = storage.join(storage.abspath(directory), layout.SPM_MODEL)
    if storage.abspath(spm_model) != target:
      storage.makedirs(storage.abspath(directory))
      storage.copy(spm_model, target)
    vocab_path = target
    extra_ids = sentinel_ids_for(target, config.vocab_size)
  with io_utils.atomic_write(storage.join(directory, layout.MODEL_GIN)) as f:
    f.write(
        config_to_gin(
            config,
            vocab_path=vocab_path,
            extra_ids=extra_ids,
            z_loss=z_loss,
            label_smoothing=label_smoothing,
            loss_normalizing_factor=loss_normalizing_factor,
            comment=comment,
            model_class=model_class,
            base_checkpoint=base_checkpoint,
        )
    )


def _import_class(module_name: str, class_name: str):
  import importlib

  return getattr(importlib.import_module(module_name), class_name)


def write_model_files_for(
    model,
    directory: str,
    comment: str = "",
    base_checkpoint: Optional[str] = None,
) -> None:
  """`write_model_files` for a model (a `BaseModel` over `network.Transformer`): its class, config,
  loss settings and vocabulary, so that `load` builds the same model (`base_checkpoint`:
  an adapter run's base).

  The embedded vocabulary is named by default (model.gin stays portable); a
  vocabulary file called `spm.model` beside a checkpoint is copied in, so the
  directory keeps its vocabulary next to the weights.
  """
  from tkx.data import vocab as vocab_lib

  vocabulary = model.output_vocabulary
  path = getattr(vocabulary, "sentencepiece_model_file", None)
  spm_model = None
  if path and os.path.abspath(path) == os.path.abspath(
      vocab_lib.EMBEDDED_SPM_PATH
  ):
    path = None
  elif (
      path and "://" not in path and os.path.basename(path) == layout.SPM_MODEL
  ):
    spm_model, path = path, None
  write_model_files(
      directory,
      model.config,
      spm_model=spm_model,
      vocab_path=path,
      extra_ids=None if spm_model else getattr(vocabulary, "extra_ids", None),
      z_loss=model.z_loss,
      label_smoothing=model.label_smoothing,
      loss_normalizing_factor=model.loss_normalizing_factor,
      comment=comment,
      model_class=f"{type(model).__module__}.{type(model).__name__}",
      base_checkpoint=base_checkpoint,
  )


def write_checkpoint(
    config,
    params,
    out_dir: str,
    *,
    spm_model: Optional[str] = None,
    step: int = 0,
    comment: str = "",
    vocab_path: Optional[str] = None,
    extra_ids: Optional[int] = None,
) -> str:
  """A params-only tkx checkpoint dir: `checkpoint_<step>/`, `model.gin` [+ `spm.model`]; returns the dir."""
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  step_dir = orbax_io.save_params(out_dir, dict(params), step=step)
  write_model_files(
      out_dir,
      config,
      spm_model=spm_model,
      vocab_path=vocab_path,
      extra_ids=extra_ids,
      comment=comment,
  )
  log.info("Wrote %s", step_dir)
  return out_dir


# ------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------
def read_config(root: str, gin_bindings: Sequence[str] = (), clear=True):
  """The `T5Config` a checkpoint's model.gin binds (plain, or scoped under MODEL/ as an operative config).

  `clear=False` keeps a run gin file parsed before (eval.gin, infer.gin).
  """
  import gin
  from tkx.models import config as config_lib

  path = storage.join(root, layout.MODEL_GIN)
  if not storage.isfile(path):
    raise CheckpointError(
        f"{root}: {layout.MODEL_GIN} is missing (is it a tkx checkpoint?)"
    )
  try:
    return gin_utils.load_config_from_gin(
        [path], list(gin_bindings), clear=clear
    )
  except gin_utils.GinConfigError as plain_error:
    # An operative config (gin.operative_config_str) scopes the bindings: MODEL/T5Config.emb_dim = ...
    try:
      with gin.config_scope("MODEL"):
        return config_lib.T5Config()
    except TypeError:
      raise CheckpointError(
          f"{path}: does not bind network.T5Config (plainly or under MODEL/): {plain_error}"
      ) from None


def _vocabulary_args(root: str, config, vocab_path: Optional[str] = None):
  """`vocab.get_vocabulary`'s (path, extra_ids) for a checkpoint; None: model.gin's own bindings apply.

  `vocab_path` if given, else the checkpoint's `spm.model` (a remote one copied
  locally: SentencePiece reads local files); a local file's sentinel ids are
  model.gin's (else counted), a remote one's the vocabulary's default.
  """
  local_spm = storage.join(root, layout.SPM_MODEL)
  if storage.isfile(local_spm) and storage.is_remote(local_spm):
    local_spm = storage.cached_local_copy(local_spm)
  path = vocab_path or (local_spm if storage.isfile(local_spm) else None)
  if path and "://" not in path:
    return path, extra_ids_for(path, config)
  if path:
    return path, None
  return None


def load_vocabulary(root: str, config, vocab_path: Optional[str] = None):
  """`vocab_path` if given, else the checkpoint's `spm.model`, else what its model.gin names (default: embedded)."""
  from tkx.data import vocab as vocab_lib

  args = _vocabulary_args(root, config, vocab_path)
  return vocab_lib.get_vocabulary(*args) if args else vocab_lib.get_vocabulary()


def build_model(config, vocabulary):
  """The default model for a `T5Config`: `EncoderDecoderModel(Transformer(config), vocabulary, vocabulary)`.

  For tests and benchmarks that have a config and no gin; a checkpoint's model
  comes from its model.gin (`load`).
  """
  from tkx.models import models, network

  return models.EncoderDecoderModel(
      network.Transformer(config), vocabulary, vocabulary
  )


def _model_from_gin(root: str):
  """The model model.gin's `MODEL` builds (already parsed), a `BaseModel`; else a CheckpointError."""
  from tkx.models import base

  path = storage.join(root, layout.MODEL_GIN)
  if gin_utils.query("%MODEL") is None:
    raise CheckpointError(
        f"{path}: binds no MODEL (e.g. MODEL = @models.EncoderDecoderModel())"
    )
  model = gin_utils.model_from_gin()
  if not isinstance(model, base.BaseModel):
    raise CheckpointError(
        f"{path}: MODEL builds a {type(model).__name__}, not a tkx.models.base.BaseModel"
    )
  return model


@dataclasses.dataclass
class LoadedCheckpoint:
  path: str  # the directory holding model.gin
  step: int
  config: Any  # tkx.models.config.T5Config
  model: Any  # tkx.models.models.EncoderDecoderModel
  params: Any
  vocabulary: Any  # seqio.Vocabulary


def load(
    path: str,
    *,
    partitioner=None,
    vocab_path: Optional[str] = None,
    gin_bindings: Sequence[str] = (),
) -> LoadedCheckpoint:
  """model.gin -> model (its `MODEL`), vocabulary, params placed by `partitioner` (default: gin's).

  `path` may be the checkpoint dir (newest step) or one `checkpoint_<step>/`.
  Keeps gin bindings parsed before (a run file's); `gin_bindings` and a
  `vocab_path` (else the checkpoint's `spm.model`) override model.gin's. The model and
  params are quantized as gin's `quantize.quantize_checkpoint.mode` says (`--quantize`).
  """
  import gin

  from tkx import partitioning
  from tkx.models import base, quantize

  root = layout.root_of(path)
  config = read_config(root, gin_bindings, clear=False)
  vocabulary_args = _vocabulary_args(root, config, vocab_path)
  if vocabulary_args:
    gin.bind_parameter("vocab.get_vocabulary.path", vocabulary_args[0])
    if vocabulary_args[1] is not None:  # else model.gin's binding stands
      gin.bind_parameter("vocab.get_vocabulary.extra_ids", vocabulary_args[1])
  model = _model_from_gin(root)
  vocabulary = model.output_vocabulary
  vocab_size = getattr(vocabulary, "vocab_size", None)
  if vocab_size is not None and vocab_size > config.vocab_size:
    raise CheckpointError(
        f"{root}: the vocabulary has {vocab_size} ids but model.gin sets "
        f"network.T5Config.vocab_size = {config.vocab_size}"
    )
  partitioner = partitioner or partitioning.Partitioner()
  step_dir = layout.find_step_dir(path)
  log.info("loading parameters from %s", step_dir)
  params = _load_params_over_base(
      step_dir, base.abstract_params(model, partitioner)
  )
  loaded = LoadedCheckpoint(
      path=root,
      step=layout.step_of(step_dir),
      config=config,
      model=model,
      params=params,
      vocabulary=vocabulary,
  )
  # --quantize / gin's `quantize.quantize_checkpoint.mode` (none by default): checkpoints stay float.
  return quantize.quantize_checkpoint(loaded, partitioner)


def _load_params_over_base(step_dir: str, abstract_params):
  """A step's params; for an adapter checkpoint (model.gin names a base) its adapters over the base's params."""
  import jax

  from tkx.models import adapters

  base_path = gin_utils.query(adapters.BASE_BINDING)
  if not base_path:
    return orbax_io.load_params(step_dir, abstract_params)
  if not storage.exists(base_path):
    raise CheckpointError(
        f"{step_dir}: the adapters' base {base_path} does not exist (model.gin's "
        f"{adapters.BASE_BINDING}: put the base there or edit that line)"
    )
  trained, frozen = adapters.split(abstract_params)
  log.info("adapters over the base %s", base_path)
  shardings = jax.tree_util.tree_map(lambda a: a.sharding, frozen)
  return adapters.combine(
      orbax_io.load_params(step_dir, trained),
      load_initial_params(base_path, frozen, shardings),
  )


def read(path: str, *, load_params: bool = True):
  """(config, numpy params or None, SentencePiece model or None) of a checkpoint dir or one of its steps.

  The SentencePiece model is the checkpoint's `spm.model`, else the local file its
  model.gin names (the embedded sample's when it names none); None for a remote one.
  """
  from tkx.data import vocab as vocab_lib

  root = layout.root_of(path)
  config = read_config(root)
  params = (
      orbax_io.load_params(layout.find_step_dir(path)) if load_params else None
  )
  spm = storage.join(root, layout.SPM_MODEL)
  if not storage.isfile(spm):
    spm = gin_utils.query("vocab.get_vocabulary.path") or str(
        vocab_lib.EMBEDDED_SPM_PATH
    )
  if storage.isfile(spm) and storage.is_remote(spm):
    spm = storage.cached_local_copy(spm)  # an HF export copies a local file
  return config, params, (spm if storage.isfile(spm) else None)


def extra_ids_for(spm_model: str, config) -> int:
  """Sentinel ids of the model's vocabulary: model.gin's binding (read by `read`), else counted."""
  extra_ids = gin_utils.query("vocab.get_vocabulary.extra_ids")
  if extra_ids is None:
    extra_ids = sentinel_ids_for(spm_model, config.vocab_size)
  return int(extra_ids)


def _check_names_and_shapes(flat_stored, flat_expected, source):
  """CheckpointError naming missing/extra/mis-shaped parameters; `flat_*`: {keystr: leaf with .shape}."""
  import numpy as np

  missing = sorted(set(flat_expected) - set(flat_stored))
  unexpected = sorted(set(flat_stored) - set(flat_expected))
  if missing or unexpected:
    raise CheckpointError(
        f"INITIAL_CHECKPOINT_PATH={source}: parameters do not match the model: "
        f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
        f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
    )
  for key, leaf in flat_expected.items():
    if tuple(np.shape(flat_stored[key])) != tuple(leaf.shape):
      raise CheckpointError(
          f"INITIAL_CHECKPOINT_PATH={source}: parameter {key} has shape "
          f"{tuple(np.shape(flat_stored[key]))} in the checkpoint, the model expects {tuple(leaf.shape)}"
      )


def _flat(tree):
  import jax

  return {
      jax.tree_util.keystr(p): leaf
      for p, leaf in jax.tree_util.tree_flatten_with_path(
          dict(tree), is_leaf=lambda x: hasattr(x, "shape")
      )[0]
  }


def _check_and_cast(loaded, abstract_params, source):
  """Clear errors for missing/extra/mis-shaped parameters; casts to the model's param dtypes."""
  import jax
  import numpy as np

  flat_expected = _flat(abstract_params)
  flat_loaded = _flat(loaded)
  _check_names_and_shapes(flat_loaded, flat_expected, source)
  treedef = jax.tree_util.tree_structure(abstract_params)
  return jax.tree_util.tree_unflatten(
      treedef,
      [
          np.asarray(flat_loaded[k]).astype(flat_expected[k].dtype)
          for k in flat_expected
      ],
  )


def _from_slices(sources, abstract_params, params_shardings):
  """Global arrays whose every local shard is read from `sources` (numpy-style slicing) and cast."""
  import jax
  import numpy as np

  flat_sources = _flat(sources)

  def make(path, abstract, sharding):
    source = flat_sources[jax.tree_util.keystr(path)]
    return jax.make_array_from_callback(
        abstract.shape,
        sharding,
        lambda index: np.asarray(source[index]).astype(
            abstract.dtype, copy=False
        ),
    )

  return jax.tree_util.tree_map_with_path(
      make, abstract_params, params_shardings
  )


def _read_shard_wise(path, abstract_params, params_shardings):
  """The params of a tkx, Hugging Face (safetensors) or t5x (msgpack) checkpoint, each process reading only its devices' slices.

  None when the checkpoint cannot be read so: another layer layout (scanned vs per
  layer: converted after a whole read), an orbax-era t5x checkpoint or an HF
  `pytorch_model.bin`.
  """
  import jax

  from tkx.models import scan

  scanned = scan.is_scanned(abstract_params)
  flat_expected = _flat(abstract_params)
  if orbax_io.is_tkx_checkpoint(path):
    stored = orbax_io.params_metadata(path)
    if stored is not None:
      if scan.is_scanned(stored) != scanned:
        return None
      _check_names_and_shapes(_flat(stored), flat_expected, path)
      target = jax.tree_util.tree_map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
          abstract_params,
          params_shardings,
      )
      return orbax_io.load_params(path, target)
  from tkx.checkpoints import hf, t5x_format

  if hf.is_hf_checkpoint(path):
    sources = hf.open_params(path)
  else:
    sources = t5x_format.open_params(path)
  if sources is None or scan.is_scanned(sources) != scanned:
    return None
  _check_names_and_shapes(_flat(sources), flat_expected, path)
  return _from_slices(sources, abstract_params, params_shardings)


def load_initial_params(path: str, abstract_params, params_shardings):
  """Params from a tkx checkpoint (also those `tkx import-checkpoint` writes), a t5x checkpoint or a Hugging Face T5 dir.

  Checked against the model's `abstract_params` (names, shapes), cast to their
  dtypes and placed with `params_shardings`. Each process reads only the slices
  its devices hold, cast as they are read (`_read_shard_wise`), so its peak host
  memory grows with its shard; a checkpoint in the other layer layout (scanned or
  per layer) or an orbax-era t5x one is read whole and converted.
  """

  log.info("Initialising parameters from %s", path)
  io_utils.return_large_buffers_to_os()  # read buffers leave no lasting peak
  if not storage.exists(path):
    raise FileNotFoundError(f"INITIAL_CHECKPOINT_PATH={path} does not exist")
  params = _read_shard_wise(path, abstract_params, params_shardings)
  if params is not None:
    return params
  log.info(
      "%s: another layer layout, an orbax-era t5x checkpoint or an HF .bin; reading it whole",
      path,
  )
  loaded = None
  if orbax_io.is_tkx_checkpoint(path):
    try:
      loaded = orbax_io.load_params(path)
    except (
        KeyError
    ):  # an orbax-era t5x checkpoint (state/target/...): t5x_format reads those
      loaded = None
  if loaded is None:
    from tkx.checkpoints import hf, t5x_format

    if hf.is_hf_checkpoint(path):
      _, loaded, _ = hf.import_hf(path)
    else:
      loaded = t5x_format.load_params(path)
  from tkx.models import scan

  # Per-layer or scanned checkpoints initialise models of either layout.
  loaded = scan.to_layout(loaded, scan.is_scanned(abstract_params))
  host = _check_and_cast(loaded, abstract_params, path)
  return _from_slices(host, abstract_params, params_shardings)
