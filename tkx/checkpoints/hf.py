"""Hugging Face T5 <-> tkx: configs, parameter trees, checkpoints, tokenizer settings.

A Hugging Face T5 checkpoint is a directory with `config.json` and weights in
`model.safetensors`, `pytorch_model.bin`, or shards of either listed in a
`*.index.json` (the released `allenai/tk-instruct-*` and `google/t5-*-lm-adapt` are
of this kind), optionally with the SentencePiece model `spiece.model`.

Name mapping (HF torch Linear weights are [out, in]; t5x kernels are [in, out]):

  shared.weight [vocab, d]                         token_embedder/embedding
  {enc,dec}oder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, heads]
                                                   {enc,dec}oder/relpos_bias/rel_embedding [heads, buckets]
  encoder.block.i.layer.0.SelfAttention.{q,k,v,o}  encoder/layers_i/attention/{query,key,value,out}/kernel (.T)
  encoder.block.i.layer.0.layer_norm               encoder/layers_i/pre_attention_layer_norm/scale
  encoder.block.i.layer.1.DenseReluDense.wi | wi_0, wi_1, wo
                                                   encoder/layers_i/mlp/wi | wi_0, wi_1, wo /kernel (.T)
  encoder.block.i.layer.1.layer_norm               encoder/layers_i/pre_mlp_layer_norm/scale
  decoder.block.i.layer.0 (SelfAttention)          decoder/layers_i/self_attention, pre_self_attention_layer_norm
  decoder.block.i.layer.1 (EncDecAttention)        decoder/layers_i/encoder_decoder_attention,
                                                   pre_cross_attention_layer_norm
  decoder.block.i.layer.2 (DenseReluDense)         decoder/layers_i/mlp, pre_mlp_layer_norm
  {enc,dec}oder.final_layer_norm.weight            encoder/encoder_norm/scale, decoder/decoder_norm/scale
  lm_head.weight [vocab, d] (untied only)          decoder/logits_dense/kernel [d, vocab]

Both sides scale nothing differently: T5 has no 1/sqrt(d_kv) in attention (folded
into the query initialisation), and tied models scale the decoder output by
d_model**-0.5 before the shared embedding (HF) exactly as t5x divides the logits
by sqrt(emb_dim). `encoder.embed_tokens` / `decoder.embed_tokens` are HF's aliases
of `shared` and must equal it when present.

Feed-forward: HF `feed_forward_proj` "relu" is T5 1.0 (`wi`), "gated-gelu" is T5
1.1 / LM-adapted / mT5 (`wi_0` with the tanh GELU HF calls gelu_new, `wi_1` linear).

Reading: `.safetensors` files are read by tkx's own `SafetensorsFile` (header
parsed once; a tensor read by a range of its first axis, so a slice costs about
its bytes; local or remote through `tkx.storage`; bfloat16 without torch).
`open_params(model_dir)` gives the t5x-named params as slice readers
(`directory.load_initial_params` reads an HF dir given as INITIAL_CHECKPOINT_PATH
shard-wise with them); `pytorch_model.bin` (a pickle) is read whole.
"""

import json
import logging
import os
import shutil
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from tkx import errors, storage
from tkx.models import scan
from tkx.models.config import T5Config

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SPM_FILE = "spiece.model"  # in a Hugging Face checkpoint
SAFETENSORS_FILE = "model.safetensors"

# HF feed_forward_proj <-> tkx mlp_activations. HF special-cases "gated-gelu" to
# gelu_new (tanh approximation), which is tkx's "gelu"; plain HF "gelu" is exact.
_FF_TO_ACTIVATIONS = {
    "relu": ("relu",),
    "gelu": ("gelu_exact",),
    "gelu_new": ("gelu",),
    "silu": ("silu",),
    "gated-gelu": ("gelu", "linear"),
    "gated-gelu_new": ("gelu", "linear"),
    "gated-relu": ("relu", "linear"),
    "gated-silu": ("silu", "linear"),
}
_ACTIVATIONS_TO_FF = {
    ("relu",): "relu",
    ("gelu_exact",): "gelu",
    ("gelu",): "gelu_new",
    ("gelu_new",): "gelu_new",
    ("silu",): "silu",
    ("swish",): "silu",
    ("gelu", "linear"): "gated-gelu",
    ("gelu_new", "linear"): "gated-gelu",
    ("relu", "linear"): "gated-relu",
    ("silu", "linear"): "gated-silu",
    ("swish", "linear"): "gated-silu",
}


