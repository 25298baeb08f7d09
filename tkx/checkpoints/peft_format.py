"""Hugging Face peft LoRA adapter directories <-> tkx LoRA parameters (`tkx.models.lora`).

A peft adapter directory holds `adapter_config.json` (peft_type "LORA", r,
lora_alpha, lora_dropout, target_modules, task_type "SEQ_2_SEQ_LM",
base_model_name_or_path) and `adapter_model.safetensors` with, for each adapted
torch Linear of the HF T5 (`hf.projection_modules`: q/k/v/o under SelfAttention
and EncDecAttention, DenseReluDense.wi | wi_0, wi_1 and wo):

  base_model.model.<module>.lora_A.weight [rank, in]   = tkx <projection>/lora_a [in, rank] (.T)
  base_model.model.<module>.lora_B.weight [out, rank]  = tkx <projection>/lora_b [rank, out] (.T)

Both scale the update by lora_alpha / r, and the HF import/export transposes each
kernel and changes nothing else (`tkx.checkpoints.hf`: T5's 1/sqrt(d_kv) is
folded into the query weights on both sides), so the adapters map with a
transpose only and `peft.PeftModel.from_pretrained(<HF export of the base>, dir)`
computes what the tkx LoRA model computes.

Targets: tkx's "wi" is every wi_j of a gated MLP; a LoraConfig adapting both
stacks is written as peft's short names (["q", "v"]), one stack as a regex over
the module names (peft full-matches a string). Reading derives the LoraConfig
from the tensors present (whatever target_modules says) and refuses an adapter
tkx would compute differently: one that adapts a projection in only some layers
or stacks, rsLoRA, DoRA, bias or lora_bias training, modules_to_save, rank or
alpha patterns.

Contract: `ADAPTER_CONFIG_FILE`, `ADAPTER_WEIGHTS_FILE`, `is_peft_adapter(dir)`,
`export_peft(config, lora_config, params, out_dir, base_model_name_or_path)`,
`read_peft(adapter_dir, config) -> (LoraConfig, {t5x module path: (lora_a,
lora_b)})`, `with_adapters(params, adapters)`, `without_adapters(params)`.
"""

import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from tkx import storage
from tkx.checkpoints import hf
from tkx.models import lora, scan
from tkx.models.config import T5Config

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
_ADAPTER_BIN_FILE = "adapter_model.bin"
_KEY_PREFIX = "base_model.model."
_KEY = re.compile(
    r"^" + re.escape(_KEY_PREFIX) + r"(.+)\.lora_([AB])(?:\.default)?\.weight$"
)
_HF_PROJECTION = {"query": "q", "key": "k", "value": "v", "out": "o"}
# adapter_config.json fields naming peft features whose forward tkx's LoraDense does not compute.
_UNSUPPORTED = (
    "use_rslora",
    "use_dora",
    "lora_bias",
    "fan_in_fan_out",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "layer_replication",
    "trainable_token_indices",
    "use_qalora",
)


def is_peft_adapter(path: str) -> bool:
  return storage.isfile(storage.join(path, ADAPTER_CONFIG_FILE))


def _projection(path) -> str:
  """A t5x module path's LoraConfig target name ("wi_0" -> "wi")."""
  return "wi" if path[-1].startswith("wi") else path[-1]


def _target_modules(config: T5Config, lora_config: lora.LoraConfig):
  """peft's target_modules for `lora_config`: short names (both stacks) or a regex (one stack)."""
  targeted = [
      module
      for module, path in hf.projection_modules(config)
      if lora_config.is_target(path)
  ]
  short = sorted({module.rsplit(".", 1)[1] for module in targeted})
  if set(lora_config.stacks) == set(lora.STACKS):
    return short
  stacks = "|".join(lora_config.stacks)
  return rf"({stacks})\.block\.\d+\.layer\.\d+\.\w+\.({'|'.join(short)})"


def adapter_config(
    config: T5Config,
    lora_config: lora.LoraConfig,
    base_model_name_or_path: Optional[str] = None,
) -> Dict[str, Any]:
  """`adapter_config.json` contents (peft's LoraConfig fields that matter; peft defaults the rest)."""
  return {
      "peft_type": "LORA",
      "task_type": "SEQ_2_SEQ_LM",
      "base_model_name_or_path": base_model_name_or_path,
      "r": int(lora_config.rank),
      "lora_alpha": float(lora_config.alpha),
      "lora_dropout": float(lora_config.dropout_rate),
      "target_modules": _target_modules(config, lora_config),
      "bias": "none",
      "fan_in_fan_out": False,
      "use_rslora": False,
      "use_dora": False,
      "modules_to_save": None,
      "init_lora_weights": True,
      "inference_mode": True,
  }


