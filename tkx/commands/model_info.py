"""`tkx model-info`: parameter counts, memory per device (formula and XLA's own analysis), FLOPs.

The formula needs nothing allocated (jax.eval_shape), so the largest sizes work on a laptop:

    tkx model-info --gin_file gin_configs/models/t5_1_1/xxl.gin --data 8 --model 2 --shard_params_over_data

Given a training recipe (a gin file including runs/finetune.gin) the batch, packing, micro-batches,
optimizer and partitioning come from it (flags override). `--target` names a machine
(`gpu-8x80gb`, `tpu-v4-8`, `tpu-v4-32`: its device count and memory), `--xla` compiles the train
and decode steps ahead of time on that many forced CPU devices (`tkx.models.xla_memory`) and prints
XLA's bytes per device next to the formula, with a verdict against the device memory.
"""

import dataclasses
import json
import re

from tkx import errors

# name -> (devices JAX sees, bytes of memory per device)
TARGETS = {
    "gpu-8x80gb": (8, 80 * 2**30),  # 8 x A100/H100 80GB
    "tpu-v4-8": (4, 32 * 2**30),  # 4 chips, 32 GiB HBM each
    "tpu-v4-32": (16, 32 * 2**30),
}


def parse_bytes(text: str) -> int:
  """'80GiB', '80GB', '32 GiB', '1.5TiB', '1000000' -> bytes (GB = 1e9, GiB = 2**30)."""
  match = re.fullmatch(
      r"\s*([0-9.]+)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE
  )
  if not match:
    raise errors.ConfigError(
        f"--device_memory {text!r}: expected a size such as 80GiB, 80GB or 32GiB"
    )
  number, unit = float(match.group(1)), (match.group(2) or "B").upper()
  powers = {"K": 1, "M": 2, "G": 3, "T": 4}
  if unit == "B":
    return int(number)
  base = 1024 if "I" in unit else 1000
  return int(number * base ** powers[unit[0]])


def add_arguments(parser):
  parser.add_argument(
      "--data", type=int, default=None, help="size of the mesh's data axis"
  )
  parser.add_argument(
      "--model",
      type=int,
      default=None,
      help="size of the mesh's model axis (default: the recipe's num_partitions, else 1)",
  )
  parser.add_argument(
      "--shard_params_over_data",
      action="store_true",
      default=None,
      help="also shard parameters/optimizer state over 'data' (embed -> data, FSDP-style)",
  )
  parser.add_argument(
      "--optimizer",
      choices=("adafactor", "adamw"),
      default=None,
      help="optimizer whose state is counted (default: the recipe's, else adafactor)",
  )
  parser.add_argument(
      "--batch_size",
      type=int,
      default=None,
      help="rows per step over all devices (default: the recipe's, else one per data shard "
      "per micro-batch)",
  )
  parser.add_argument(
      "--inputs_length",
      type=int,
      default=None,
      help="input tokens per example / encoder block (default: the recipe's, else 1024)",
  )
  parser.add_argument(
      "--targets_length",
      type=int,
      default=None,
      help="target tokens per example (default: the recipe's, else 128)",
  )
  parser.add_argument(
      "--num_microbatches",
      type=int,
      default=None,
      help="gradient accumulation steps (default: the recipe's, else 1)",
  )
  parser.add_argument(
      "--target",
      choices=sorted(TARGETS),
      default=None,
      help="a machine: its device count (the mesh: data = devices / model) and memory",
  )
  parser.add_argument(
      "--device_memory",
      default=None,
      help="memory per device to judge against, e.g. 80GiB (default: --target's, else "
      "the local accelerator's own)",
  )
  parser.add_argument(
      "--xla",
      action="store_true",
      help="also compile the train and decode steps ahead of time on forced CPU devices "
      "and print XLA's memory analysis (minutes for XL/XXL)",
  )
  parser.add_argument(
      "--decode_batch",
      type=int,
      default=None,
      help="decode step batch for --xla (default: one row per data-parallel device)",
  )
  parser.add_argument(
      "--json", action="store_true", help="print the report as JSON"
  )


def _auto_layout(config, lengths, data, microbatches, settings):
  """(encoder blocks, targets length, rows) 'auto' would choose, sampled from the embedded NI tasks.

  `tkx train` chooses from the run's own data at start-up; the embedded sample
  stands in here (`tkx plan-packing --ni_dir` shows a checkout's choice).
  """
  from tkx import gin_utils
  from tkx.data import packing_plan, vocab

  lengths = {
      "inputs": lengths.get("inputs", 1024),
      "targets": lengths.get("targets", 128),
  }
  inputs, targets = packing_plan.sample_lengths(
      "ni_default_train_def_pos2",
      ni_dir=None,
      # Explicit arguments: the recipe's own (gs://) vocabulary binding does not apply.
      vocabulary=vocab.get_vocabulary(vocab.EMBEDDED_SPM_PATH, extra_ids=0),
      feature_lengths=lengths,
      size=1000,
  )
  best = packing_plan.plan(
      inputs,
      targets,
      feature_lengths=lengths,
      examples_per_step=int(gin_utils.query("%BATCH_SIZE", 16)),
      row_multiple=data * microbatches,
      config=config,
      encoder_blocks=settings[0],
      targets_length=settings[1],
      rows_per_step=settings[2],
  )[0]
  return best.layout.encoder_blocks, best.layout.targets, best.rows_per_step