class CheckpointFormatError(errors.UserError):
  """A checkpoint file is missing, malformed or does not match its config (message names file and field)."""


# ------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------


def hf_config_to_t5config(
    hf_config: Mapping[str, Any],
    *,
    source: str = CONFIG_FILE,
    dtype: str = "float32",
    param_dtype: str = "float32",
) -> T5Config:
  """tkx `T5Config` from a Hugging Face T5 `config.json` dict."""

  def get(name, default=None, required=True):
    if name in hf_config and hf_config[name] is not None:
      return hf_config[name]
    if required and default is None:
      raise CheckpointFormatError(f"{source}: field {name!r} is missing")
    return default

  model_type = hf_config.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    raise CheckpointFormatError(
        f"{source}: field 'model_type' is {model_type!r}; only T5/mT5 are supported"
    )
  ff = get("feed_forward_proj", "relu")
  if ff not in _FF_TO_ACTIVATIONS:
    raise CheckpointFormatError(
        f"{source}: field 'feed_forward_proj' {ff!r} is not supported; "
        f"choose from {sorted(_FF_TO_ACTIVATIONS)}"
    )
  num_layers = int(get("num_layers"))
  return T5Config(
      vocab_size=int(get("vocab_size")),
      emb_dim=int(get("d_model")),
      num_heads=int(get("num_heads")),
      head_dim=int(get("d_kv")),
      mlp_dim=int(get("d_ff")),
      num_encoder_layers=num_layers,
      num_decoder_layers=int(get("num_decoder_layers", num_layers)),
      mlp_activations=_FF_TO_ACTIVATIONS[ff],
      logits_via_embedding=hf_scales_decoder_output(hf_config),
      dropout_rate=float(get("dropout_rate", 0.1)),
      dtype=dtype,
      param_dtype=param_dtype,
      relative_attention_num_buckets=int(
          get("relative_attention_num_buckets", 32)
      ),
      relative_attention_max_distance=int(
          get("relative_attention_max_distance", 128)
      ),
      layer_norm_epsilon=float(get("layer_norm_epsilon", 1e-6)),
  )


def hf_scales_decoder_output(hf_config: Mapping[str, Any]) -> bool:
  """Whether HF multiplies the decoder output by d_model**-0.5 before the LM head (T5 1.0's tied logits).

  Released configs say it through `tie_word_embeddings` (false for T5 1.1 / mT5).
  transformers >= 5 always ties `lm_head` to `shared` unless a checkpoint holds a
  different `lm_head.weight`, and saves the scaling separately as
  `scale_decoder_outputs` (with `tie_word_embeddings: true`), which then wins.
  """
  if hf_config.get("scale_decoder_outputs") is not None:
    return bool(hf_config["scale_decoder_outputs"])
  return hf_config.get("tie_word_embeddings", True) is not False


def t5config_to_hf_config(config: T5Config) -> Dict[str, Any]:
  """Hugging Face `config.json` contents for a tkx `T5Config`."""
  acts = tuple(config.mlp_activations)
  if acts not in _ACTIVATIONS_TO_FF:
    raise CheckpointFormatError(
        f"T5Config.mlp_activations {acts} has no Hugging Face feed_forward_proj equivalent"
    )
  ff = _ACTIVATIONS_TO_FF[acts]
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "is_encoder_decoder": True,
      "vocab_size": int(config.vocab_size),
      "d_model": int(config.emb_dim),
      "d_kv": int(config.head_dim),
      "d_ff": int(config.mlp_dim),
      "num_layers": int(config.num_encoder_layers),
      "num_decoder_layers": int(config.num_decoder_layers),
      "num_heads": int(config.num_heads),
      "relative_attention_num_buckets": int(
          config.relative_attention_num_buckets
      ),
      "relative_attention_max_distance": int(
          config.relative_attention_max_distance
      ),
      "dropout_rate": float(config.dropout_rate),
      "layer_norm_epsilon": float(config.layer_norm_epsilon),
      "initializer_factor": 1.0,
      "feed_forward_proj": ff,
      "dense_act_fn": ff.split("-")[-1] if ff != "gated-gelu" else "gelu_new",
      "is_gated_act": ff.startswith("gated-"),
      "tie_word_embeddings": bool(config.logits_via_embedding),
      "use_cache": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "torch_dtype": "float32",
  }


