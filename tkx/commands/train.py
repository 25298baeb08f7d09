"""`tkx train`: fine-tune a T5 model on NI mixtures, configured by gin (as t5x's train.py).

    tkx train --gin_file=gin_configs/runs/finetune.gin \\
              --gin_file=gin_configs/models/t5_1_1/small.gin \\
              --gin.MIXTURE_OR_TASK_NAME="'ni_default_train_def_pos2'" \\
              --gin.MODEL_DIR="'/tmp/tk_small'"

Gin file paths may be relative to the working directory or to the tkx checkout.
A run resumes from MODEL_DIR's latest checkpoint when there is one.
"""

import logging
import os
import sys

REPO_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def add_arguments(parser):
  parser.add_argument(
      "--gin_file",
      dest="gin_files",
      action="append",
      default=[],
      help="gin file (repeatable), e.g. gin_configs/runs/finetune.gin",
  )
  parser.add_argument(
      "--gin_search_path",
      dest="gin_search_paths",
      action="append",
      default=[],
      help="extra directory for gin `include` and --gin_file lookups (repeatable)",
  )
  parser.add_argument(
      "--multihost",
      action="store_true",
      help="call tkx.multihost.initialize() even without TKX_* environment variables "
      "(it is always called; this only makes a missing cluster an error)",
  )
  parser.add_argument("--log_level", default="INFO")


def resolve_gin_file(path, search_paths=()):
  """`path` as given, else relative to a search path or the checkout."""
  for base in ("",) + tuple(search_paths) + (REPO_ROOT,):
    candidate = os.path.join(base, path) if base else path
    if os.path.exists(candidate):
      return candidate
  raise FileNotFoundError(
      f"gin file not found: {path} (looked in the working directory, "
      f"{', '.join(list(search_paths) + [REPO_ROOT])})"
  )


def parse_gin(gin_files, gin_bindings, search_paths=()):
  """Imports every module gin files may name, then parses files and bindings."""
  import gin
  # Register the configurables run/model/experiment gin files refer to.
  import tkx.data.tasks  # noqa: F401
  import tkx.data.vocab  # noqa: F401
  import tkx.models.models  # noqa: F401
  import tkx.multihost  # noqa: F401
  import tkx.optimizers  # noqa: F401
  import tkx.partitioning  # noqa: F401
  import tkx.trainer  # noqa: F401

  for path in tuple(search_paths) + (REPO_ROOT,):
    gin.add_config_file_search_path(path)
  files = [resolve_gin_file(f, search_paths) for f in gin_files]
  gin.parse_config_files_and_bindings(
      files, list(gin_bindings or ()), finalize_config=False
  )


def main(args):
  logging.basicConfig(
      level=getattr(logging, args.log_level.upper(), logging.INFO),
      format="%(asctime)s %(levelname)s %(name)s] %(message)s",
      stream=sys.stderr,
  )
  logging.getLogger("absl").setLevel(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if not args.gin_files:
    print(
        "tkx train: give at least one --gin_file (e.g. gin_configs/runs/finetune.gin and a model file)",
        file=sys.stderr,
    )
    return 2
  import tensorflow as tf

  tf.config.set_visible_devices(
      [], "GPU"
  )  # tf.data only: keep TensorFlow off the accelerators

  from tkx import multihost

  multihost.initialize()  # no-op for one process; before anything touches the devices
  if args.multihost:
    import jax

    if jax.process_count() == 1:
      print(
          "tkx train --multihost: only one process joined (set TKX_COORDINATOR_ADDRESS, "
          "TKX_NUM_PROCESSES, TKX_PROCESS_ID)",
          file=sys.stderr,
      )
      return 2
  parse_gin(args.gin_files, args.gin_bindings, args.gin_search_paths)
  from tkx import trainer

  try:
    trainer.train()
  except trainer.NonFiniteLossError as e:
    logging.error("%s", e)
    return 3
  return 0