def _recipe(args, config):
  """The run's shapes and layout: flags, else the recipe's gin bindings, else defaults."""
  from tkx import gin_utils
  from tkx.models import xla_memory

  def pick(flag, name, default):
    return flag if flag is not None else gin_utils.query(name, default)

  pack = bool(gin_utils.query("%PACK", False))
  lengths = gin_utils.query("%TASK_FEATURE_LENGTHS", None) or {}
  blocks = gin_utils.query("%PACKED_ENCODER_BLOCKS", 1) if pack else 1
  rows = pick(
      args.batch_size, "%PACKED_BATCH_SIZE" if pack else "%BATCH_SIZE", None
  )
  targets = args.targets_length or (
      gin_utils.query("%PACKED_TARGETS_LENGTH", None) if pack else None
  )
  optimizer = args.optimizer
  if optimizer is None:
    fn = gin_utils.query("trainer.train.optimizer_fn", None)
    optimizer = (
        "adamw" if fn is not None and "adamw" in str(fn) else "adafactor"
    )
  # A flag the user gave is used as given (0 is then refused by the mesh check).
  model = (
      args.model
      if args.model is not None
      else gin_utils.query("partitioning.Partitioner.num_partitions", 1) or 1
  )
  devices = TARGETS[args.target][0] if args.target else None
  data = (
      args.data
      if args.data is not None
      else (devices // model if devices and model > 0 else 1)
  )
  microbatches = int(pick(args.num_microbatches, "%NUM_MICROBATCHES", 1))
  for flag, value in (
      ("--data", data),
      ("--model", model),
      ("--num_microbatches", microbatches),
  ):
    if int(value) < 1:
      raise errors.ConfigError(f"{flag} must be >= 1, got {value}")
  if "auto" in (blocks, targets, rows):
    settings = (blocks, targets or "auto", rows or "auto")
    auto = _auto_layout(config, lengths, int(data), microbatches, settings)
    blocks, targets, rows = (
        a if v == "auto" else v for v, a in zip(settings, auto)
    )
  if rows is None:  # a model gin file alone: one row per data-parallel device
    rows = data * microbatches
  trainable, lora_fields = _adapter_settings(config)
  return xla_memory.Recipe(
      data=int(data),
      model=int(model),
      shard_params_over_data=bool(
          pick(
              args.shard_params_over_data,
              "partitioning.Partitioner.shard_params_over_data",
              False,
          )
      ),
      optimizer=optimizer,
      batch_rows=int(rows),
      inputs_length=int(args.inputs_length or lengths.get("inputs", 1024)),
      targets_length=int(targets or lengths.get("targets", 128)),
      encoder_blocks=int(blocks),
      packed=pack,
      num_microbatches=microbatches,
      decode_batch=int(args.decode_batch or data),
      max_decode_length=int(lengths.get("targets", 128)),
      trainable=trainable,
      lora=lora_fields,
  )


def _adapter_settings(config):
  """The recipe's TRAINABLE ('all' / 'adapters') and, with LoRA, gin's LoraConfig fields."""
  from tkx import gin_utils, train_configs

  trainable = train_configs.Trainable.parse(
      gin_utils.query("%TRAINABLE", "all")
  ).value
  if config.dense_layer != "lora":
    return trainable, None
  from tkx.models import lora

  return trainable, dataclasses.asdict(lora.LoraConfig())


def _device_memory(args):
  if args.device_memory:
    return parse_bytes(args.device_memory)
  if args.target:
    return TARGETS[args.target][1]
  from tkx.models import model_info

  return model_info.local_device_memory()


def configure(args):
  """The model config and the run's shapes from gin, before `tkx.cli` joins the processes."""
  import importlib

  from tkx import gin_utils, multihost  # noqa: F401  (multihost.* bindings)
  from tkx.commands import train as train_command

  if not args.gin_files:
    raise errors.ConfigError(
        "give at least one --gin_file (e.g. --gin_file=gin_configs/models/t5_1_1/base.gin)"
    )
  for (
      name
  ) in train_command.CONFIGURABLE_MODULES:  # a training recipe names them
    importlib.import_module(name)
  args.model_config = gin_utils.load_config_from_gin(
      args.gin_files, args.gin_bindings
  )
  args.recipe = _recipe(args, args.model_config)
  if (
      args.device_memory
  ):  # a bad --device_memory before any compile (no device touched)
    parse_bytes(args.device_memory)


def main(args):
  from tkx import multihost
  from tkx.models import model_info, xla_memory

  cfg, recipe = args.model_config, args.recipe
  if args.target and recipe.devices != TARGETS[args.target][0]:
    raise errors.ConfigError(
        f"--target {args.target} has {TARGETS[args.target][0]} devices; the mesh "
        f"data={recipe.data} x model={recipe.model} has {recipe.devices}"
    )
  if recipe.batch_rows % (recipe.data * recipe.num_microbatches):
    raise errors.ConfigError(
        f"batch of {recipe.batch_rows} rows (--batch_size or the recipe's) is not divisible by "
        f"data={recipe.data} x num_microbatches={recipe.num_microbatches}; tkx train refuses it too"
    )
  info = model_info.report(
      cfg,
      data=recipe.data,
      model=recipe.model,
      shard_params_over_data=recipe.shard_params_over_data,
      optimizer=recipe.optimizer,
      batch_size=recipe.batch_rows,
      inputs_length=recipe.inputs_length,
      targets_length=recipe.targets_length,
      encoder_blocks=recipe.encoder_blocks,
      num_microbatches=recipe.num_microbatches,
      trainable=recipe.trainable,
  )
  info["recipe"] = dataclasses.asdict(recipe)
  if not multihost.is_primary_host():  # one report per job
    return 0
  if args.xla:
    info["xla"] = xla_memory.run_on_cpu_devices(cfg, recipe)
  device_memory = _device_memory(args)
  if device_memory:
    info["verdict"] = model_info.verdict(cfg, info, device_memory)
  print(
      json.dumps(info, indent=1, default=str)
      if args.json
      else model_info.format_report(info)
  )
  return 0