# ------------------------------------------------------------------------------
# Reading / writing HF weight files
# ------------------------------------------------------------------------------


def _torch_to_numpy(tensor):
  import torch

  if tensor.dtype in (torch.bfloat16, torch.float16):
    tensor = tensor.float()
  return tensor.detach().cpu().numpy()


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": "bfloat16",  # ml_dtypes (a JAX dependency)
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsFile:
  """A `.safetensors` file (local or remote): header read once, tensors read by a range of rows.

  The format is an 8-byte little-endian header size, a JSON header `{name:
  {dtype, shape, data_offsets}}` and the tensors' C-order bytes, so rows
  `[a, b)` of a tensor are one contiguous byte range: `read(name, index)` reads
  only the rows `index` selects, then applies the rest of `index`.
  """

  def __init__(self, path: str):
    import ml_dtypes

    self.path = path
    self.bytes_read = 0  # tensor bytes read so far (benchmarks and tests)
    with storage.open(path, "rb") as f:
      size = int.from_bytes(f.read(8), "little")
      try:
        header = json.loads(f.read(size))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(
            f"{path}: not a safetensors file (bad header: {e})"
        ) from e
    header.pop("__metadata__", None)
    self._data_start = 8 + size
    self._tensors = {}
    for name, info in header.items():
      dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
      if dtype is None:
        raise CheckpointFormatError(
            f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}"
        )
      dtype = np.dtype(
          getattr(ml_dtypes, dtype) if isinstance(dtype, str) else dtype
      )
      self._tensors[name] = (
          dtype,
          tuple(info["shape"]),
          info["data_offsets"][0],
      )

  def names(self):
    return list(self._tensors)

  def shape(self, name: str) -> Tuple[int, ...]:
    return self._tensors[name][1]

  def dtype(self, name: str) -> np.dtype:
    return self._tensors[name][0]

  def read(self, name: str, index=()) -> np.ndarray:
    """`tensor[index]` (slices), reading only the bytes of the rows (and, in 2-D, columns) it selects."""
    dtype, shape, offset = self._tensors[name]
    index = tuple(index) if isinstance(index, tuple) else (index,)
    index += (slice(None),) * (len(shape) - len(index))
    if not shape:
      with storage.open(self.path, "rb") as f:
        f.seek(self._data_start + offset)
        data = f.read(dtype.itemsize)
      self.bytes_read += len(data)
      return np.frombuffer(data, dtype).reshape(())
    bounds = [s.indices(n) for s, n in zip(index, shape)]
    (start, stop, _), rest = bounds[0], bounds[1:]
    stop = max(start, stop)
    row = int(np.prod(shape[1:], dtype=np.int64))
    base = self._data_start + offset
    with storage.open(self.path, "rb") as f:
      if (
          len(shape) == 2
          and rest[0][2] == 1
          and rest[0][1] - rest[0][0] < shape[1]
      ):
        # A column range: each row's segment (a transposed kernel sharded on its input axis).
        first, last = rest[0][0], max(rest[0][0], rest[0][1])
        array = np.empty((stop - start, last - first), dtype)
        for r in range(start, stop):
          f.seek(base + (r * row + first) * dtype.itemsize)
          array[r - start] = np.frombuffer(
              f.read((last - first) * dtype.itemsize), dtype
          )
        index = (slice(None, None, index[0].step), slice(None))
      else:
        f.seek(base + start * row * dtype.itemsize)
        data = f.read((stop - start) * row * dtype.itemsize)
        array = np.frombuffer(data, dtype).reshape((stop - start,) + shape[1:])
        index = (slice(None, None, index[0].step),) + index[1:]
    self.bytes_read += array.nbytes
    return array[index]


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  f = SafetensorsFile(path)
  return {name: f.read(name) for name in f.names()}


