"""Model sizing without allocation: parameter counts, bytes per device, FLOPs.

Everything works on `jax.eval_shape` results, so an 11B model is sized on a
laptop. Bytes per device follow the logical axis rules of `tkx.partitioning`
(t5x's standard rules) on a (data, model) mesh; a mesh axis that does not
divide a dimension leaves it replicated, as the partitioner does.

FLOPs of one training step (forward + backward = 3 x forward), for a batch of
B examples with Li input and Lt target tokens, counting each multiply-add as
2 FLOPs and ignoring norms, softmaxes and embedding lookups:
  forward = 2 * B * [ Li * N_enc + Lt * N_dec + Li * N_cross_kv + Lt * N_logits ]
          + 2 * B * 2 * hd * [ L_enc * Li^2 + L_dec * (Lt^2 + Lt * Li) ]
where N_enc = encoder matmul params, N_dec = decoder matmul params except the
cross-attention key/value kernels (N_cross_kv, applied to the Li encoder
outputs), N_logits = emb_dim * vocab (tied or not), hd = heads * head_dim, and
the second line is the attention scores and weighted sums (QK^T and AV,
computed densely: no causal saving). FLOPs per token divide by B * (Li + Lt).
The usual 6 * N * tokens estimate is reported beside it. Packed rows of G
encoder blocks of Li tokens sharing one decoder row (`encoder_blocks`): the
encoder terms count G * Li tokens, its attention G * Li^2, the cross-attention
Lt * G * Li.

Adapters (docs/adapters.md): with `trainable="adapters"` gradients, optimizer
state, the accumulation buffer and the update's temporaries cover only the
adapter parameters (`tkx.models.adapters`; LoRA's rank from gin's
`lora.LoraConfig`), the frozen base being held once; activations are those of
full fine-tuning (the backward pass still runs through every layer).
`adapter_comparison` puts full fine-tuning of the base beside the adapter run.
"""

import dataclasses
import functools
import math
from typing import Any, Dict, List, Sequence, Optional

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import PartitionSpec

from tkx import errors, partitioning
from tkx.models import config as config_lib
from tkx.models import adapters, models, network

MODULES = ("token_embedder", "encoder", "decoder", "logits")


def logical_axis_rules(shard_params_over_data: bool = False):
  return list(
      partitioning.standard_logical_axis_rules(
          parameter_partitioning_dims=2 if shard_params_over_data else 1
      )
  )


def build_model(config: config_lib.T5Config) -> models.EncoderDecoderModel:
  return models.EncoderDecoderModel(network.Transformer(config))


def abstract_params(config: config_lib.T5Config):
  """(ShapeDtypeStruct tree, logical PartitionSpec tree) of the parameters (do not mutate)."""
  lora_config = None
  # The adapters' shapes come from gin's LoraConfig.
  if config.dense_layer == "lora":
    from tkx.models import lora

    lora_config = lora.LoraConfig()
  return _abstract_params(config, lora_config)


@functools.lru_cache(
    maxsize=8
)  # tracing a 24+24-layer model takes seconds; configs are hashable
def _abstract_params(config: config_lib.T5Config, lora_config):
  del lora_config  # part of the cache key: build_model reads it from gin
  model = build_model(config)
  shapes = models.init_input_shapes()
  return model.params_shapes(shapes), model.params_logical_axes(shapes)