def _node(params, path, source):
  node = params
  for key in path:
    if not isinstance(node, Mapping) or key not in node:
      raise hf.CheckpointFormatError(
          f"{source}: parameter {'/'.join(path)} is missing"
      )
    node = node[key]
  return node


def adapter_state_dict(
    config: T5Config, lora_config: lora.LoraConfig, params: Mapping[str, Any]
) -> Dict[str, np.ndarray]:
  """peft's adapter tensors (torch Linear layout) from tkx params holding LoRA adapters."""
  params = scan.unscan_params(hf._unbox(params))  # pylint: disable=protected-access
  out = {}
  for module, path in hf.projection_modules(config):
    if not lora_config.is_target(path):
      continue
    node = _node(params, path, "params")
    for name, peft_name in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
      if name not in node:
        raise hf.CheckpointFormatError(
            f"params: {'/'.join(path)}/{name} is missing, but lora.LoraConfig "
            f"(targets {list(lora_config.targets)}, stacks {list(lora_config.stacks)}) adapts it"
        )
      out[f"{_KEY_PREFIX}{module}.{peft_name}.weight"] = np.ascontiguousarray(
          np.asarray(node[name]).T
      )
  return out


def export_peft(
    config: T5Config,
    lora_config: lora.LoraConfig,
    params: Mapping[str, Any],
    out_dir: str,
    base_model_name_or_path: Optional[str] = None,
) -> str:
  """Writes `adapter_config.json` + `adapter_model.safetensors` that peft loads onto the HF export of the base."""
  from safetensors.numpy import save_file

  state = adapter_state_dict(config, lora_config, params)
  os.makedirs(out_dir, exist_ok=True)
  save_file(
      state,
      os.path.join(out_dir, ADAPTER_WEIGHTS_FILE),
      metadata={"format": "pt"},
  )
  with open(os.path.join(out_dir, ADAPTER_CONFIG_FILE), "w") as f:
    json.dump(
        adapter_config(config, lora_config, base_model_name_or_path),
        f,
        indent=2,
        sort_keys=True,
    )
  return out_dir


def read_adapter_config(adapter_dir: str) -> Dict[str, Any]:
  """adapter_config.json, checked to describe a LoRA adapter tkx computes exactly."""
  path = storage.join(adapter_dir, ADAPTER_CONFIG_FILE)
  if not storage.isfile(path):
    raise hf.CheckpointFormatError(
        f"{adapter_dir}: {ADAPTER_CONFIG_FILE} is missing (is it a peft adapter directory?)"
    )
  try:
    cfg = json.loads(storage.read_text(path))
  except json.JSONDecodeError as e:
    raise hf.CheckpointFormatError(f"{path}: not valid JSON ({e})") from e
  if cfg.get("peft_type") != "LORA":
    raise hf.CheckpointFormatError(
        f"{path}: field 'peft_type' is {cfg.get('peft_type')!r}; only LORA adapters are supported"
    )
  for field in ("r", "lora_alpha"):
    if not isinstance(cfg.get(field), (int, float)):
      raise hf.CheckpointFormatError(
          f"{path}: field {field!r} is missing or not a number"
      )
  if cfg.get("bias", "none") != "none":
    raise hf.CheckpointFormatError(
        f"{path}: field 'bias' is {cfg['bias']!r}; tkx's T5 has no biases (only 'none')"
    )
  for field in _UNSUPPORTED:
    if cfg.get(field):
      raise hf.CheckpointFormatError(
          f"{path}: field {field!r} is {cfg[field]!r}; tkx's LoRA does not compute it "
          "(plain LoRA only: scale lora_alpha / r on every adapted projection)"
      )
  return cfg


def _read_weights(adapter_dir: str) -> Dict[str, np.ndarray]:
  for name in (ADAPTER_WEIGHTS_FILE, _ADAPTER_BIN_FILE):
    path = storage.join(adapter_dir, name)
    if storage.isfile(path):
      return hf._read_weight_file(path)  # pylint: disable=protected-access
  raise hf.CheckpointFormatError(
      f"{adapter_dir}: no adapter weights ({ADAPTER_WEIGHTS_FILE} or {_ADAPTER_BIN_FILE})"
  )