def _read_torch_bin(path: str) -> Dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise CheckpointFormatError(
        f"{path}: reading pytorch_model.bin needs torch (pip install tkx[hf])"
    ) from e
  with storage.local_copy(path) as local:  # torch reads local files
    state = torch.load(local, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise CheckpointFormatError(
        f"{path}: expected a state dict, got {type(state).__name__}"
    )
  return {k: _torch_to_numpy(v) for k, v in state.items()}


def _read_weight_file(path: str) -> Dict[str, np.ndarray]:
  return (
      _read_safetensors(path)
      if path.endswith(".safetensors")
      else _read_torch_bin(path)
  )


_WEIGHT_FILES = (
    "model.safetensors.index.json",
    SAFETENSORS_FILE,
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def weight_files(model_dir: str) -> Tuple[Optional[str], Tuple[str, ...]]:
  """(the index file or None, the weight files): an index's shards, one file, or every *.safetensors."""
  for name in _WEIGHT_FILES:
    path = storage.join(model_dir, name)
    if not storage.exists(path):
      continue
    if not name.endswith(".index.json"):
      return None, (path,)
    try:
      index = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
      raise CheckpointFormatError(f"{path}: not valid JSON ({e})") from e
    if "weight_map" not in index:
      raise CheckpointFormatError(f"{path}: field 'weight_map' is missing")
    shards = sorted(set(index["weight_map"].values()))
    for shard in shards:
      if not storage.exists(storage.join(model_dir, shard)):
        raise CheckpointFormatError(
            f"{path}: shard {shard!r} listed in 'weight_map' does not exist"
        )
    return path, tuple(storage.join(model_dir, shard) for shard in shards)
  other = storage.glob(storage.join(model_dir, "*.safetensors"))
  if other:
    return None, tuple(other)
  raise CheckpointFormatError(
      f"{model_dir}: no weights found (expected model.safetensors, pytorch_model.bin or a *.index.json)"
  )


def read_hf_state_dict(model_dir: str) -> Dict[str, np.ndarray]:
  """All weights of an HF checkpoint dir (single file or sharded with an index), as numpy."""
  index, files = weight_files(model_dir)
  state = {}
  for i, path in enumerate(files):
    log.info("Reading %s (%d/%d)", path, i + 1, len(files))
    state.update(_read_weight_file(path))
  if index is not None:
    listed = json.loads(storage.read_text(index))["weight_map"]
    missing = sorted(set(listed) - set(state))
    if missing:
      raise CheckpointFormatError(
          f"{index}: tensors listed in 'weight_map' not found in shards: {missing[:5]}"
      )
  return state


class _TensorSlices:
  """One HF tensor as a t5x param read by slice (`source[index]`): transposed for kernels."""

  def __init__(self, file: SafetensorsFile, name: str, transpose: bool):
    self._file, self._name, self._transpose = file, name, transpose
    shape = file.shape(name)
    self.shape = shape[::-1] if transpose else shape
    self.dtype = file.dtype(name)

  def __getitem__(self, index) -> np.ndarray:
    index = index if isinstance(index, tuple) else (index,)
    if not self._transpose:
      return self._file.read(self._name, index)
    index = index + (slice(None),) * (2 - len(index))
    return self._file.read(self._name, index[::-1]).T


def is_hf_checkpoint(path: str) -> bool:
  return storage.isfile(storage.join(path, CONFIG_FILE))


def _check_aliases(names, read, config, source) -> None:
  """A tensor the tied logits alias (`lm_head.weight`) must equal `shared.weight`, however read."""
  aliases = [alias for alias in _aliases(config) if alias in names]
  if not aliases:
    return
  shared = np.asarray(read("shared.weight"))
  for alias in aliases:
    if not np.array_equal(np.asarray(read(alias)), shared):
      raise CheckpointFormatError(
          f"{source}: tensor {alias!r} differs from 'shared.weight' but config.json scales the decoder "
          f"output for tied logits (tie_word_embeddings / scale_decoder_outputs); t5x-style models "
          f"cannot combine scaled logits with a separate LM head"
      )


def open_params(model_dir: str) -> Optional[Dict[str, Any]]:
  """The t5x-named params of an HF checkpoint dir as slice readers (nothing big is read yet).

  Nested dicts whose leaves have `.shape`, `.dtype` and `leaf[index]`, in the
  per-layer layout; None when the weights are not all in safetensors files
  (`pytorch_model.bin` is read whole by `read_hf_state_dict`).
  """
  _, files = weight_files(model_dir)
  if not all(f.endswith(".safetensors") for f in files):
    return None
  config = hf_config_to_t5config(
      _read_config(model_dir), source=storage.join(model_dir, CONFIG_FILE)
  )
  where = {}
  for path in files:
    file = SafetensorsFile(path)
    where.update({name: file for name in file.names()})
  _check_aliases(where, lambda name: where[name].read(name), config, model_dir)
  params: Dict[str, Any] = {}
  for hf_name, path, transpose in _entries(where, config, model_dir):
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = _TensorSlices(where[hf_name], hf_name, transpose)
  return params


# ------------------------------------------------------------------------------
# Parameter trees
# ------------------------------------------------------------------------------


def _attention_names(stack: str):
  """[(HF module, t5x submodule, HF layer norm, t5x layer norm)] of the attention blocks of a layer."""
  if stack == "encoder":
    return [
        (
            "layer.0.SelfAttention",
            "attention",
            "layer.0.layer_norm",
            "pre_attention_layer_norm",
        )
    ]
  return [
      (
          "layer.0.SelfAttention",
          "self_attention",
          "layer.0.layer_norm",
          "pre_self_attention_layer_norm",
      ),
      (
          "layer.1.EncDecAttention",
          "encoder_decoder_attention",
          "layer.1.layer_norm",
          "pre_cross_attention_layer_norm",
      ),
  ]


def _mlp_layer(stack: str) -> str:
  return "layer.1" if stack == "encoder" else "layer.2"


def _name_map(config: T5Config):
  """[(hf_name, t5x_path tuple, transpose)] for every parameter of `config`."""
  entries = [("shared.weight", ("token_embedder", "embedding"), False)]
  gated = len(config.mlp_activations) > 1
  wi_names = (
      [f"wi_{j}" for j in range(len(config.mlp_activations))]
      if gated
      else ["wi"]
  )
  for stack, num_layers in (
      ("encoder", config.num_encoder_layers),
      ("decoder", config.num_decoder_layers),
  ):
    entries.append(
        (
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (stack, "relpos_bias", "rel_embedding"),
            True,
        )
    )
    for i in range(num_layers):
      hf = f"{stack}.block.{i}"
      tk = (stack, f"layers_{i}")
      for hf_att, tk_att, hf_ln, tk_ln in _attention_names(stack):
        for hf_proj, tk_proj in (
            ("q", "query"),
            ("k", "key"),
            ("v", "value"),
            ("o", "out"),
        ):
          entries.append(
              (
                  f"{hf}.{hf_att}.{hf_proj}.weight",
                  tk + (tk_att, tk_proj, "kernel"),
                  True,
              )
          )
        entries.append((f"{hf}.{hf_ln}.weight", tk + (tk_ln, "scale"), False))
      mlp = _mlp_layer(stack)
      for wi in wi_names:
        entries.append(
            (
                f"{hf}.{mlp}.DenseReluDense.{wi}.weight",
                tk + ("mlp", wi, "kernel"),
                True,
            )
        )
      entries.append(
          (
              f"{hf}.{mlp}.DenseReluDense.wo.weight",
              tk + ("mlp", "wo", "kernel"),
              True,
          )
      )
      entries.append(
          (
              f"{hf}.{mlp}.layer_norm.weight",
              tk + ("pre_mlp_layer_norm", "scale"),
              False,
          )
      )
    norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
    entries.append(
        (f"{stack}.final_layer_norm.weight", (stack, norm, "scale"), False)
    )
  if not config.logits_via_embedding:
    entries.append(
        ("lm_head.weight", ("decoder", "logits_dense", "kernel"), True)
    )
  return entries


_PROJECTIONS = ("query", "key", "value", "out", "wo")


def projection_modules(config: T5Config):
  """[(HF module name, t5x module path)] of every attention and MLP projection (the LoRA targets).

  E.g. ("decoder.block.0.layer.1.EncDecAttention.q",
  ("decoder", "layers_0", "encoder_decoder_attention", "query")); per-layer paths.
  """
  return [
      (hf_name[: -len(".weight")], path[:-1])
      for hf_name, path, _ in _name_map(config)
      if path[-1] == "kernel"
      and (path[-2] in _PROJECTIONS or path[-2].startswith("wi"))
  ]


# HF state-dict entries that alias `shared.weight` (saved by older checkpoints).
_EMBEDDING_ALIASES = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
)


def _aliases(config: T5Config):
  return _EMBEDDING_ALIASES + (
      ("lm_head.weight",) if config.logits_via_embedding else ()
  )


def _entries(names, config: T5Config, source: str):
  """[(hf_name, t5x path, transpose)] of `config`, each HF name present in `names`; no unused name."""
  entries = []
  for hf_name, path, transpose in _name_map(config):
    if hf_name == "lm_head.weight" and hf_name not in names:
      # Unscaled logits through the shared embedding (a transformers >= 5 "tied" T5 1.1).
      hf_name = "shared.weight"
    if hf_name not in names:
      raise CheckpointFormatError(
          f"{source}: tensor {hf_name!r} is missing "
          f"(config: {_describe(config)})"
      )
    entries.append((hf_name, path, transpose))
  used = {name for name, _, _ in entries} | set(_aliases(config))
  unused = sorted(set(names) - used)
  if unused:
    raise CheckpointFormatError(
        f"{source}: unexpected tensors not used by the config "
        f"({_describe(config)}): {unused[:8]}{' ...' if len(unused) > 8 else ''}"
    )
  return entries


def hf_to_params(
    state_dict: Mapping[str, np.ndarray],
    config: T5Config,
    *,
    source: str = "checkpoint",
    dtype=np.float32,
    consume: bool = False,
) -> Dict[str, Any]:
  """Nested t5x-named params (numpy, `dtype`) from an HF T5 state dict.

  `consume=True` deletes each tensor from `state_dict` once converted, so that an
  11B checkpoint is not held twice in host memory.
  """
  entries = _entries(state_dict, config, source)
  _check_aliases(state_dict, lambda name: state_dict[name], config, source)

  params: Dict[str, Any] = {}
  remaining_uses = {}
  for hf_name, _, _ in entries:
    remaining_uses[hf_name] = remaining_uses.get(hf_name, 0) + 1
  for hf_name, path, transpose in entries:
    value = np.asarray(state_dict[hf_name])
    expected_ndim = 1 if path[-1] == "scale" else 2
    if value.ndim != expected_ndim:
      raise CheckpointFormatError(
          f"{source}: tensor {hf_name!r} has shape {value.shape}, "
          f"expected {expected_ndim}-D"
      )
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.ascontiguousarray(
        value.T if transpose else value, dtype=dtype
    )
    remaining_uses[hf_name] -= 1
    if consume and not remaining_uses[hf_name]:
      del state_dict[hf_name]
  if consume:
    for alias in _EMBEDDING_ALIASES + ("lm_head.weight",):
      state_dict.pop(alias, None)
  _check_shapes(params, config, source)
  return scan.to_layout(params, config.scan_layers)


def _describe(config: T5Config) -> str:
  return (
      f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, mlp {config.mlp_activations}, "
      f"{'tied' if config.logits_via_embedding else 'untied'} logits"
  )


def expected_shapes(config: T5Config) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """t5x path -> shape for every parameter of `config` (ARCHITECTURE.md's tree)."""
  d, v, joined, mlp = (
      config.emb_dim,
      config.vocab_size,
      config.num_heads * config.head_dim,
      config.mlp_dim,
  )
  shapes = {}
  for _, path, _ in _name_map(config):
    leaf_parent = path[-2]
    if path == ("token_embedder", "embedding"):
      shape = (v, d)
    elif path[-1] == "rel_embedding":
      shape = (config.num_heads, config.relative_attention_num_buckets)
    elif leaf_parent in ("query", "key", "value"):
      shape = (d, joined)
    elif leaf_parent == "out":
      shape = (joined, d)
    elif leaf_parent.startswith("wi"):
      shape = (d, mlp)
    elif leaf_parent == "wo":
      shape = (mlp, d)
    elif path[-1] == "scale":
      shape = (d,)
    elif leaf_parent == "logits_dense":
      shape = (d, v)
    else:  # pragma: no cover - the name map and this table are written together
      raise AssertionError(path)
    shapes[path] = shape
  return shapes


def check_params(
    params: Mapping[str, Any], config: T5Config, *, source: str = "params"
):
  """Raises CheckpointFormatError unless `params` has exactly the tree and shapes `config` implies.

  Either layout passes (per-layer or scanned, see tkx.models.scan); shapes are checked per layer.
  """
  params = scan.unscan_params(_unbox(params))
  from flax import traverse_util

  got = set(traverse_util.flatten_dict(dict(params)))
  want = set(expected_shapes(config))
  if got != want:
    missing, extra = sorted(want - got), sorted(got - want)
    raise CheckpointFormatError(
        f"{source}: parameter tree does not match the model config ({_describe(config)}): "
        f"missing {['/'.join(p) for p in missing[:5]]}, unexpected {['/'.join(p) for p in extra[:5]]}"
    )
  _check_shapes(params, config, source)


def _check_shapes(params, config, source):
  for path, shape in expected_shapes(config).items():
    node = params
    for key in path:
      node = node[key]
    if tuple(node.shape) != shape:
      raise CheckpointFormatError(
          f"{source}: parameter {'/'.join(path)} has shape {tuple(node.shape)}, "
          f"config.json implies {shape}"
      )


def params_to_hf(
    params: Mapping[str, Any], config: T5Config
) -> Dict[str, np.ndarray]:
  """HF T5 state dict (numpy, the params' dtype) from t5x-named params (either layout). Tied models get no lm_head."""
  params = scan.unscan_params(_unbox(params))
  out = {}
  for hf_name, path, transpose in _name_map(config):
    node = params
    for key in path:
      if key not in node:
        raise KeyError(
            f"params have no {'/'.join(path)} (needed for {hf_name})"
        )
      node = node[key]
    value = np.asarray(node)
    if path[-1] == "scale":
      value = value.reshape(-1)
    out[hf_name] = np.ascontiguousarray(value.T if transpose else value)
  return out


def _unbox(tree):
  """Plain nested dicts of arrays (drops flax partitioning boxes, FrozenDicts and a 'params' level)."""
  try:
    import flax

    tree = flax.core.meta.unbox(tree)
    if isinstance(tree, flax.core.FrozenDict):
      tree = flax.core.unfreeze(tree)
  except ImportError:  # pragma: no cover
    pass
  if isinstance(tree, Mapping) and set(tree) == {"params"}:
    tree = tree["params"]
  return tree


# ------------------------------------------------------------------------------
# Import / export
# ------------------------------------------------------------------------------


def resolve_hf_path(path_or_hub_name: str) -> str:
  """A local HF checkpoint dir: the path itself, or a Hub snapshot download (needs network)."""
  if storage.isdir(path_or_hub_name):
    return path_or_hub_name
  if (
      storage.is_remote(path_or_hub_name)
      or os.path.exists(path_or_hub_name)
      or path_or_hub_name.startswith((".", "/"))
      or path_or_hub_name.count("/") > 1
  ):
    raise FileNotFoundError(
        f"{path_or_hub_name}: not a Hugging Face checkpoint directory"
    )
  try:
    from huggingface_hub import snapshot_download
  except ImportError as e:
    raise FileNotFoundError(
        f"{path_or_hub_name} is not a directory, and huggingface_hub is not installed "
        "to download it from the Hub"
    ) from e
  log.info("Downloading %s from the Hugging Face Hub", path_or_hub_name)
  try:
    return snapshot_download(
        path_or_hub_name,
        allow_patterns=[
            "config.json",
            "*.safetensors",
            "*.index.json",
            "pytorch_model*.bin",
            "spiece.model",
        ],
    )
  except Exception as e:  # offline, unknown repo, auth: all end here
    raise FileNotFoundError(
        f"{path_or_hub_name}: not a local directory and the Hugging Face Hub download failed "
        f"({type(e).__name__}: {e}). Offline? Download the checkpoint elsewhere and pass its directory."
    ) from e


def _read_config(model_dir: str) -> Dict[str, Any]:
  config_path = storage.join(model_dir, CONFIG_FILE)
  if not storage.exists(config_path):
    raise CheckpointFormatError(f"{model_dir}: {CONFIG_FILE} is missing")
  try:
    return json.loads(storage.read_text(config_path))
  except json.JSONDecodeError as e:
    raise CheckpointFormatError(f"{config_path}: not valid JSON ({e})") from e


def import_hf(
    path_or_hub_name: str, *, dtype=np.float32
) -> Tuple[T5Config, Dict[str, Any], Optional[str]]:
  """(T5Config, params, spm_model_path or None) of an HF T5 checkpoint dir or Hub name."""
  model_dir = resolve_hf_path(path_or_hub_name)
  config = hf_config_to_t5config(
      _read_config(model_dir),
      source=storage.join(model_dir, CONFIG_FILE),
      param_dtype=np.dtype(dtype).name,
  )
  state = read_hf_state_dict(model_dir)
  params = hf_to_params(
      state, config, source=model_dir, dtype=dtype, consume=True
  )
  spm = storage.join(model_dir, SPM_FILE)
  if storage.is_remote(spm) and storage.isfile(spm):
    spm = storage.cached_local_copy(spm)  # SentencePiece reads local files
  return config, params, (spm if storage.isfile(spm) else None)


def export_hf(
    config: T5Config,
    params: Mapping[str, Any],
    out_dir: str,
    *,
    spm_model: Optional[str] = None,
    extra_ids: int = 0,
) -> str:
  """Writes `config.json`, `model.safetensors` loadable by `T5ForConditionalGeneration`.

  With `spm_model`, also the tokenizer (`spiece.model` + transformers' tokenizer
  files, `hf_tokenizer(spm_model, extra_ids)`), loadable by `AutoTokenizer`.
  """
  from safetensors.numpy import save_file

  os.makedirs(out_dir, exist_ok=True)
  state = params_to_hf(params, config)
  save_file(
      state, os.path.join(out_dir, SAFETENSORS_FILE), metadata={"format": "pt"}
  )
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(t5config_to_hf_config(config), f, indent=2, sort_keys=True)
  if spm_model:
    shutil.copyfile(spm_model, os.path.join(out_dir, SPM_FILE))
    try:
      tokenizer = hf_tokenizer(spm_model, extra_ids)
    except (
        ImportError
    ):  # transformers is the `hf` extra; spiece.model alone still loads
      log.warning(
          "%s: wrote spiece.model without transformers' tokenizer files "
          "(pip install transformers to write them)",
          out_dir,
      )
    else:
      tokenizer.save_pretrained(out_dir)
  return out_dir


# ------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------


def hf_tokenizer(spm_model: str, extra_ids: int = 0):
  """HF `T5Tokenizer` that tokenizes as seqio's `SentencePieceVocabulary(spm_model, extra_ids)`.

  In transformers 5 `T5Tokenizer` is backed by `tokenizers` (there is no slow,
  sentencepiece-calling class any more; `legacy` no longer changes anything for
  T5). Built from the `.model` file it carries sentencepiece's normalizer (the
  precompiled nmt_nfkc charsmap) and pre-tokenizes with WhitespaceSplit +
  Metaspace(prepend_scheme="always"), which is sentencepiece's
  remove_extra_whitespaces + add_dummy_prefix: token ids then equal
  sentencepiece's on ordinary text (tested on the NI sample, 6,000 texts in
  English and Finnish). Two differences remain: HF appends EOS (id 1) unless
  `add_special_tokens=False`, and HF reads the literal strings `</s>`, `<pad>`,
  `<unk>` (and `<extra_id_N>`) in the text as their special ids while
  sentencepiece spells them out as pieces (`split_special_tokens=True` does not
  change this for T5 in transformers 5.x).
  """
  import tempfile
  from transformers import T5Tokenizer

  with tempfile.TemporaryDirectory() as tmp:
    os.symlink(os.path.abspath(spm_model), os.path.join(tmp, SPM_FILE))
    return T5Tokenizer.from_pretrained(tmp, extra_ids=extra_ids)
