"""`tkx model-info`: parameter counts, bytes per device and training FLOPs of a model gin file.

Nothing is allocated (jax.eval_shape), so the largest sizes work on a laptop:

    tkx model-info --gin_file gin_configs/models/t5_1_1/xxl.gin --data 8 --model 2 --shard_params_over_data
"""

import json


def add_arguments(parser):
  parser.add_argument(
      "--data", type=int, default=1, help="size of the mesh's data axis"
  )
  parser.add_argument(
      "--model", type=int, default=1, help="size of the mesh's model axis"
  )
  parser.add_argument(
      "--shard_params_over_data",
      action="store_true",
      help="also shard parameters/optimizer state over 'data' (embed -> data, FSDP-style)",
  )
  parser.add_argument(
      "--optimizer",
      choices=("adafactor", "adamw"),
      default="adafactor",
      help="optimizer whose state is counted in the memory per device",
  )
  parser.add_argument(
      "--batch_size", type=int, default=1, help="examples per step (for FLOPs)"
  )
  parser.add_argument(
      "--inputs_length",
      type=int,
      default=1024,
      help="input tokens per example (for FLOPs)",
  )
  parser.add_argument(
      "--targets_length",
      type=int,
      default=128,
      help="target tokens per example (for FLOPs)",
  )
  parser.add_argument(
      "--json", action="store_true", help="print the report as JSON"
  )


def configure(args):
  """The model config from gin, before `tkx.cli` joins the processes."""
  from tkx import gin_utils, multihost  # noqa: F401  (multihost.* bindings)

  if not args.gin_files:
    raise ValueError(
        "give at least one --gin_file (e.g. --gin_file=gin_configs/models/t5_1_1/base.gin)"
    )
  args.model_config = gin_utils.load_config_from_gin(
      args.gin_files, args.gin_bindings
  )


def main(args):
  from tkx import multihost
  from tkx.models import model_info

  cfg = args.model_config
  info = model_info.report(
      cfg,
      data=args.data,
      model=args.model,
      shard_params_over_data=args.shard_params_over_data,
      optimizer=args.optimizer,
      batch_size=args.batch_size,
      inputs_length=args.inputs_length,
      targets_length=args.targets_length,
  )
  if multihost.is_primary_host():  # one report per job
    print(
        json.dumps(info, indent=1)
        if args.json
        else model_info.format_report(info)
    )
  return 0