def _path(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def module_of(path: str) -> str:
  if path.startswith("decoder/logits_dense"):
    return "logits"
  return path.split("/", 1)[0]


def count_params(config: config_lib.T5Config) -> Dict[str, int]:
  """Parameter count per module (token_embedder, encoder, decoder, logits) and total."""
  shapes, _ = abstract_params(config)
  counts = {m: 0 for m in MODULES}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    counts[module_of(_path(path))] += int(np.prod(leaf.shape))
  counts["total"] = sum(counts[m] for m in MODULES)
  return counts


def mesh_spec(
    shape: Sequence[int],
    logical: PartitionSpec,
    rules,
    mesh_shape: Dict[str, int],
) -> tuple:
  """Mesh axes per dimension; axes that do not divide the dimension are dropped."""
  spec = (
      tuple(nn.logical_to_mesh_axes(tuple(logical), rules))
      if len(logical)
      else ()
  )
  return tuple(partitioning.divisible_spec(shape, spec, mesh_shape))


def _shard_factor(spec: tuple, mesh_shape: Dict[str, int]) -> int:
  factor = 1
  for axes in spec:
    for a in (axes if isinstance(axes, tuple) else ((axes,) if axes else ())):
      factor *= mesh_shape.get(a, 1)
  return factor


def _optimizer(name: str):
  from tkx import optimizers

  if name == "adafactor":
    return optimizers.adafactor(1e-3)
  if name == "adamw":
    return optimizers.adamw(1e-3)
  raise errors.ConfigError(
      f"unknown optimizer {name!r}; choose adafactor or adamw"
  )


@dataclasses.dataclass
class MemoryReport:
  mesh_shape: Dict[str, int]
  param_bytes_total: int
  param_bytes_per_device: int
  optimizer: str
  optimizer_bytes_total: int
  optimizer_bytes_per_device: int
  trainable: str = "all"  # train_configs.Trainable's value
  trainable_params: int = 0
  # Bytes of the parameters with gradients and optimizer state.
  trainable_bytes_per_device: int = 0


def memory_per_device(
    config: config_lib.T5Config,
    data: int = 1,
    model: int = 1,
    shard_params_over_data: bool = False,
    optimizer: str = "adafactor",
    trainable: str = "all",
) -> MemoryReport:
  """Bytes of parameters and optimizer state on each device of a data x model mesh.

  `trainable="adapters"`: the optimizer state of the adapter parameters only.

  Optimizer state leaves are matched to the parameter whose path they carry:
  same shape -> the parameter's sharding; one dimension fewer (Adafactor's
  factored row/column statistics) -> that sharding without the dropped
  dimension; anything else (step counts) -> replicated.
  """
  if data < 1 or model < 1:
    raise errors.ConfigError(
        f"mesh sizes must be >= 1, got data={data} model={model}"
    )
  mesh_shape = {"data": data, "model": model}
  rules = logical_axis_rules(shard_params_over_data)
  shapes, logical = abstract_params(config)
  is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
  logical_by_path = {
      _path(p): s
      for p, s in jax.tree_util.tree_flatten_with_path(
          logical, is_leaf=is_spec
      )[0]
  }
  param_spec, param_shape = {}, {}
  total = per_device = trained_count = trained_per_device = 0
  for p, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    path = _path(p)
    spec = mesh_spec(leaf.shape, logical_by_path[path], rules, mesh_shape)
    param_spec[path], param_shape[path] = spec, tuple(leaf.shape)
    nbytes = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
    total += nbytes
    per_device += math.ceil(nbytes / _shard_factor(spec, mesh_shape))
    if trainable == "all" or adapters.is_adapter_path(p):
      trained_count += int(np.prod(leaf.shape))
      trained_per_device += math.ceil(nbytes / _shard_factor(spec, mesh_shape))

  if trainable == "adapters":
    shapes = adapters.split(shapes)[0]
  opt_state = jax.eval_shape(_optimizer(optimizer).init, shapes)
  opt_total = opt_per_device = 0
  for p, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    shape = tuple(getattr(leaf, "shape", ()))
    nbytes = int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
    opt_total += nbytes
    path = _path(p)
    match = next(
        (q for q in param_spec if path == q or path.endswith("/" + q)), None
    )
    spec = ()
    if match is not None and shape:
      spec = (
          partitioning.state_spec_from_param(
              shape, param_shape[match], param_spec[match]
          )
          or ()
      )
    opt_per_device += math.ceil(nbytes / _shard_factor(spec, mesh_shape))
  return MemoryReport(
      mesh_shape,
      total,
      per_device,
      optimizer,
      opt_total,
      opt_per_device,
      trainable,
      trained_count,
      trained_per_device,
  )


def activation_bytes_per_device(
    config: config_lib.T5Config,
    rows: int,
    inputs_length: int,
    targets_length: int,
    encoder_blocks: int = 1,
    model: int = 1,
) -> Dict[str, int]:
  """Activations the backward pass keeps for `rows` rows on one device (one micro-batch).

  Per token and layer, without remat, in the activation dtype (a bytes): the layer-norm
  outputs and residual sums (4 e), q/k/v and the attention output (4 hd), the MLP's
  inputs and activations ((n_act + 1) m) and, per query, the attention logits and
  probabilities (heads x keys, float32 softmax: 4 + a bytes); decoder layers add the
  cross-attention (q, out 2 hd, probabilities over the encoder keys, and keys/values
  2 hd per encoder token). With remat ("full" / "minimal") a layer keeps only its input
  (e) plus, while it is recomputed, one layer's full set. The logits cost T_dec x vocab x
  (a + 3 x 4) (bf16 logits, float32 log-softmax, its gradient and the loss' one-hot).
  Model-parallel dimensions (heads, mlp, vocab) divide by `model`.
  """
  a = np.dtype(config.dtype).itemsize
  e, m = config.emb_dim, config.mlp_dim
  hd = config.num_heads * config.head_dim
  heads = (
      max(config.num_heads // model, 1)
      if config.num_heads % model == 0
      else config.num_heads
  )
  shard = lambda n: n // model if n % model == 0 else n  # noqa: E731
  n_act = len(config.mlp_activations)
  enc_tokens = rows * encoder_blocks * inputs_length
  dec_tokens = rows * targets_length
  dense = 4 * e + shard(4 * hd) + shard((n_act + 1) * m)
  enc_layer = enc_tokens * (a * dense + heads * inputs_length * (4 + a))
  dec_layer = dec_tokens * (
      a * (dense + 2 * e + shard(2 * hd))
      + heads * (targets_length + encoder_blocks * inputs_length) * (4 + a)
  ) + enc_tokens * a * shard(2 * hd)
  logits = dec_tokens * shard(config.vocab_size) * (a + 3 * 4)
  if config.remat_policy in ("full", "minimal"):
    layers = (
        config.num_encoder_layers * enc_tokens * a * e
        + config.num_decoder_layers * dec_tokens * a * e
        + max(enc_layer, dec_layer)
    )
  else:
    layers = (
        config.num_encoder_layers * enc_layer
        + config.num_decoder_layers * dec_layer
    )
  return {"layers": int(layers), "logits": int(logits)}


@dataclasses.dataclass
class TrainingMemory:
  """The formula's bytes per device of a train step (fields in bytes; `total` their sum)."""

  params: int
  optimizer_state: int
  gradients: int  # float32 like the parameters, sharded like them
  accumulation: int  # the micro-batch gradient sum (num_microbatches > 1)
  activations: int
  logits: int
  update: int  # the optimizer update's parameter-sized float32 temporaries
  total: (
      int  # params + state + accumulation + the larger of the two phases below
  )
  # backward phase: activations + logits + gradients; update phase: gradients + update


# Parameter-sized float32 buffers the optimizer update holds beside the gradients (the new
# parameters and the scaled update), fitted to XLA's analysis (docs/memory.md).
UPDATE_TEMPORARIES = 2


def training_memory_per_device(
    config: config_lib.T5Config,
    *,
    data: int = 1,
    model: int = 1,
    shard_params_over_data: bool = False,
    optimizer: str = "adafactor",
    batch_rows: int = 1,
    inputs_length: int = 1024,
    targets_length: int = 128,
    encoder_blocks: int = 1,
    num_microbatches: int = 1,
    trainable: str = "all",
) -> TrainingMemory:
  """Parameters + optimizer state + gradients + accumulation buffer + activations, per device.

  `batch_rows` is the global batch (rows over all data-parallel devices); each device
  holds `batch_rows / data / num_microbatches` rows of activations at a time.
  `trainable="adapters"`: gradients and optimizer buffers of the adapters only.
  """
  mem = memory_per_device(
      config, data, model, shard_params_over_data, optimizer, trainable
  )
  rows = max(batch_rows // (data * max(num_microbatches, 1)), 1)
  act = activation_bytes_per_device(
      config, rows, inputs_length, targets_length, encoder_blocks, model
  )
  grads = mem.trainable_bytes_per_device
  accumulation = grads if num_microbatches > 1 else 0
  update = UPDATE_TEMPORARIES * grads
  backward = act["layers"] + act["logits"] + grads
  total = (
      mem.param_bytes_per_device
      + mem.optimizer_bytes_per_device
      + accumulation
      + max(backward, grads + update)
  )
  return TrainingMemory(
      params=mem.param_bytes_per_device,
      optimizer_state=mem.optimizer_bytes_per_device,
      gradients=grads,
      accumulation=accumulation,
      activations=act["layers"],
      logits=act["logits"],
      update=update,
      total=total,
  )


def _matmul_params(config: config_lib.T5Config) -> Dict[str, int]:
  e, hd, m = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
  mlp = len(config.mlp_activations) * e * m + m * e
  attention = 4 * e * hd
  return {
      "encoder": config.num_encoder_layers * (attention + mlp),
      "decoder": (
          config.num_decoder_layers * (attention + 2 * e * hd + mlp)
      ),  # self-attn + cross q/out
      "cross_kv": config.num_decoder_layers * 2 * e * hd,
      "logits": e * config.vocab_size,
  }


def forward_flops(
    config: config_lib.T5Config,
    inputs_length,
    targets_length,
    encoder_blocks: int = 1,
    batch_size: int = 1,
):
  """(dense, attention) forward FLOPs of `batch_size` rows (the module docstring's formula).

  The lengths may be numpy or jax arrays (elementwise, cast to float first in
  jax: the products overflow int32): the FLOPs of each example computed alone at
  its own lengths, what `tkx.data.packing.flop_counts` calls useful.
  """
  n = _matmul_params(config)
  if not all(isinstance(x, int) for x in (inputs_length, targets_length)):
    # Array lengths (traced in the train step): a Python int over 2**31 (a 3B model's
    # per-token matmul parameters) cannot enter a jax product, so the counts go in as floats.
    n = {name: float(count) for name, count in n.items()}
  b, lt = batch_size, targets_length
  blocks, block = encoder_blocks, inputs_length
  li = blocks * block  # encoder tokens per row
  hd = config.num_heads * config.head_dim
  dense = (
      2
      * b
      * (
          li * n["encoder"]
          + lt * n["decoder"]
          + li * n["cross_kv"]
          + lt * n["logits"]
      )
  )
  attention = (
      2
      * b
      * 2
      * hd
      * (
          config.num_encoder_layers * li * block
          + config.num_decoder_layers * (lt * lt + lt * li)
      )
  )
  return dense, attention


def train_step_flops(
    config: config_lib.T5Config,
    batch_size: int,
    inputs_length: int,
    targets_length: int,
    encoder_blocks: int = 1,
) -> Dict[str, float]:
  """FLOPs of one training step (formula in the module docstring).

  `encoder_blocks` > 1: packed rows of that many encoder blocks of
  `inputs_length` (each block attends within itself) sharing one decoder row
  of `targets_length` that attends to all of them (`tkx.data.packing`).
  """
  dense, attention = forward_flops(
      config, inputs_length, targets_length, encoder_blocks, batch_size
  )
  forward = dense + attention
  tokens = batch_size * (encoder_blocks * inputs_length + targets_length)
  total_params = count_params(config)["total"]
  return {
      "forward": float(forward),
      "train_step": float(3 * forward),
      "attention_fraction": attention / forward,
      "per_token": 3 * forward / tokens,
      "six_n_per_token": 6.0 * total_params,
      "tokens": float(tokens),
  }


# Dense bf16 peak FLOP/s per device, by `jax.Device.device_kind` substring (for MFU).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
}


def peak_flops_per_device(device_kind: str) -> Optional[float]:
  """The dense bf16 peak of a device kind (e.g. "NVIDIA H100 80GB HBM3"), None when unknown (CPUs)."""
  for name, flops in PEAK_FLOPS.items():
    if name in device_kind:
      return flops
  return None


def human(n: float, unit: str = "") -> str:
  for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.3g}{suffix}{unit}"
  return f"{n:.3g}{unit}"


def human_bytes(n: float) -> str:
  for suffix, scale in (
      ("TiB", 2**40),
      ("GiB", 2**30),
      ("MiB", 2**20),
      ("KiB", 2**10),
  ):
    if n >= scale:
      return f"{n / scale:.2f} {suffix}"
  return f"{int(n)} B"


def report(
    config: config_lib.T5Config,
    *,
    data: int = 1,
    model: int = 1,
    shard_params_over_data: bool = False,
    optimizer: str = "adafactor",
    batch_size: int = 1,
    inputs_length: int = 1024,
    targets_length: int = 128,
    encoder_blocks: int = 1,
    num_microbatches: int = 1,
    trainable: str = "all",
) -> Dict[str, Any]:
  """Everything `tkx model-info` prints, as a dict (`batch_size`: rows per step, all devices)."""
  step = dict(
      data=data,
      model=model,
      shard_params_over_data=shard_params_over_data,
      optimizer=optimizer,
      batch_rows=batch_size,
      inputs_length=inputs_length,
      targets_length=targets_length,
      encoder_blocks=encoder_blocks,
      num_microbatches=num_microbatches,
  )
  info = {
      "config": dataclasses.asdict(config),
      "params": count_params(config),
      "memory": dataclasses.asdict(
          memory_per_device(
              config, data, model, shard_params_over_data, optimizer, trainable
          )
      ),
      "training_memory": dataclasses.asdict(
          training_memory_per_device(config, trainable=trainable, **step)
      ),
      "flops": train_step_flops(
          config, batch_size, inputs_length, targets_length, encoder_blocks
      ),
      "shapes": {
          "batch_size": batch_size,
          "inputs_length": inputs_length,
          "targets_length": targets_length,
          "encoder_blocks": encoder_blocks,
          "num_microbatches": num_microbatches,
      },
      "shard_params_over_data": shard_params_over_data,
      "trainable": trainable,
  }
  if trainable == "adapters":
    info["adapter_comparison"] = adapter_comparison(config, **step)
  return info


def adapter_comparison(config: config_lib.T5Config, **step) -> Dict[str, Any]:
  """The train step per device of full fine-tuning of the base (no adapters) and of the adapter run.

  `step`: `training_memory_per_device`'s keywords. Returns {"full": TrainingMemory dict,
  "adapters": TrainingMemory dict, "trainable_params": the adapters' count}.
  """
  base = dataclasses.replace(config, dense_layer="dense", prompt_length=0)
  return {
      "full": dataclasses.asdict(
          training_memory_per_device(base, trainable="all", **step)
      ),
      "adapters": dataclasses.asdict(
          training_memory_per_device(config, trainable="adapters", **step)
      ),
      "trainable_params": (
          memory_per_device(
              config,
              step["data"],
              step["model"],
              step["shard_params_over_data"],
              step["optimizer"],
              "adapters",
          ).trainable_params
      ),
  }


# Memory per device by `jax.Device.device_kind` substring, for devices whose runtime reports none.
DEVICE_MEMORY = {
    "TPU v4": 32 * 2**30,
    "TPU v5 lite": 16 * 2**30,
    "TPU v5p": 95 * 2**30,
}


def local_device_memory() -> Optional[int]:
  """The first local accelerator's memory (its runtime's limit, else `DEVICE_MEMORY`); None on CPUs."""
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    return None
  stats = (
      (device.memory_stats() or {}) if hasattr(device, "memory_stats") else {}
  )
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return next(
      (v for k, v in DEVICE_MEMORY.items() if k in device.device_kind), None
  )


def verdict(
    config: config_lib.T5Config, info: Dict[str, Any], device_memory: int
) -> Dict[str, Any]:
  """Whether the train step fits `device_memory` per device (XLA's peak when measured, else the
  formula's) and, when it does not, the changes that make the formula fit, cheapest first.
  """
  xla = info.get("xla", {}).get("train_step")
  need = xla["peak"] if xla else info["training_memory"]["total"]
  out = {
      "device_memory": device_memory,
      "needed": need,
      "source": "xla" if xla else "formula",
      "fits": need <= device_memory,
      "changes": [],
  }
  if out["fits"]:
    return out
  shapes, mesh = info["shapes"], info["memory"]["mesh_shape"]
  base = dict(
      data=mesh["data"],
      model=mesh["model"],
      shard_params_over_data=info["shard_params_over_data"],
      optimizer=info["memory"]["optimizer"],
      batch_rows=shapes["batch_size"],
      inputs_length=shapes["inputs_length"],
      targets_length=shapes["targets_length"],
      encoder_blocks=shapes["encoder_blocks"],
      num_microbatches=shapes["num_microbatches"],
      trainable=info.get("trainable", "all"),
  )
  # Scale the formula by XLA's own figure, so that a candidate is judged on XLA's terms.
  scale = need / info["training_memory"]["total"]
  candidates = []
  if config.remat_policy == "none":
    candidates.append(
        ("network.T5Config.remat_policy = 'full'",
         dataclasses.replace(config, remat_policy="full"), {})
    )  # fmt: skip
  if not base["shard_params_over_data"]:
    candidates.append(
        ("partitioning.Partitioner.shard_params_over_data = True (FSDP)",
         config, {"shard_params_over_data": True})
    )  # fmt: skip
  rows_per_device = base["batch_rows"] // max(base["data"], 1)
  if rows_per_device // base["num_microbatches"] >= 2:
    candidates.append(
        (f"NUM_MICROBATCHES = {2 * base['num_microbatches']}", config,
         {"num_microbatches": 2 * base["num_microbatches"]})
    )  # fmt: skip
  if base["optimizer"] == "adamw":
    candidates.append(
        (
            "trainer.train.optimizer_fn = @optimizers.adafactor (factored state)",
            config,
            {"optimizer": "adafactor"},
        )
    )
  if base["data"] % 2 == 0:
    candidates.append(
        (f"partitioning.Partitioner.num_partitions = {2 * base['model']} (model axis)",
         config, {"model": 2 * base["model"], "data": base["data"] // 2})
    )  # fmt: skip
  for change, cfg, overrides in candidates:
    total = training_memory_per_device(cfg, **{**base, **overrides}).total
    out["changes"].append(
        {
            "change": change,
            "estimate": int(total * scale),
            "fits": total * scale <= device_memory,
        }
    )
  return out


def format_report(info: Dict[str, Any]) -> str:
  c, p, mem, fl, sh = (
      info["config"],
      info["params"],
      info["memory"],
      info["flops"],
      info["shapes"],
  )
  lines = [
      f"model: emb {c['emb_dim']}, heads {c['num_heads']} x {c['head_dim']}, mlp {c['mlp_dim']} "
      f"{'/'.join(c['mlp_activations'])}, layers {c['num_encoder_layers']}+{c['num_decoder_layers']}, "
      f"vocab {c['vocab_size']}, logits {'tied' if c['logits_via_embedding'] else 'untied'}, "
      f"dtype {c['dtype']} (params {c['param_dtype']})",
      "",
      f"{'module':<16}{'parameters':>16}{'share':>9}",
  ]
  for m in MODULES + ("total",):
    lines.append(f"{m:<16}{p[m]:>16,}{p[m] / p['total']:>9.1%}")
  ms = mem["mesh_shape"]
  lines += [
      "",
      f"mesh data={ms['data']} x model={ms['model']} ({ms['data'] * ms['model']} devices), "
      f"params over data: {'yes' if info['shard_params_over_data'] else 'no'}",
      f"{'':<24}{'total':>14}{'per device':>14}",
      f"{'parameters':<24}{human_bytes(mem['param_bytes_total']):>14}{human_bytes(mem['param_bytes_per_device']):>14}",
      f"{mem['optimizer'] + ' state':<24}{human_bytes(mem['optimizer_bytes_total']):>14}"
      f"{human_bytes(mem['optimizer_bytes_per_device']):>14}",
      f"{'params + state':<24}{human_bytes(mem['param_bytes_total'] + mem['optimizer_bytes_total']):>14}"
      f"{human_bytes(mem['param_bytes_per_device'] + mem['optimizer_bytes_per_device']):>14}",
      "",
      *_format_adapter_comparison(info),
      *_format_training_memory(info),
      "",
      f"training FLOPs (batch {sh['batch_size']}, inputs {sh['inputs_length']}, targets {sh['targets_length']}):",
      f"  per step {human(fl['train_step'], 'FLOP')}, per token {human(fl['per_token'], 'FLOP')} "
      f"(attention {fl['attention_fraction']:.1%} of it; 6N estimate {human(fl['six_n_per_token'], 'FLOP')})",
  ]
  return "\n".join(lines)


def _format_adapter_comparison(info: Dict[str, Any]) -> List[str]:
  """Full fine-tuning of the base beside the adapter run, per device (formula)."""
  comparison = info.get("adapter_comparison")
  if not comparison:
    return []
  full, ours = comparison["full"], comparison["adapters"]
  lines = [
      f"full fine-tuning vs adapters (trainable {comparison['trainable_params']:,} "
      f"parameters, {comparison['trainable_params'] / max(info['params']['total'], 1):.3%}), "
      "per device, formula:",
      f"  {'':<22}{'full':>14}{'adapters':>14}",
  ]
  for name in (
      "params",
      "gradients",
      "optimizer_state",
      "accumulation",
      "update",
      "activations",
      "logits",
      "total",
  ):
    lines.append(
        f"  {name:<22}{human_bytes(full[name]):>14}{human_bytes(ours[name]):>14}"
    )
  return lines + [""]


def _format_training_memory(info: Dict[str, Any]) -> List[str]:
  """The train step per device: the formula's parts, XLA's analysis beside it, the verdict."""
  tm, sh = info["training_memory"], info["shapes"]
  lines = [
      f"train step per device (rows {sh['batch_size']} over all devices, "
      f"{sh['encoder_blocks']} x {sh['inputs_length']} + {sh['targets_length']} tokens, "
      f"{sh['num_microbatches']} micro-batch(es)), formula:",
  ]
  for name in (
      "params",
      "optimizer_state",
      "gradients",
      "accumulation",
      "activations",
      "logits",
      "update",
      "total",
  ):
    lines.append(f"  {name:<22}{human_bytes(tm[name]):>14}")
  for step, analysis in info.get("xla", {}).items():
    if not isinstance(analysis, dict):
      continue
    lines.append(
        f"XLA {step.replace('_', ' ')} per device ({info['xla']['devices']} CPU devices standing in): "
        + ", ".join(
            f"{k} {human_bytes(analysis[k])}"
            for k in ("arguments", "outputs", "temporaries", "aliased", "peak")
        )
    )
  if "xla" in info:
    lines.append(
        f"formula / XLA train step peak: {tm['total'] / info['xla']['train_step']['peak']:.2f}"
    )
  v = info.get("verdict")
  if v:
    lines.append(
        f"verdict: {'fits' if v['fits'] else 'does NOT fit'} in {human_bytes(v['device_memory'])} per device "
        f"(needs {human_bytes(v['needed'])}, {v['source']})"
    )
    for c in v["changes"]:
      lines.append(
          f"  try {c['change']}: ~{human_bytes(c['estimate'])}"
          f"{' fits' if c['fits'] else ''}"
      )
  return lines