def read_peft(
    adapter_dir: str, config: T5Config
) -> Tuple[
    lora.LoraConfig, Dict[Tuple[str, ...], Tuple[np.ndarray, np.ndarray]]
]:
  """(the LoraConfig, {t5x module path: (lora_a [in, r], lora_b [r, out])}) of a peft adapter for `config`'s T5."""
  cfg = read_adapter_config(adapter_dir)
  source = storage.join(adapter_dir, ADAPTER_WEIGHTS_FILE)
  modules = dict(hf.projection_modules(config))
  found: Dict[str, Dict[str, np.ndarray]] = {}
  for key, value in _read_weights(adapter_dir).items():
    match = _KEY.match(key)
    if not match:
      raise hf.CheckpointFormatError(
          f"{source}: tensor {key!r} is not a LoRA A/B weight "
          f"({_KEY_PREFIX}<module>.lora_A.weight / .lora_B.weight)"
      )
    module, which = match.groups()
    if module not in modules:
      raise hf.CheckpointFormatError(
          f"{source}: tensor {key!r} adapts {module!r}, not a projection of the base T5 "
          f"({hf._describe(config)})"  # pylint: disable=protected-access
      )
    found.setdefault(module, {})[which] = value
  if not found:
    raise hf.CheckpointFormatError(f"{source}: holds no LoRA tensors")
  lora_config = lora.LoraConfig(
      rank=int(cfg["r"]),
      alpha=cfg["lora_alpha"],
      dropout_rate=float(cfg.get("lora_dropout") or 0.0),
      targets=tuple(
          p
          for p in lora.PROJECTIONS
          if any(_projection(modules[m]) == p for m in found)
      ),
      stacks=tuple(
          s for s in lora.STACKS if any(m.startswith(s) for m in found)
      ),
  )
  expected = {m for m, path in modules.items() if lora_config.is_target(path)}
  if set(found) != expected:
    raise hf.CheckpointFormatError(
        f"{source}: adapts {sorted(found)[:3]}... but not {sorted(expected - set(found))[:3]}: "
        "tkx's LoRA adapts a projection in every layer of a stack "
        f"(lora.LoraConfig targets {list(lora_config.targets)}, stacks {list(lora_config.stacks)})"
    )
  adapters = {}
  for module, pair in found.items():
    adapters[modules[module]] = _checked_pair(
        pair, module, modules[module], lora_config.rank, config, source
    )
  return lora_config, adapters


def _checked_pair(pair, module, path, rank, config, source):
  """(lora_a, lora_b) in tkx's layout, shapes checked against the base's projection."""
  missing = [w for w in "AB" if w not in pair]
  if missing:
    raise hf.CheckpointFormatError(
        f"{source}: {module}.lora_{missing[0]}.weight is missing"
    )
  fan_in, fan_out = hf.expected_shapes(config)[path + ("kernel",)]
  for which, want in (("A", (rank, fan_in)), ("B", (fan_out, rank))):
    if tuple(pair[which].shape) != want:
      raise hf.CheckpointFormatError(
          f"{source}: tensor {module}.lora_{which}.weight has shape "
          f"{tuple(pair[which].shape)}, expected {want} (r = {rank})"
      )
  return (
      np.ascontiguousarray(pair["A"].T),
      np.ascontiguousarray(pair["B"].T),
  )


def with_adapters(params: Mapping[str, Any], adapters) -> Dict[str, Any]:
  """`params` (either layout) with `lora_a`/`lora_b` beside each adapted kernel (its dtype), in the params' layout."""
  scanned = scan.is_scanned(params)
  out = scan.unscan_params(hf._unbox(params))  # pylint: disable=protected-access
  for path, (a, b) in adapters.items():
    node = _node(out, path, "base params")
    kernel_dtype = np.asarray(node["kernel"]).dtype
    node["lora_a"] = np.asarray(a).astype(kernel_dtype)
    node["lora_b"] = np.asarray(b).astype(kernel_dtype)
  return scan.to_layout(out, scanned)


without_adapters = lora.without_adapters  # (public name kept for export)
